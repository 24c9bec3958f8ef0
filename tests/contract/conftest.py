"""Rigs for the camera contract: every backend, with a way to stall it, lose it and get it back.

Real where the machine allows (synthetic, file from FFmpeg lavfi sources), over test doubles
where it cannot (picamera2-real: the genuine picamera2 over the fake libcamera binding in
tests/fakes/libcamera, as on a Pi 5; picamera2-pi4: the hand-written tests/fakes/picamera2 as
a Pi 4, whose H.264 encoder is the V4L2 M2M device the genuine library cannot reach here; V4L2
through the fake kernel in tests/fakes/v4l2_device.py in each input format).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from hw.camera import Camera
from hw.factory import DEFAULT_MAKERS, CameraMaker, Hardware
from hw.synthetic import FaultPlan
from hw.v4l2.probe import V4L2Maker
from tests.fakes.conftest import fake_picamera2  # noqa: F401 - the fixture, for the Pi rigs
from tests.fakes.realpicam import RealPicamera2, real_picamera2  # noqa: F401 - ditto
from tests.fakes.v4l2_device import FakeV4L2, FakeVideoDevice, draw_yuv420
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 160, 120, 30.0
READ_TIMEOUT_SECONDS = 0.5
FILE_FRAMES = 90
STALL_GAP_SECONDS = 600.0  # the stall source's second frame is due this long after its first
RESTORE_DEADLINE_SECONDS = 10.0


@dataclass
class Rig:
    """One backend made ready for the contract suite."""

    backend: str
    makers: dict[str, CameraMaker]
    stall: Callable[[Camera], None]
    lose: Callable[[], None]
    restore: Callable[[], None]
    spec: dict[str, Any] = field(default_factory=dict)
    stall_spec: dict[str, Any] = field(default_factory=dict)  # the file backend stalls by source
    lose_spec: dict[str, Any] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)
    handle: object = None  # the fake device or camera, for backend-specific tests
    # Frame numbers the camera itself threw away (a sensor with no free buffer, as when the
    # machine is busy): a real camera does that, so they are not the recorder's loss.
    dropped_by_camera: Callable[[], set[int]] = field(default=lambda: set())

    def hardware(self, root: Path, *, scenario: str = "record", segment_seconds: float = 1.0,
                 fragment_seconds: float = 0.5, **overrides: Any) -> Hardware:
        extra = {"stall": self.stall_spec, "lose": self.lose_spec}.get(scenario, {})
        camera = camera_spec(backend=self.backend, width=WIDTH, height=HEIGHT, fps=FPS,
                            read_timeout_seconds=READ_TIMEOUT_SECONDS, frozen_seconds=0.0,
                            **{**self.spec, **extra, **overrides})
        recording = recording_spec(root=root, segment_seconds=segment_seconds,
                                  fragment_seconds=fragment_seconds)
        return Hardware(camera, recording, faults=self.faults, makers=self.makers)


def write_numbered_mp4(path: Path, count: int) -> Path:
    """An H.264 MP4 of frames numbered 0..count-1 at FPS."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(FPS)))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, int(FPS))
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for n in range(count):
            frame = av.VideoFrame.from_ndarray(draw_yuv420(WIDTH, HEIGHT, n), format="yuv420p")
            frame.pts = n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _synthetic_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    faults = FaultPlan()

    def restore() -> None:
        assert _wait_until(lambda: not faults.is_disconnected(time.monotonic()), RESTORE_DEADLINE_SECONDS)

    return Rig("synthetic", dict(DEFAULT_MAKERS), stall=lambda camera: faults.inject_stall(30.0),
               lose=lambda: faults.inject_disconnect(1.0), restore=restore, faults=faults)


# An FFmpeg lavfi source that draws vigil's frame-number code (hw/framecode.py) itself: the
# top 16 rows carry bit 31-i of the frame index N in cell i = floor(X*32/W), over a moving pattern.
FRAMECODE_GEQ = "if(lt(Y,16),255*mod(floor(N/pow(2,31-floor(X*32/W))),2),30+mod(X+Y+4*N,64)*3)"


