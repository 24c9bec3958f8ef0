"""Where the recorded playlist puts EXT-X-DISCONTINUITY, over real segments (libx264, PyAV)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from controller.surfaces.hls import vod_playlist
from hw.synthetic import FrameCounter
from tests.pasthours import past_hour_start, record


def name(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ.mp4")


def test_a_discontinuity_where_the_picture_size_changes_or_recording_paused_not_at_a_segment_boundary(
        tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    t = past_hour_start(hours_ago=3) + 60
    counter = FrameCounter()
    record(root, wallclock=t, frames=90, counter=counter)  # one encoder: t, t+1, t+2
    # Straight on at another size (a quality step: a new encoder, no pause): t+3, t+4
    record(root, wallclock=t + 3, frames=60, counter=counter, width=128, height=96)
    # The same size again after a 1 s pause (a recovery): t+6
    record(root, wallclock=t + 6, frames=30, counter=counter, width=128, height=96)
    text = vod_playlist(root, t, t + 7)
    assert text is not None
    lines = text.splitlines()
    maps = [i for i, line in enumerate(lines) if line.startswith("#EXT-X-MAP:")]
    assert [name(t + s) in lines[i] for i, s in zip(maps, (0, 1, 2, 3, 4, 6), strict=True)] == [True] * 6
    after_discontinuity = [lines[i - 1] == "#EXT-X-DISCONTINUITY" for i in maps]
    assert after_discontinuity == [False, False, False, True, False, True], lines
