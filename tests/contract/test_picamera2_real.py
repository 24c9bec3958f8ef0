"""vigil's picamera2 backend on the genuine picamera2 (tests/fakes/realpicam.py), as on a Pi 5.

Only libcamera's binding (tests/fakes/libcamera), kms++'s and the dma-heap driver are fake;
picamera2 0.3.31 itself configures, allocates, runs its event loop, encodes with its
LibavH264Encoder through the real PyAV, and fails as it fails. Faults come from the fake
libcamera: requests that stop completing ("Camera frontend has timed out!"), a stop() that
never returns, a camera unplugged mid-stream, a size no sensor mode gives.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from controller.core.controller import EXIT_HUNG_HARDWARE, Controller
from hw import framecode
from hw.camera import CameraMode
from hw.factory import Hardware
from hw.picam import PicameraCamera, SensorMode, SensorModeUnavailable
from hw.snapshot import encode_jpeg
from hw.v4l2.h264 import nal_types
from tests.e2e.conftest import FAST_POLICY, RunningController
from tests.fakes.realpicam import RealPicamera2
from tests.helpers import gaps, recorded_numbers
from tests.specs import camera_spec, recording_spec

WAIT_SECONDS = 15.0
IMX708_MODES = "1536x864@120.13, 2304x1296@56.03, 4608x2592@14.35"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[RunningController]]:
    started: list[RunningController] = []
    yield started
    for r in started:
        if r.thread.is_alive():
            r.stop()


def start_controller(started: list[RunningController], root: Path, *, width: int = 160,
                     height: int = 120, fps: float = 30.0, max_abandoned: int = 3) -> Controller:
    hardware = Hardware(camera_spec(backend="picamera2", width=width, height=height, fps=fps,
                                    read_timeout_seconds=0.5, frozen_seconds=0),
                        recording_spec(root=root, segment_seconds=1, fragment_seconds=0.5))
    r = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True,
                                     max_abandoned=max_abandoned))
    started.append(r)
    r.thread.start()
    return r.controller


def genuine_sensor_modes(real: RealPicamera2) -> str:
    """The sensor modes as the genuine picamera2 reports them, in vigil's notation."""
    picam2 = real.module.Picamera2(0)
    try:
        return ", ".join(str(SensorMode.from_picamera2(m)) for m in picam2.sensor_modes)
    finally:
        picam2.close()


def test_it_is_the_genuine_library_as_on_a_pi5(real_picamera2: RealPicamera2) -> None:
    real = real_picamera2
    real.install_camera("imx708")
    import picamera2
    from picamera2.allocators import DmaAllocator
    from picamera2.encoders import H264Encoder, LibavH264Encoder

    assert real.version == "0.3.31"  # the Bookworm line, tests/requirements-picamera2.txt
    assert Path(picamera2.__file__).is_relative_to(Path(__file__).parents[2] / ".venv")
    assert H264Encoder is LibavH264Encoder
    camera = PicameraCamera(CameraMode(160, 120, 30.0), fragment_seconds=0.5, capture_timeout=0.5)
    camera.open()
    try:
        assert camera.encoder_kind == "libav" and camera.platform == "PISP"
        assert camera.read(WAIT_SECONDS).is_keyframe
        assert isinstance(camera._picam2.allocator, DmaAllocator)
        # Every buffer from the (fake) dma heap: sensor_modes configured each of the 3 modes
        # once (preview configuration: main and raw, 4 buffers each), then vigil's video
        # configuration: main, lores and raw, 6 buffers each.
        assert real.dma_heap.allocations == 3 * 2 * 4 + 3 * 6  # type: ignore[attr-defined]
        assert str(camera.sensor_mode) == "1536x864@120.13"
    finally:
        camera.close()


