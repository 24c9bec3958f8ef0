"""What each V4L2 node is, as auto-detection, `vigil doctor` and the factory (V4L2Maker) ask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hw.errors import CameraError
from hw.probe import BackendProbe, FoundCamera, NotACamera
from hw.v4l2.camera import V4L2Camera, choose_input_format
from hw.v4l2.device import LINUX_IO, DeviceIO, FormatDesc, V4L2Device

if TYPE_CHECKING:
    from hw.factory import CameraSpec
    from hw.synthetic import FaultPlan


def describe_device(path: str, *, io: DeviceIO = LINUX_IO, detail: bool = False) -> FoundCamera | NotACamera:
    """What is at `path`: a camera vigil can record (with its modes when `detail`), or why not."""
    dev = V4L2Device(path, io=io)
    try:
        dev.open()
        caps = dev.capabilities()
        if not caps.is_capture:
            return NotACamera(path, f"{caps.card} ({caps.driver}) is not a capture device")
        usable = [f for f in dev.formats() if f.input_format]
        if not usable:
            return NotACamera(path, f"{caps.card} ({caps.driver}) offers no h264, mjpeg or yuyv422")
        modes = tuple(_describe_modes(dev, f) if detail else str(f.input_format) for f in usable)
        best = choose_input_format("auto", usable, path)
        encoder = ("pass-through (the camera's own H.264)" if best.input_format == "h264"
                   else f"libx264 from {best.input_format}")
        return FoundCamera("v4l2", path, f"{caps.card} ({caps.driver}, {caps.bus_info})", modes, encoder)
    except CameraError as err:
        return NotACamera(path, str(err))
    finally:
        dev.close()


def _describe_modes(dev: V4L2Device, desc: FormatDesc) -> str:
    sizes = dev.frame_sizes(desc.fourcc)
    parts = []
    for width, height in sizes.discrete:
        rates = dev.frame_rates(desc.fourcc, width, height)
        parts.append(f"{width}x{height}" + (f"@{rates[0]:g}" if rates else ""))
    if sizes.stepwise is not None:
        parts.append(sizes.describe())
    return f"{desc.input_format} {', '.join(parts) or '(no sizes listed)'}"


@dataclass(frozen=True)
class V4L2Maker:
    """Makes V4L2 cameras for the factory and probes the machine's /dev/video* nodes."""

    io: DeviceIO = LINUX_IO

    def __call__(self, spec: CameraSpec, faults: FaultPlan) -> V4L2Camera:
        return V4L2Camera(spec.mode, spec.device, input_format=spec.input_format, io=self.io)

    def probe(self, *, detail: bool = False) -> BackendProbe:
        paths = self.io.list_devices()
        if not paths:
            return BackendProbe("v4l2", (), "no /dev/video* device")
        found: list[FoundCamera] = []
        skipped: list[NotACamera] = []
        for path in paths:
            result = describe_device(path, io=self.io, detail=detail)
            if isinstance(result, FoundCamera):
                found.append(result)
            else:
                skipped.append(result)
        if found:
            summary = "found " + "; ".join(f"{c.address} {c.name}" for c in found)
        else:
            summary = (f"{', '.join(paths)}: no capture device offering h264, mjpeg or yuyv422")
        return BackendProbe("v4l2", tuple(found), summary, tuple(skipped))
