"""The picamera2 backend on the hand-written fake picamera2, as on a Pi 4 (its V4L2 H.264 path).

The fake (tests/fakes/picamera2) follows the real library's signatures and failure modes; it
produces real H.264, so everything vigil does with the packets is real. The Pi 5 path runs on
the genuine picamera2 instead (test_picamera2_real.py).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from loguru import logger

from controller.core.controller import Controller
from hw.camera import CameraMode
from hw.errors import CameraUnavailable
from hw.factory import Hardware
from hw.picam import (
    PicameraCamera,
    SensorMode,
    SensorModeUnavailable,
    choose_sensor_mode,
    lores_size,
    packed_yuv420,
)
from hw.snapshot import encode_jpeg
from hw.v4l2.h264 import nal_types
from tests.e2e.conftest import FAST_POLICY, RunningController
from tests.helpers import gaps, recorded_numbers
from tests.specs import camera_spec, recording_spec

IMX708_MODES = "1536x864@120.13, 2304x1296@56.03, 4608x2592@14.35"
WAIT_SECONDS = 10.0


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), format="{level} {message}")
    yield lines
    logger.remove(sink)


def open_camera(width: int = 160, height: int = 120, fps: float = 30.0, **kwargs: object) -> PicameraCamera:
    camera = PicameraCamera(CameraMode(width, height, fps), capture_timeout=0.5,
                            **{"fragment_seconds": 0.5, **kwargs})  # type: ignore[arg-type]
    camera.open()
    return camera


# The Pi 5 path (LibavH264Encoder) runs on the genuine picamera2: test_picamera2_real.py.
@pytest.mark.parametrize(("platform", "kind", "isp"), [("pi4", "hardware", "VC4")])
def test_the_encoder_in_use_is_detected_and_logged(fake_picamera2: ModuleType, log_lines: list[str],
                                                   platform: str, kind: str, isp: str) -> None:
    from picamera2 import _fake

    _fake.install_camera(platform=platform)
    camera = open_camera()
    try:
        assert camera.encoder_kind == kind
        assert any(f"encoder={kind} platform={isp}" in line for line in log_lines), log_lines
        if kind == "libav":
            assert "software libx264" in camera.encoder_description
            assert any(line.startswith("WARNING") and "no hardware H.264 encoder" in line
                       for line in log_lines)
    finally:
        camera.close()


@pytest.mark.parametrize("platform", ["pi4"])
@pytest.mark.parametrize(("fragment_seconds", "iperiod"), [(0.5, 15), (0.2, 6)])
def test_keyframes_come_every_fragment(fake_picamera2: ModuleType, platform: str,
                                       fragment_seconds: float, iperiod: int) -> None:
    from picamera2 import _fake

    handle = _fake.install_camera(platform=platform)
    camera = open_camera(fragment_seconds=fragment_seconds)
    try:
        packets = [camera.read(WAIT_SECONDS) for _ in range(2 * iperiod + 1)]
    finally:
        camera.close()
    assert any(f"iperiod={iperiod} " in event for _, event in handle.events("start_encoder"))
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keyframes == [0, iperiod, 2 * iperiod]
    # repeat=True: every keyframe carries SPS and PPS in-band, as the segment writer needs.
    assert all({7, 8, 5} <= set(nal_types(packets[i].data)) for i in keyframes)
    stamps = [p.timestamp for p in packets]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def test_a_stop_that_hangs_is_abandoned_within_the_stop_timeout(fake_picamera2: ModuleType,
                                                                tmp_path: Path) -> None:
    from picamera2 import _fake

    handle = _fake.install_camera()
    hardware = Hardware(camera_spec(backend="picamera2", width=160, height=120, fps=30,
                                   read_timeout_seconds=0.5),
                        recording_spec(root=tmp_path, segment_seconds=1, fragment_seconds=0.5))
    camera = hardware.make_camera()
    camera.open()
    pipeline = hardware.make_pipeline(camera, tmp_path, lambda category, reason: None)
    pipeline.start()
    assert handle.wait_for_frames(10, WAIT_SECONDS)
    handle.hang_stop(None)  # stop_encoder() and stop() block, as after a frontend timeout
    reports = []
    stopper = threading.Thread(target=lambda: reports.append(pipeline.stop(timeout=1.5)),
                               name="test-stopper", daemon=True)
    stopper.start()
    stopper.join(1.5 + 3.0)
    assert not stopper.is_alive(), "pipeline.stop() blocked past its timeout"
    assert "vigil-camera-close" in reports[0].abandoned
    hung = [t for t in pipeline.threads if t.is_alive()]
    assert [t.name for t in hung] == ["vigil-camera-close"]
    assert handle.events("stop_blocked")
    handle.release_stop()
    hung[0].join(WAIT_SECONDS)
    assert not hung[0].is_alive() and not handle.is_open


@pytest.mark.parametrize(("width", "height", "fps"), [(4096, 3072, 30), (1920, 1080, 60)])
def test_an_impossible_mode_names_the_sensor_modes(fake_picamera2: ModuleType, width: int,
                                                   height: int, fps: float) -> None:
    from picamera2 import _fake

    handle = _fake.install_camera()
    camera = PicameraCamera(CameraMode(width, height, fps), fragment_seconds=1.0)
    with pytest.raises(SensorModeUnavailable) as caught:
        camera.open()
    assert f"no sensor mode of imx708 gives {width}x{height} at {fps:g} fps" in str(caught.value)
    assert IMX708_MODES in str(caught.value)
    assert not handle.is_open  # the camera was released again


def test_an_impossible_mode_keeps_the_unit_idle_and_says_why(fake_picamera2: ModuleType,
                                                             tmp_path: Path) -> None:
    from picamera2 import _fake

    _fake.install_camera()
    hardware = Hardware(camera_spec(backend="picamera2", width=4096, height=3072, fps=30),
                        recording_spec(root=tmp_path))
    running = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True))
    running.thread.start()
    try:
        c = running.controller
        assert c.wait_until(lambda: bool(c.refusals), WAIT_SECONDS)
        assert c.state == "idle"
        assert IMX708_MODES in c.refusals[-1][2]
    finally:
        running.stop()


def test_lores_frames_are_validated_and_feed_snapshots(fake_picamera2: ModuleType, tmp_path: Path) -> None:
    from picamera2 import _fake

    handle = _fake.install_camera()
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
        assert encode_jpeg(frame.data).startswith(b"\xff\xd8")
    finally:
        pipeline.stop()
    assert errors == []
    assert "lores=320x240/YUV420" in " ".join(e for _, e in handle.events("configure"))


def test_lores_validation_reports_a_frozen_image(fake_picamera2: ModuleType) -> None:
    from picamera2 import _fake

    _fake.install_camera()
    camera = open_camera(frozen_seconds=0.5, lores_fps=10.0)
    errors: list[tuple[str, str]] = []
    frozen_reported = threading.Event()

    def when_error(category: str, reason: str) -> None:
        errors.append((category, reason))
        if category == "camera_frozen":
            frozen_reported.set()

    try:
        camera.attach_sinks(when_error=when_error, when_frame=lambda frame: None)
        # The fake has no freeze fault: make the open Picamera2 hand over one lores picture
        # again and again, as an ISP stuck on a buffer would.
        picam2 = camera._picam2
        real_capture = picam2.capture_array
        stuck = real_capture("lores", wait=WAIT_SECONDS)
        picam2.capture_array = lambda name="main", wait=None, signal_function=None: (
            stuck.copy() if name == "lores" else real_capture(name, wait, signal_function))
        assert frozen_reported.wait(WAIT_SECONDS), errors
    finally:
        camera.close()
    reason = next(why for category, why in errors if category == "camera_frozen")
    assert reason.startswith("lores image unchanged for")


def test_a_frontend_timeout_recovers_by_reopening_picamera2(fake_picamera2: ModuleType,
                                                            tmp_path: Path) -> None:
    from picamera2 import _fake

    handle = _fake.install_camera(dequeue_timeout_s=0.2)
    hardware = Hardware(camera_spec(backend="picamera2", width=160, height=120, fps=30,
                                   read_timeout_seconds=0.5, frozen_seconds=0),
                        recording_spec(root=tmp_path / "rec", segment_seconds=1, fragment_seconds=0.5))
    running = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True))
    running.thread.start()
    try:
        c = running.controller
        assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
        assert handle.wait_for_frames(15, WAIT_SECONDS)
        opened = len(handle.events("open"))
        stalled_at = time.monotonic()
        handle.frontend_timeout()
        assert c.wait_until(lambda: any(a == "recovering" for _, _, a, _ in c.transitions), WAIT_SECONDS)
        produced = handle.frames_produced
        assert c.wait_until(lambda: c.state == "recording" and len(handle.events("open")) > opened
                            and handle.frames_produced >= produced + 15, WAIT_SECONDS)
        assert c.ledger.totals["camera_timeout"] >= 1
        # cancel_all_and_flush(), then the old Picamera2 closed before a fresh one opened.
        closes = [t for t, _ in handle.events("close") if t > stalled_at]
        reopens = [t for t, _ in handle.events("open") if t > stalled_at]
        assert closes and reopens and closes[0] < reopens[0]
    finally:
        running.stop()
    numbers = recorded_numbers(tmp_path / "rec")
    assert numbers and gaps(numbers) == []  # a stalled sensor produced nothing, so nothing is missing


def test_choose_sensor_mode_takes_the_smallest_mode_that_covers_size_and_rate() -> None:
    modes = [SensorMode(1536, 864, 120.13, 10, "SBGGR10_CSI2P"),
             SensorMode(2304, 1296, 56.03, 10, "SBGGR10_CSI2P"),
             SensorMode(4608, 2592, 14.35, 10, "SBGGR10_CSI2P")]
    assert str(choose_sensor_mode(modes, 1280, 720, 30)) == "1536x864@120.13"
    assert str(choose_sensor_mode(modes, 1920, 1080, 30)) == "2304x1296@56.03"
    assert str(choose_sensor_mode(modes, 4608, 2592, 14.3)) == "4608x2592@14.35"
    with pytest.raises(CameraUnavailable, match=r"it offers 1536x864@120\.13, 2304x1296@56\.03"):
        choose_sensor_mode(modes, 1920, 1080, 60)


def test_lores_keeps_the_aspect_and_padding_is_removed() -> None:
    assert lores_size(1920, 1080) == (320, 180)
    assert lores_size(1280, 960) == (320, 240)
    assert lores_size(160, 120) == (160, 120)
    width, height, stride = 160, 120, 192
    y = np.arange(width * height, dtype=np.uint32).reshape(height, width).astype(np.uint8)
    u = np.full((height // 2, width // 2), 70, np.uint8)
    v = np.full((height // 2, width // 2), 200, np.uint8)
    padded = np.zeros(stride * height * 3 // 2, np.uint8)
    padded[: stride * height].reshape(height, stride)[:, :width] = y
    plane = stride // 2 * height // 2
    padded[stride * height : stride * height + plane].reshape(height // 2, stride // 2)[:, : width // 2] = u
    padded[stride * height + plane :].reshape(height // 2, stride // 2)[:, : width // 2] = v
    packed = packed_yuv420(padded.reshape(height * 3 // 2, stride), width, height)
    assert packed.shape == (height * 3 // 2, width)
    assert (packed[:height] == y).all()
    chroma = packed[height:].reshape(-1)
    quarter = width * height // 4
    assert (chroma[:quarter] == 70).all() and (chroma[quarter:] == 200).all()
