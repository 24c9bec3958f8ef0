"""The disk fills while recording (ENOSPC on a real, size-limited tmpfs)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from controller.core.controller import Controller
from controller.storage.housekeeping import StorageSettings
from controller.storage.retention import RetentionPolicy
from tests.e2e.test_faults import RESUME_SECONDS, missing, record_for, resumed_after, visited
from tests.helpers import gaps, recorded_numbers, segments
from tests.tmpfs import mounted_tmpfs

# No reserve and no age limit: only an actual ENOSPC makes room, which is what is under test.
NO_RESERVE = StorageSettings(retention=RetentionPolicy(retention_days=0, reserve_mb=0, reserve_percent=0),
                             check_seconds=3600)


def fill(directory: Path, name: str = "ballast.bin") -> Path:
    """Write a file until the filesystem is full, as another program on the card might."""
    path = directory / name
    chunk = os.urandom(64 * 1024)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return path


def test_full_disk_deletes_the_oldest_footage_and_records_on(start_controller, tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "card", "16m") as card:
        root = card / "rec"
        running = start_controller(root=root, width=640, height=480, segment_seconds=1.0, crf=4,
                                   storage=NO_RESERVE)
        c: Controller = running.controller
        record_for(c, 150)
        before = {p: recorded_numbers_of(p) for p in segments(root)}
        oldest = min(before)
        fill(card)
        # The writer holds the open fragment and what follows in memory, retention deletes
        # the oldest footage, the held footage is written out: no fault, no teardown.
        assert c.wait_until(lambda: c.ledger.totals["storage_held"] >= 1, 15)
        writer = c.unit.pipeline.writer if c.unit.pipeline is not None else None
        assert writer is not None
        assert c.wait_until(lambda: writer.holds >= 1 and not writer.is_holding, 15)
        record_for(c, 60)
        running.stop()
        assert ("recording", "recovering") not in visited(c), c.transitions
        assert c.unit.pipeline is None and writer.packets_lost == 0
        assert not oldest.exists(), "the oldest segment should have made room"
        after = segments(root)
        survivors = [p for p in before if p.exists()]
        # Oldest first: whatever survived of the footage from before is its newest part.
        assert survivors == sorted(before)[len(before) - len(survivors):]
        numbers = recorded_numbers(root)
        assert len(numbers) == len(set(numbers)), "a held frame was written twice"
        lost = missing(numbers)
        dropped = c.snapshot.totals.frames_dropped
        print(f"disk full: {len(before) - len(survivors)} old segments deleted, "
              f"{len(lost)} frames missing, {dropped} dropped at capture (encoder behind)")
        # The storage loses nothing: the fragment being written when ENOSPC hit, and every
        # frame after it, is held and written out once retention made room. The only frames
        # that may be missing are the ones the capture queue dropped, counted, because the
        # encoder fell behind: that depends on how busy the machine is, the storage does not.
        assert len(lost) <= dropped, lost
        assert numbers[-1] >= max(max(n) for n in before.values())
        assert after[-1].name > sorted(before)[-1].name


def test_full_disk_with_nothing_to_delete_goes_critical_and_resumes_when_space_returns(
    start_controller, tmp_path: Path
) -> None:
    with mounted_tmpfs(tmp_path / "card", "8m") as card:
        root = card / "rec"
        running = start_controller(root=root, width=640, height=480, segment_seconds=600, crf=18,
                                   storage=NO_RESERVE)
        c: Controller = running.controller
        record_for(c, 60)
        ballast = fill(card)  # only the open segment is footage: nothing may be deleted
        assert c.wait_until(lambda: ("recovering", "critical") in visited(c), 30)
        assert not list(root.rglob("*.partial")), "the torn segment should have been closed out"
        kept = segments(root)
        assert kept, "the footage written before the disk filled must be kept"
        ballast.unlink()
        freed = time.monotonic()
        assert c.wait_until(lambda: resumed_after(c, freed), RESUME_SECONDS + 2)
        record_for(c, 30)
        running.stop()
        assert all(p.exists() for p in kept)
        assert gaps(recorded_numbers_of(kept[0])) == []


def recorded_numbers_of(path: Path) -> list[int]:
    from tests.helpers import frame_numbers

    return frame_numbers(path)


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left (bytes stay free)."""
    made = []
    while True:
        path = directory / f"ballast-{len(made)}"
        try:
            path.touch(exist_ok=False)
        except OSError as err:
            assert err.errno == errno.ENOSPC
            return made
        made.append(path)


def test_inodes_exhausted_reclaims_old_footage_and_records_on(start_controller, tmp_path: Path) -> None:
    # Plenty of bytes, few inodes: a card full of small files is full all the same.
    with mounted_tmpfs(tmp_path / "card", "64m,nr_inodes=120") as card:
        root = card / "rec"
        running = start_controller(root=root, segment_seconds=0.5, storage=NO_RESERVE)
        c: Controller = running.controller
        record_for(c, 90)
        before = segments(root)
        assert len(before) >= 4
        ballast = card / "ballast"
        ballast.mkdir()
        fill_inodes(ballast)
        assert os.statvfs(card).f_favail == 0
        newest_at_fill = segments(root)[-1].name
        # Retention deletes old footage for the inodes it frees; new segments close again.
        assert c.wait_until(lambda: not before[0].exists() and c.state == "recording"
                            and sum(p.name > newest_at_fill for p in segments(root)) >= 3, 15)
        record_for(c, 60)
        running.stop()
        assert c.state == "idle" and ("recovering", "critical") not in visited(c)
        assert not before[0].exists(), "the oldest segment should have freed an inode"
        numbers = recorded_numbers(root)
        assert len(numbers) == len(set(numbers))
        assert len(missing(numbers)) <= c.snapshot.totals.frames_dropped
        assert segments(root)[-1].name > before[-1].name
