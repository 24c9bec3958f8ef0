"""`vigil doctor`: what this machine offers the recorder, and whether the config can record on it.

It lists the cameras each backend finds (with their modes), opens the configured camera the
way the daemon would and reads one frame or packet, names the encoder that would be used,
probes the storage roots and the GPIO pin factory, and ends with one verdict line per item:
"ITEM: ok (...)" or "ITEM: problem: ...". The exit status is non-zero when the configured
camera cannot be used or no recording root is usable (the recorder could not record); GPIO
problems are reported but do not fail it, as the daemon records without its panel.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config import VigilConfig
from controller.daemon import hardware_from_config
from hw.camera import Camera, EncodedPacket
from hw.errors import CameraError, VigilError
from hw.factory import DEFAULT_MAKERS, PROBE_ORDER, CameraMaker, Hardware
from hw.gpio import GPIOUnavailable, make_pin_factory
from hw.pipeline import close_with_timeout
from hw.storage import probe_root

EXIT_OK = 0
EXIT_CANNOT_RECORD = 1
OPEN_TIMEOUT_SECONDS = 20.0  # a Pi camera's first open reads its tuning and configures the ISP
CLOSE_TIMEOUT_SECONDS = 10.0
FIRST_ITEM_MIN_TIMEOUT_SECONDS = 5.0
GIB = 2**30

PinFactoryLoader = Callable[[str | None], Any]


@dataclass(frozen=True)
class Verdict:
    """The doctor's word on one item: ok (with what was found) or the problem."""

    item: str
    problem: str | None = None
    detail: str = ""

    @property
    def is_ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        if self.problem is None:
            return f"{self.item}: ok" + (f" ({self.detail})" if self.detail else "")
        return f"{self.item}: problem: {self.problem}"


@dataclass
class DoctorReport:
    """Everything the doctor found: the listing lines, the verdicts and the exit status."""

    lines: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    can_record: bool = True

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.can_record else EXIT_CANNOT_RECORD

    def text(self) -> str:
        verdicts = ["verdicts:", *(f"  {v.line()}" for v in self.verdicts)]
        return "\n".join([*self.lines, *verdicts]) + "\n"


def examine(
    config: VigilConfig,
    *,
    source: str = "",
    makers: Mapping[str, CameraMaker] | None = None,
    load_pin_factory: PinFactoryLoader = make_pin_factory,
    encoder_probe: Callable[[], str] | None = None,
) -> DoctorReport:
    """Look at the cameras, the configured camera, storage and GPIO; nothing is left running.

    `encoder_probe` replaces the hardware H.264 encoder's probe (tests).
    """
    makers = dict(DEFAULT_MAKERS) if makers is None else makers
    report = DoctorReport()
    if source:
        report.lines.append(f"config: {source}")
    _list_cameras(report, makers)
    hardware = hardware_from_config(config, makers=makers)
    if encoder_probe is not None:
        hardware.encoder_probe = encoder_probe
    _check_camera(report, config, hardware)
    _check_storage(report, hardware)
    _check_gpio(report, config, load_pin_factory)
    return report


def _list_cameras(report: DoctorReport, makers: Mapping[str, CameraMaker]) -> None:
    report.lines.append("cameras found:")
    for backend in PROBE_ORDER:
        probe = getattr(makers.get(backend), "probe", None)
        if probe is None:
            report.lines.append(f"  {backend}: no backend for it in this build")
            continue
        result = probe(detail=True)
        report.lines.append(f"  {backend}: {result.summary}")
        if result.failure:
            # Installed but broken is worth a verdict of its own: with `auto` the recorder
            # falls back to another camera, which an operator would not otherwise notice.
            report.verdicts.append(Verdict(backend, result.failure))
        for camera in result.cameras:
            report.lines.append(f"    {camera.describe()}")
        for other in result.skipped:
            report.lines.append(f"    {other.address}: {other.reason}")
    report.lines.append("  synthetic: always available (a test pattern carrying frame numbers)")


def _check_camera(report: DoctorReport, config: VigilConfig, hardware: Hardware) -> None:
    cam = config.camera
    asked = f"{cam.width}x{cam.height}@{cam.fps:g}"
    how = (f"auto -> {hardware.backend} ({hardware.backend_reason})" if cam.backend == "auto"
           else hardware.backend)
    report.lines.append(f"configured camera: {asked}, backend {how}")
    camera: Camera | None = None
    try:
        camera = hardware.make_camera()
        _open_bounded(camera)
        item = camera.read(max(FIRST_ITEM_MIN_TIMEOUT_SECONDS, 2 * cam.read_timeout_seconds))
        got = camera.mode
        if (got.width, got.height) != (cam.width, cam.height) or abs(got.fps - cam.fps) > 0.01:
            raise CameraError(f"it delivers {got.width}x{got.height}@{got.fps:g}, configured {asked}")
        encoder = _encoder_line(camera, config, hardware)
        report.lines.append(f"  encoder: {encoder}")
        report.lines.append(f"  adaptive quality: {_adaptive_line(camera, config, hardware)}")
        kind = "H.264 packet" if isinstance(item, EncodedPacket) else "frame"
        detail = f"{hardware.backend} delivered a {kind} at {asked}"
        if hardware.backend == "synthetic" and cam.backend == "auto":
            detail += "; no Pi or V4L2 camera was found, so this is the test pattern"
        report.verdicts.append(Verdict("camera", None, detail))
    except VigilError as err:
        report.lines.append("  encoder: unknown (the camera did not work)")
        report.verdicts.append(Verdict("camera", _camera_problem(hardware.backend, err)))
        report.can_record = False
    finally:
        if camera is not None:
            close_with_timeout(camera.close, CLOSE_TIMEOUT_SECONDS, name="vigil-doctor-close")


