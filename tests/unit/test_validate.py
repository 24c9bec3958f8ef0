"""Frame validation: what a bad frame looks like, and that good ones pass."""

from __future__ import annotations

import numpy as np
import pytest

from hw.camera import CameraMode, Frame
from hw.synthetic import FaultPlan, FrameCounter, SyntheticCamera
from hw.validate import FrameValidator

MODE = CameraMode(64, 48, 30)


def good(ts: float, seq: int = 0) -> Frame:
    return Frame(np.zeros(MODE.frame_shape, np.uint8), ts, 0.0, seq)


def test_good_frames_pass() -> None:
    v = FrameValidator(MODE)
    assert [v.check(good(t / 30)) for t in range(5)] == [None] * 5


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (None, "no image"),
        ([[0]], "no image"),
        (np.zeros(MODE.frame_shape, np.float32), "dtype float32"),
        (np.zeros((48, 64), np.uint8), "shape (48, 64)"),
        (np.zeros((72, 66), np.uint8), "shape (72, 66)"),
    ],
)
def test_malformed_frames_are_invalid(data: object, needle: str) -> None:
    verdict = FrameValidator(MODE).check(Frame(data, 1.0, 0.0, 7))  # type: ignore[arg-type]
    assert verdict is not None and verdict.category == "frame_invalid" and verdict.drops_frame
    assert needle in verdict.reason and "frame 7" in verdict.reason


@pytest.mark.parametrize("second", [1.0, 0.5])
def test_timestamps_must_strictly_increase(second: float) -> None:
    v = FrameValidator(MODE)
    assert v.check(good(1.0)) is None
    verdict = v.check(good(second))
    assert verdict is not None and verdict.category == "frame_timestamp"
    assert v.check(good(1.1)) is None  # the last good timestamp is kept as the reference


def test_frozen_image_is_reported_once_and_frames_are_kept() -> None:
    v = FrameValidator(MODE, frozen_seconds=1.0)
    verdicts = [v.check(good(t / 30)) for t in range(90)]  # 3 s of the same picture
    frozen = [x for x in verdicts if x is not None]
    assert len(frozen) == 1
    assert frozen[0].category == "camera_frozen" and not frozen[0].drops_frame


def test_moving_picture_is_not_frozen() -> None:
    camera = SyntheticCamera(MODE, counter=FrameCounter(), paced=False)
    camera.open()
    v = FrameValidator(MODE, frozen_seconds=0.5)
    for i in range(90):
        frame = camera.read(1.0)
        frame.timestamp = i / 30
        assert v.check(frame) is None


def test_synthetic_corruption_is_caught_as_invalid() -> None:
    faults = FaultPlan()
    camera = SyntheticCamera(MODE, counter=FrameCounter(), paced=False, faults=faults)
    camera.open()
    faults.inject_corrupt(["shape", "dtype", "none"])
    v = FrameValidator(MODE)
    verdicts = [v.check(camera.read(1.0)) for _ in range(4)]
    assert [x.category if x else None for x in verdicts] == ["frame_invalid"] * 3 + [None]


def test_frame_queue_is_bounded_in_bytes_not_just_frames() -> None:
    from hw.factory import QUEUE_BUDGET_BYTES, queue_frames_for

    assert queue_frames_for(CameraMode(640, 480, 30), 60) == 60
    assert queue_frames_for(CameraMode(1920, 1080, 30), 60) == 16
    assert queue_frames_for(CameraMode(1920, 1080, 30), 60) * 1920 * 1080 * 3 // 2 <= QUEUE_BUDGET_BYTES
    assert queue_frames_for(CameraMode(4096, 4096, 30), 60) == 2  # never fewer than two
    assert queue_frames_for(CameraMode(1920, 1080, 30, "packets"), 60) == 60


def picture_frame(ts: float, seq: int = 0, *, width: int = MODE.width, height: int = MODE.height,
                  fmt: str = "yuv420p", level: int = 0) -> Frame:
    """A frame carrying a decoder's own picture (as the file camera hands them over)."""
    import av

    picture = av.VideoFrame(width, height, fmt)
    for plane in picture.planes:
        plane.update(bytes([level]) * plane.buffer_size)
    return Frame(None, ts, 0.0, seq, picture=picture)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"width": 66}, "size 66x48"), ({"height": 40}, "size 64x40"), ({"fmt": "rgb24"}, "pixel format rgb24")],
)
def test_a_decoders_picture_of_the_wrong_size_or_format_is_invalid(changes: dict[str, object],
                                                                   needle: str) -> None:
    verdict = FrameValidator(MODE).check(picture_frame(1.0, 7, **changes))  # type: ignore[arg-type]
    assert verdict is not None and verdict.category == "frame_invalid" and verdict.drops_frame
    assert needle in verdict.reason and "frame 7" in verdict.reason


def test_a_decoders_pictures_are_checked_for_time_and_freezing_without_an_array() -> None:
    v = FrameValidator(MODE, frozen_seconds=1.0)
    assert v.check(picture_frame(1.0)) is None
    verdict = v.check(picture_frame(1.0))
    assert verdict is not None and verdict.category == "frame_timestamp"
    frames = [picture_frame(2.0 + t / 30) for t in range(90)]  # 3 s of the same picture
    frozen = [x for x in (v.check(f) for f in frames) if x is not None]
    assert [x.category for x in frozen] == ["camera_frozen"]
    assert all(f._data is None for f in frames)
    moving = FrameValidator(MODE, frozen_seconds=0.5)
    assert [moving.check(picture_frame(t / 30, level=t % 200)) for t in range(60)] == [None] * 60