@pytest.mark.parametrize(("fragment_seconds", "iperiod"), [(0.5, 15), (0.2, 6)])
def test_libav_keyframes_come_every_fragment_with_their_headers(
        real_picamera2: RealPicamera2, fragment_seconds: float, iperiod: int) -> None:
    real_picamera2.install_camera("imx708")
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{level} {message}")
    camera = PicameraCamera(CameraMode(160, 120, 30.0), fragment_seconds=fragment_seconds,
                            capture_timeout=0.5)
    camera.open()
    try:
        packets = [camera.read(WAIT_SECONDS) for _ in range(2 * iperiod + 1)]
    finally:
        camera.close()
        logger.remove(sink)
    assert any(line.startswith("WARNING") and "encoder=libav platform=PISP" in line for line in lines)
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, iperiod, 2 * iperiod]
    # repeat=True: every keyframe carries SPS and PPS in-band, as the segment writer needs.
    assert all({7, 8, 5} <= set(nal_types(p.data)) for p in packets if p.is_keyframe)
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(packets))


def test_lores_frames_are_the_cameras_own_and_feed_snapshots(real_picamera2: RealPicamera2,
                                                             tmp_path: Path) -> None:
    handle = real_picamera2.install_camera("imx708")
    hardware = Hardware(camera_spec(backend="picamera2", width=640, height=480, fps=30),
                        recording_spec(root=tmp_path, segment_seconds=1, fragment_seconds=0.5))
    camera = hardware.make_camera()
    camera.open()
    errors: list[tuple[str, str]] = []
    pipeline = hardware.make_pipeline(camera, tmp_path, lambda c, r: errors.append((c, r)))
    pipeline.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while pipeline.latest_frame is None and time.monotonic() < deadline:
            time.sleep(0.05)
        frame = pipeline.latest_frame
        assert frame is not None and frame.data is not None
        assert frame.data.shape == (240 * 3 // 2, 320)  # lores: 320 wide, the main stream's aspect
        # The picture is the sensor's: its top rows carry a frame number the sensor produced.
        assert framecode.read(frame.data[:240]) < handle.frames_produced
        assert encode_jpeg(frame.data).startswith(b"\xff\xd8")
    finally:
        pipeline.stop()
    assert errors == []
    configured = " ".join(d for _, d in handle.events("configure"))
    assert "640x480/YUV420" in configured and "320x240/YUV420" in configured


@pytest.mark.parametrize(("sensor", "width", "height", "fps"),
                         [("imx708", 4096, 3072, 30.0), ("imx708", 1920, 1080, 60.0),
                          ("imx219", 1920, 1080, 60.0)])
def test_a_size_no_sensor_mode_gives_is_refused_naming_the_modes_picamera2_reports(
        real_picamera2: RealPicamera2, sensor: str, width: int, height: int, fps: float) -> None:
    real_picamera2.install_camera(sensor)
    offered = genuine_sensor_modes(real_picamera2)
    camera = PicameraCamera(CameraMode(width, height, fps), fragment_seconds=1.0)
    with pytest.raises(SensorModeUnavailable) as caught:
        camera.open()
    assert f"no sensor mode of {sensor} gives {width}x{height} at {fps:g} fps" in str(caught.value)
    assert f"it offers {offered} (width x height @ max fps)" in str(caught.value)
    if sensor == "imx708":
        assert offered == IMX708_MODES
    # The camera was released again: a new Picamera2 can open it.
    assert genuine_sensor_modes(real_picamera2) == offered


def test_an_impossible_size_keeps_the_unit_idle_and_says_why(real_picamera2: RealPicamera2,
                                                             tmp_path: Path, running: list) -> None:
    real_picamera2.install_camera("imx708")
    c = start_controller(running, tmp_path / "rec", width=4096, height=3072)
    assert c.wait_until(lambda: bool(c.refusals), WAIT_SECONDS)
    assert c.state == "idle"
    assert IMX708_MODES in c.refusals[-1][2]


def test_a_frontend_timeout_is_a_fault_and_a_reopened_picamera2_records_on(
        real_picamera2: RealPicamera2, tmp_path: Path, running: list,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="libcamera")
    handle = real_picamera2.install_camera("imx708", dequeue_timeout_s=0.2)
    c = start_controller(running, tmp_path / "rec")
    assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
    assert handle.wait_for_frames(15, WAIT_SECONDS)
    acquired = len(handle.events("acquire"))
    stalled_at = time.monotonic()
    handle.frontend_timeout()
    assert c.wait_until(lambda: any(a == "recovering" for _, _, a, _ in c.transitions), WAIT_SECONDS)
    produced = handle.frames_produced
    assert c.wait_until(lambda: c.state == "recording" and len(handle.events("acquire")) > acquired
                        and handle.frames_produced >= produced + 15, WAIT_SECONDS)
    assert c.ledger.totals["camera_timeout"] >= 1
    assert "Camera frontend has timed out!" in caplog.text
    # The old camera was stopped and released before the fresh Picamera2 acquired it.
    releases = [t for t, _ in handle.events("release") if t > stalled_at]
    reacquired = [t for t, _ in handle.events("acquire") if t > stalled_at]
    assert releases and reacquired and releases[0] < reacquired[0]
    assert not c.unit.abandoned
    running[0].stop()
    numbers = recorded_numbers(tmp_path / "rec")
    assert numbers and gaps(numbers) == []  # a stalled sensor made nothing, so nothing is missing


def test_a_stop_that_hangs_after_a_frontend_timeout_is_abandoned_and_vigil_exits_70(
        real_picamera2: RealPicamera2, tmp_path: Path, running: list) -> None:
    handle = real_picamera2.install_camera("imx708", dequeue_timeout_s=0.2)
    c = start_controller(running, tmp_path / "rec")
    assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
    assert handle.wait_for_frames(15, WAIT_SECONDS)
    handle.hang_stop()  # libcamera's Camera.stop() will block, as after raspberrypi/picamera2 #1264
    handle.frontend_timeout()
    running[0].thread.join(WAIT_SECONDS + 10)
    assert not running[0].thread.is_alive(), "the controller did not give up on the hung camera"
    assert running[0].exit_code == EXIT_HUNG_HARDWARE == 70
    assert "vigil-camera-close" in c.unit.abandoned
    assert c.ledger.totals["camera_timeout"] >= 1
    assert handle.events("stop_blocked")  # genuinely inside libcamera's stop(), not vigil's
    hung = [t for t in threading.enumerate() if t.name == "vigil-camera-close"]
    assert hung and hung[0].is_alive()
    handle.release_stop()
    hung[0].join(WAIT_SECONDS)
    assert not hung[0].is_alive()
    numbers = recorded_numbers(tmp_path / "rec")
    assert numbers and gaps(numbers) == [], handle.events("frame_dropped")


def test_a_camera_unplugged_mid_stream_is_lost_and_recorded_again_once_back(
        real_picamera2: RealPicamera2, tmp_path: Path, running: list) -> None:
    handle = real_picamera2.install_camera("imx708")
    c = start_controller(running, tmp_path / "rec")
    assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
    assert handle.wait_for_frames(15, WAIT_SECONDS)
    handle.vanish()  # a completed frame is in picamera2's hands: its requeue fails with ENODEV
    assert c.wait_until(lambda: c.ledger.totals.get("camera_lost", 0) >= 1, WAIT_SECONDS)
    assert c.wait_until(lambda: c.state in ("recovering", "critical"), WAIT_SECONDS)
    handle.reappear()
    produced = handle.frames_produced
    assert c.wait_until(lambda: c.state == "recording" and handle.frames_produced >= produced + 15,
                        WAIT_SECONDS)
    # picamera2's event loop died on the unplug; the close did not wait for it forever.
    assert not c.unit.abandoned
    running[0].stop()
    numbers = recorded_numbers(tmp_path / "rec")
    assert numbers and len(numbers) == len(set(numbers))
