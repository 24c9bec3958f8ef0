"""One contract, every camera backend: open, record, stall, lose and regain, close twice.

Each test runs once per rig (tests/contract/conftest.py): synthetic, file, the genuine
picamera2 as on a Pi 5 (over the fake libcamera), picamera2 as a Pi 4 (hand-written fake),
V4L2 in H.264 (headers repeated or sent once), MJPEG and YUYV (fake V4L2 kernel). Recordings
go through the real pipeline and segment writer and are decoded back into frame numbers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hw.camera import EncodedPacket, Frame
from hw.errors import CameraError, CameraTimeout
from hw.pipeline import close_with_timeout
from tests.contract.conftest import FPS, HEIGHT, READ_TIMEOUT_SECONDS, WIDTH, Rig
from tests.helpers import recorded_numbers, segments

RECORD_FRAMES = 45  # 1.5 s at 30 fps: more than one segment of 1 s
RECORD_DEADLINE_SECONDS = 20.0
READ_GRACE_SECONDS = 2.0  # on top of the read timeout, for a loaded test machine
DRAIN_READS = 200  # packets a backend may have queued before a stall shows
LOSE_DEADLINE_SECONDS = 15.0
CLOSE_TIMEOUT_SECONDS = 10.0


def read_bounded(camera, timeout: float) -> Frame | EncodedPacket | BaseException:  # type: ignore[no-untyped-def]
    """camera.read(timeout) in a worker; what it returned or raised. Fails if it overran."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(camera.read(timeout))
        except BaseException as err:
            result.append(err)

    reader = threading.Thread(target=run, name="test-reader", daemon=True)
    reader.start()
    reader.join(timeout + READ_GRACE_SECONDS)
    assert not reader.is_alive(), f"read({timeout}) did not return within its timeout"
    return result[0]  # type: ignore[return-value]


def test_opens_in_the_configured_mode_reads_and_closes_twice(rig: Rig, tmp_path: Path) -> None:
    camera = rig.hardware(tmp_path / "rec").make_camera()
    camera.open()
    mode = camera.mode
    assert (mode.width, mode.height, mode.fps) == (WIDTH, HEIGHT, FPS)
    item = camera.read(5.0)
    if mode.output == "packets":
        assert isinstance(item, EncodedPacket)
        assert item.data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01"))
    else:
        assert isinstance(item, Frame) and item.data is not None
        assert item.data.shape == mode.frame_shape
    camera.close()
    camera.close()
    with pytest.raises(CameraError):
        camera.read(0.1)


def test_records_segments_that_decode_with_every_frame_in_order(rig: Rig, tmp_path: Path) -> None:
    root = tmp_path / "rec"
    hardware = rig.hardware(root)
    camera = hardware.make_camera()
    camera.open()
    errors: list[tuple[str, str]] = []
    pipeline = hardware.make_pipeline(camera, root, lambda category, why: errors.append((category, why)))
    pipeline.start()
    deadline = time.monotonic() + RECORD_DEADLINE_SECONDS
    while (pipeline.writer.segments_closed < 1 or pipeline.stats.frames_recorded < RECORD_FRAMES) \
            and time.monotonic() < deadline and not pipeline.is_dead:
        time.sleep(0.05)
    report = pipeline.stop()
    assert report.abandoned == ()
    assert errors == []
    assert len(segments(root)) >= 2
    numbers = recorded_numbers(root)
    assert len(numbers) >= RECORD_FRAMES
    assert numbers == sorted(set(numbers)), "a frame was repeated or out of order"
    # Every frame the camera delivered is recorded: the only holes are frames the camera
    # itself dropped before delivering them (its own count, not a timing allowance).
    missing = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
    assert missing <= rig.dropped_by_camera(), sorted(missing - rig.dropped_by_camera())[:20]


def test_a_stalled_camera_times_out_within_the_read_timeout(rig: Rig, tmp_path: Path) -> None:
    camera = rig.hardware(tmp_path / "rec", scenario="stall").make_camera()
    camera.open()
    try:
        camera.read(5.0)
        rig.stall(camera)
        for _ in range(DRAIN_READS):  # frames already on their way may still come out first
            outcome = read_bounded(camera, READ_TIMEOUT_SECONDS)
            if isinstance(outcome, BaseException):
                break
        assert isinstance(outcome, CameraTimeout), outcome
        assert outcome.category == "camera_timeout"
    finally:
        assert close_with_timeout(camera.close, CLOSE_TIMEOUT_SECONDS, name="test-close")


def test_a_lost_camera_raises_camera_lost_and_a_fresh_one_opens_once_it_is_back(
        rig: Rig, tmp_path: Path) -> None:
    hardware = rig.hardware(tmp_path / "rec", scenario="lose")
    camera = hardware.make_camera()
    camera.open()
    camera.read(5.0)
    rig.lose()
    deadline = time.monotonic() + LOSE_DEADLINE_SECONDS
    outcome: object = None
    while time.monotonic() < deadline:
        outcome = read_bounded(camera, READ_TIMEOUT_SECONDS)
        if isinstance(outcome, BaseException):
            break
    assert isinstance(outcome, CameraError), outcome
    assert outcome.category == "camera_lost"
    assert close_with_timeout(camera.close, CLOSE_TIMEOUT_SECONDS, name="test-close")
    camera.close()
    with pytest.raises(CameraError):
        hardware.make_camera().open()  # still gone: a fresh instance cannot open either
    rig.restore()
    fresh = hardware.make_camera()
    fresh.open()
    try:
        assert isinstance(fresh.read(5.0), Frame | EncodedPacket)
    finally:
        fresh.close()
