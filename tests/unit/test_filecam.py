"""The file camera replays a source at its own pace and loses no frame across a gap in it."""

from __future__ import annotations

import pytest

from hw.camera import CameraMode
from hw.errors import CameraTimeout
from hw.filecam import FileCamera

MODE = CameraMode(160, 120, 30)
GAP_SECONDS = 0.3
READ_TIMEOUT_SECONDS = 0.1


def test_a_frame_due_after_a_gap_is_delivered_when_due_not_dropped() -> None:
    # The second frame is due GAP_SECONDS late: reads time out meanwhile, then that very frame
    # comes (its timestamp, from the source's own clock, says which frame it is).
    source = (f"lavfi:testsrc2=size={MODE.width}x{MODE.height}:rate={MODE.fps:g},"
              f"setpts='if(eq(N,0),0,PTS+{GAP_SECONDS:g}/TB)'")
    camera = FileCamera(MODE, source)
    camera.open()
    try:
        first = camera.read(5.0)
        timeouts = 0
        while True:
            try:
                second = camera.read(READ_TIMEOUT_SECONDS)
                break
            except CameraTimeout:
                timeouts += 1
                assert timeouts < 100, "the frame after the gap never came"
        assert timeouts >= 1
        assert second.timestamp - first.timestamp == pytest.approx(GAP_SECONDS + 1 / MODE.fps, abs=1e-3)
        third = camera.read(5.0)
        assert third.timestamp - second.timestamp == pytest.approx(1 / MODE.fps, abs=1e-3)
        assert [first.sequence, second.sequence, third.sequence] == [0, 1, 2]
    finally:
        camera.close()


def test_unpaced_frames_come_in_the_configured_yuv420_layout() -> None:
    camera = FileCamera(MODE, "lavfi:testsrc2=size=320x240:rate=30", paced=False)
    camera.open()
    try:
        frames = [camera.read(1.0) for _ in range(3)]
    finally:
        camera.close()
    assert all(f.data is not None and f.data.shape == MODE.frame_shape for f in frames)
    assert frames[0].timestamp < frames[1].timestamp < frames[2].timestamp