def lavfi_numbered(*, gap_after_first: bool = False) -> str:
    """`lavfi:` spec of numbered frames; with a gap, the second frame is due STALL_GAP_SECONDS later."""
    pause = f",setpts='if(eq(N,0),0,PTS+{STALL_GAP_SECONDS:g}/TB)'" if gap_after_first else ""
    return (f"lavfi:nullsrc=size={WIDTH}x{HEIGHT}:rate={FPS:g},format=gray,geq=lum='{FRAMECODE_GEQ}'"
            f"{pause},format=yuv420p")


def _file_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    # Records and stalls from lavfi sources; a lavfi source cannot vanish, so losing the camera
    # uses a real MP4 file that is renamed away and back.
    vanishing = write_numbered_mp4(tmp_path / "numbered.mp4", FILE_FRAMES)
    away = tmp_path / "unplugged.mp4"
    return Rig("file", dict(DEFAULT_MAKERS), stall=lambda camera: None,
               lose=lambda: vanishing.rename(away), restore=lambda: away.rename(vanishing),
               spec={"source": lavfi_numbered()},
               stall_spec={"source": lavfi_numbered(gap_after_first=True)},
               lose_spec={"source": str(vanishing), "pace": False})


def _picamera2_rig(platform: str) -> Callable[[pytest.FixtureRequest, Path], Rig]:
    def make(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
        request.getfixturevalue("fake_picamera2")
        from picamera2 import _fake

        camera = _fake.install_camera(platform=platform, dequeue_timeout_s=0.2)
        def dropped() -> set[int]:
            numbers: set[int] = set()
            for _, event in camera.events("frames_dropped"):
                fields = dict(part.split("=", 1) for part in event.split()[1:])
                first, count = int(fields["first"]), int(fields["count"])
                numbers.update(range(first, first + count))
            return numbers

        return Rig("picamera2", dict(DEFAULT_MAKERS), stall=lambda cam: camera.frontend_timeout(),
                   lose=camera.vanish, restore=camera.reappear, handle=camera,
                   dropped_by_camera=dropped)

    return make


def _real_picamera2_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    """vigil's picamera2 backend on the genuine picamera2 (as on a Pi 5) over the fake libcamera."""
    real: RealPicamera2 = request.getfixturevalue("real_picamera2")
    camera = real.install_camera("imx708", dequeue_timeout_s=0.2)
    return Rig("picamera2", dict(DEFAULT_MAKERS), stall=lambda cam: camera.frontend_timeout(),
               lose=camera.vanish, restore=camera.reappear, handle=camera)


RigMaker = Callable[[pytest.FixtureRequest, Path], Rig]


def _v4l2_rig(input_format: str, *, repeat_headers: bool = True) -> RigMaker:
    def make(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
        kernel = FakeV4L2()
        device: FakeVideoDevice = kernel.add_device(
            formats={input_format: [(320, 240), (WIDTH, HEIGHT)]}, rates=(30.0, 15.0),
            repeat_headers=repeat_headers, keep_payloads=True, by_id="usb-Fake_Camera_0001-video-index0")
        return Rig("v4l2", {**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel)},
                   stall=lambda cam: device.stall(), lose=device.unplug, restore=device.replug,
                   spec={"device": "/dev/v4l/by-id/usb-Fake_Camera_0001-video-index0",
                         "input_format": input_format}, handle=device)

    return make


RIGS: dict[str, Callable[[pytest.FixtureRequest, Path], Rig]] = {
    "synthetic": _synthetic_rig,
    "file-lavfi": _file_rig,
    "picamera2-pi4": _picamera2_rig("pi4"),
    "picamera2-real": _real_picamera2_rig,
    "v4l2-h264": _v4l2_rig("h264"),
    "v4l2-h264-headers-once": _v4l2_rig("h264", repeat_headers=False),
    "v4l2-mjpeg": _v4l2_rig("mjpeg"),
    "v4l2-yuyv422": _v4l2_rig("yuyv422"),
}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """Each backend in turn; one that cannot load on this machine skips, saying why."""
    try:
        made = RIGS[request.param](request, tmp_path)
    except ImportError as err:  # pragma: no cover - every rig loads here, the fakes see to it
        pytest.skip(f"backend {request.param} cannot load on this machine: {err}")
    yield made

