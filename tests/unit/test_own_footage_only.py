"""vigil touches only its own footage: links in and out of the root, foreign files and other
filesystems inside it survive retention, merge and start-up recovery.

Real files made by the real writer, real symlinks, a real tmpfs mounted inside the root.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import av
import numpy as np

from controller.storage.merge import force_merge
from controller.storage.retention import RetentionPolicy, enforce_retention
from hw.footage import hour_folder_for, list_footage, partial_segments, segment_stem
from hw.recovery import recover_partials
from hw.synthetic import FrameCounter
from tests.pasthours import past_hour_start, record
from tests.tmpfs import mounted_tmpfs

DELETE_EVERYTHING_OLD = RetentionPolicy(retention_days=1e-6, reserve_mb=0, reserve_percent=0)


def plain_mp4(path: Path, frames: int = 10) -> bytes:
    """An ordinary, complete, playable MP4 (moov at the end, not fragmented): someone else's."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), i * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


def snapshot_tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def outside_footage(tmp_path: Path, start: float) -> tuple[Path, dict[str, bytes]]:
    """A tree outside the root laid out like vigil's, with real segments, old enough to delete."""
    outside = tmp_path / "outside"
    record(outside, wallclock=start + 60, frames=30, counter=FrameCounter())
    return outside, snapshot_tree(outside)


def test_links_out_of_the_root_are_never_followed_by_retention_or_merge(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    old = past_hour_start(30)
    record(root, wallclock=old + 60, frames=30, counter=FrameCounter())
    ours = [f.path for f in list_footage(root)]
    other_day = past_hour_start(30 + 48)  # two days before `old`: another date at any hour of the day
    outside, before = outside_footage(tmp_path, other_day)
    linked = hour_folder_for(outside, other_day)
    # A linked date folder, a linked hour folder inside a real date folder, and a linked file
    # named like a segment: all point out of the root.
    os.symlink(linked.date_dir, root / linked.date_dir.name)
    ours_folder = hour_folder_for(root, old)
    os.symlink(linked.path, ours_folder.date_dir / "23" if ours_folder.path.name != "23" else
               ours_folder.date_dir / "22")
    target = next(linked.path.iterdir())
    os.symlink(target, ours_folder.path / f"{segment_stem(old + 1)}-7.mp4")

    assert {f.path for f in list_footage(root)} == set(ours)
    merged = force_merge([root], hour=None, now=time.time(), verify="keyframes", missing_ok=True)
    assert [m.hour for m in merged] == [ours_folder.key]  # only our own hour was merged
    report = enforce_retention([root], DELETE_EVERYTHING_OLD, now=time.time())

    assert report.deletions and all(d.path.resolve().is_relative_to(root.resolve()) for d in report.deletions)
    assert snapshot_tree(outside) == before, "footage outside the root was changed"


def test_a_filesystem_mounted_inside_the_root_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    old = past_hour_start(30)
    record(root, wallclock=old + 60, frames=30, counter=FrameCounter())
    other_day = past_hour_start(30 + 48)  # two days before `old`: another date at any hour of the day
    folder = hour_folder_for(root, other_day)
    folder.date_dir.mkdir(parents=True)
    with mounted_tmpfs(folder.date_dir, "8m"):
        record(root, wallclock=other_day + 60, frames=30, counter=FrameCounter())
        before = snapshot_tree(folder.date_dir)
        assert before
        report = enforce_retention([root], DELETE_EVERYTHING_OLD, now=time.time())
        assert report.deletions
        assert all(not d.path.is_relative_to(folder.date_dir) for d in report.deletions)
        assert snapshot_tree(folder.date_dir) == before


def test_start_up_recovery_leaves_foreign_partials_alone(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    start = past_hour_start(2)
    folder = hour_folder_for(root, start)
    folder.path.mkdir(parents=True)
    # Another program's complete, playable download, named like our open segment...
    named_like_ours = folder.path / f"{segment_stem(start)}.mp4.partial"
    download = plain_mp4(named_like_ours)
    # ... one with a foreign name, one in a linked folder out of the root, and an empty file.
    foreign = folder.path / "movie.mp4.partial"
    shutil.copy(named_like_ours, foreign)
    outside = tmp_path / "outside" / "00"
    outside.mkdir(parents=True)
    linked_partial = outside / f"{segment_stem(start + 5)}.mp4.partial"
    linked_partial.write_bytes(b"\x00" * 100)
    os.symlink(outside, folder.date_dir / ("00" if folder.path.name != "00" else "01"))

    recover_partials(root)

    assert named_like_ours.read_bytes() == download
    assert foreign.read_bytes() == download
    assert linked_partial.read_bytes() == b"\x00" * 100
    assert [p for p in partial_segments(root)] == [named_like_ours]  # the link is not walked