def _open_bounded(camera: Camera) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            camera.open()
        except BaseException as err:
            errors.append(err)

    opener = threading.Thread(target=run, name="vigil-doctor-open", daemon=True)
    opener.start()
    opener.join(OPEN_TIMEOUT_SECONDS)
    if opener.is_alive():
        raise CameraError(f"opening the camera did not return within {OPEN_TIMEOUT_SECONDS:g}s")
    if errors:
        err = errors[0]
        if isinstance(err, VigilError):
            raise err
        raise CameraError(f"opening the camera raised {err!r}") from err


def _camera_problem(backend: str, err: BaseException) -> str:
    text = f"{backend}: {err}"
    if "busy" in text.lower():
        text += " (if `vigil run` is recording from it, stop it before running doctor)"
    return text


def _adaptive_line(camera: Camera, config: VigilConfig, hardware: Hardware) -> str:
    """What the quality ladder can do with this camera (README "Adaptive quality")."""
    packets = camera.mode.output == "packets"
    if not config.recording.adaptive.enabled:
        return "off (recording.adaptive.enabled is false)"
    ladder = hardware.quality_ladder(camera.mode, camera)
    if packets and (len(ladder) < 2 or getattr(camera, "apply_quality", None) is None):
        text = (f"cannot adapt: pass-through ({hardware.backend} hands over its own H.264; vigil "
                "only muxes it, so under load it drops rather than lowers quality)")
        knobs = getattr(camera, "adaptive_knobs", None)
        offered = knobs() if knobs is not None else []
        if offered:
            floors = config.recording.adaptive
            text += (f"; the camera offers {' and '.join(offered)}, but nothing to step down to "
                     f"within recording.adaptive's floors (bitrate_floor_fraction "
                     f"{floors.bitrate_floor_fraction:g}, fps_floor {floors.fps_floor:g}: no "
                     f"frame rate it lists between {camera.mode.fps:g} fps and that)")
        return text
    if len(ladder) < 2:
        return "nothing to give up: every floor is at the configured quality"
    if packets:
        steps = "; ".join(step.difference(above) for above, step in itertools.pairwise(ladder))
        method = str(getattr(camera, "quality_method", ""))
        count = f"{len(ladder) - 1} step{'s' if len(ladder) > 2 else ''}"
        return (f"on, {count} of {hardware.backend}'s own knobs ({steps})"
                + (f": {method}" if method else ""))
    return f"on, {len(ladder) - 1} steps down to {ladder[-1].describe()}"


def _encoder_line(camera: Camera, config: VigilConfig, hardware: Hardware) -> str:
    described = str(getattr(camera, "encoder_description", "") or "")
    if camera.mode.output == "packets":
        return described or "pass-through: the camera's own H.264"
    rec = config.recording
    # Opened for real, as the recorder would: a hardware encoder that answers its probe but
    # will not open falls back to libx264 here too, and the line says why.
    hardware.make_encoder(camera.mode)
    choice = hardware.encoder_choice
    text = (choice.describe() if choice.is_hardware
            else f"libx264 preset {rec.encoder_preset}, crf {rec.crf}; software: {choice.reason}")
    return f"{text} ({described})" if described else text


def _check_storage(report: DoctorReport, hardware: Hardware) -> None:
    rec = hardware.recording
    report.lines.append("storage:")
    usable = False
    for role, root in [("primary", rec.root), *(("fallback", r) for r in rec.fallback_roots)]:
        status = probe_root(Path(root))
        item = f"storage {root}"
        if status.is_usable:
            usable = True
            detail = f"{role}, writable, {status.free_bytes / GIB:.1f} GiB free"
            report.verdicts.append(Verdict(item, None, detail))
        else:
            report.verdicts.append(Verdict(item, f"{role}: {status.reason}"))
        report.lines.append(f"  {root} ({role}): {'writable' if status.is_usable else status.reason}"
                            + (f", {status.free_bytes / GIB:.1f} GiB free" if status.is_usable else ""))
    if not usable:
        report.can_record = False


def _check_gpio(report: DoctorReport, config: VigilConfig, load_pin_factory: PinFactoryLoader) -> None:
    gpio = config.gpio
    pins = [f"{name} {pin}" for name, pin in (("button", gpio.reset_button), ("LED", gpio.status_led)) if pin]
    report.lines.append(f"gpio: {', '.join(pins) or 'no pins configured'}"
                        + ("" if gpio.enabled else " (disabled)"))
    if not gpio.enabled:
        report.verdicts.append(Verdict("gpio", None, "disabled in the config"))
        return
    try:
        factory = load_pin_factory(gpio.pin_factory)
    except GPIOUnavailable as err:
        if pins:
            report.verdicts.append(Verdict("gpio", f"{err}; the recorder runs without its button and LED"))
        else:
            report.verdicts.append(Verdict("gpio", None, f"no pins configured; GPIO unavailable here: {err}"))
        return
    name = type(factory).__name__
    close = getattr(factory, "close", None)
    if close is not None:
        close()
    report.verdicts.append(Verdict("gpio", None, f"pin factory {name}"
                                   + (f" for {', '.join(pins)}" if pins else "; no pins configured")))

