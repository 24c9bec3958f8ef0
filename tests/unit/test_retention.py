"""Retention: the age limit by the footage's own names, the free-space reserve on a real tmpfs."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from loguru import logger

from controller.storage.retention import RetentionPolicy, enforce_retention
from hw.footage import list_footage
from tests.pasthours import past_hour_start
from tests.tmpfs import mounted_tmpfs

DAY = 86_400
MIB = 1024 * 1024
NO_RESERVE = {"reserve_mb": 0.0, "reserve_percent": 0.0}


def segment_at(root: Path, t: float, size: int = 1000, suffix: str = "") -> Path:
    """A file of footage named as the writer names a segment starting at `t` (UTC seconds)."""
    at = datetime.fromtimestamp(t, UTC)
    name = at.strftime("%Y%m%dT%H%M%SZ") + suffix + ".mp4"
    path = root / at.strftime("%Y-%m-%d") / at.strftime("%H") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def merged_at(root: Path, t: float, size: int = 1000) -> Path:
    at = datetime.fromtimestamp(t, UTC)
    path = root / at.strftime("%Y-%m-%d") / at.strftime("%H.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def test_footage_past_retention_days_is_deleted_by_the_time_in_its_name(
    tmp_path: Path, log_lines: list[str],
) -> None:
    root = tmp_path / "rec"
    now = time.time()
    old_segment = segment_at(root, now - 40 * DAY)
    old_merged = merged_at(root, now - 31 * DAY)
    kept_segment = segment_at(root, now - 29 * DAY)
    kept_merged = merged_at(root, now - 2 * DAY)
    recent = segment_at(root, now - 60)
    # mtimes say the opposite of the names: the names decide.
    for path in (old_segment, old_merged):
        os.utime(path, (now, now))
    for path in (kept_segment, kept_merged, recent):
        os.utime(path, (now - 400 * DAY, now - 400 * DAY))

    report = enforce_retention([root], RetentionPolicy(retention_days=30, **NO_RESERVE), now=now)

    assert {d.path for d in report.deletions} == {old_segment, old_merged}
    assert all("older than retention_days=30" in d.reason for d in report.deletions)
    assert [p.exists() for p in (kept_segment, kept_merged, recent)] == [True, True, True]
    assert not old_segment.parent.exists() and not old_segment.parent.parent.exists(), \
        "emptied hour and date folders should be removed"
    assert not old_merged.parent.exists()
    for deletion in report.deletions:
        assert any(str(deletion.path) in line and "older than" in line for line in log_lines), \
            "each deletion is logged with what and why"


def test_retention_days_zero_keeps_footage_forever(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    ancient = segment_at(root, time.time() - 3650 * DAY)
    report = enforce_retention([root], RetentionPolicy(retention_days=0, **NO_RESERVE), now=time.time())
    assert report.deletions == [] and ancient.exists()


def test_the_reserve_is_the_larger_of_mb_and_percent_at_most_half_the_disk() -> None:
    assert RetentionPolicy(reserve_mb=100, reserve_percent=5).reserve_bytes(1000 * MIB) == 100 * MIB
    assert RetentionPolicy(reserve_mb=10, reserve_percent=5).reserve_bytes(1000 * MIB) == 50 * MIB
    assert RetentionPolicy(reserve_mb=0, reserve_percent=0).reserve_bytes(1000 * MIB) == 0
    # The 1 GiB default on a 64 MiB card keeps half the card free, not more than the card.
    assert RetentionPolicy().reserve_bytes(64 * MIB) == 32 * MIB


def test_segments_sort_by_name_time_then_collision_number(tmp_path: Path) -> None:
    t = time.time() - DAY
    later = segment_at(tmp_path, t + 5)
    first = segment_at(tmp_path, t)
    collision = segment_at(tmp_path, t, suffix="-1")
    assert [f.path for f in list_footage(tmp_path)] == [first, collision, later]


def test_free_space_reserve_deletes_oldest_first_on_a_full_disk(tmp_path: Path, log_lines: list[str]) -> None:
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        root = disk / "rec"
        start = past_hour_start(3) + 60  # a few minutes from here stay in one hour folder
        files = [segment_at(root, start + 10 * i, size=300 * 1024) for i in range(11)]
        # A merged hour counts from the hour's start: older than the hour's later segments.
        files.insert(0, merged_at(root, start + 15, size=300 * 1024))
        free_before = shutil.disk_usage(disk).free
        assert free_before < 2 * MIB

        report = enforce_retention([root], RetentionPolicy(retention_days=0, reserve_mb=2, reserve_percent=0),
                                   now=time.time())

        free_after = shutil.disk_usage(disk).free
        assert free_after >= 2 * MIB
        deleted = [d.path for d in report.deletions]
        assert deleted == files[: len(deleted)], "only the oldest, in order"
        assert all(p.exists() for p in files[len(deleted):])
        assert all("below the reserve" in d.reason for d in report.deletions)
        assert any(f"retention deleted merged path={files[0]}" in line for line in log_lines)


def test_the_open_segment_and_the_newest_closed_one_are_never_deleted(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        root = disk / "rec"
        start = time.time() - 600
        closed = [segment_at(root, start + i, size=size * 1024) for i, size in enumerate((300, 300, 600))]
        open_segment = closed[-1].parent / "20991231T235959Z.mp4.partial"
        open_segment.write_bytes(os.urandom(600 * 1024))
        # The reserve is capped at half the disk, which the protected files alone exceed:
        # everything that may go, goes.
        never = RetentionPolicy(retention_days=0, reserve_mb=100, reserve_percent=0)
        report = enforce_retention([root], never, now=time.time(), open_segments=[open_segment])

        assert [d.path for d in report.deletions] == closed[:2]
        assert closed[2].exists() and open_segment.exists()
        assert report.short, "the pass should report that the reserve could not be met"


def test_a_fallback_root_on_another_filesystem_has_its_own_reserve(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "a", "2m") as disk_a, mounted_tmpfs(tmp_path / "b", "8m") as disk_b:
        start = past_hour_start(3) + 60  # a few minutes from here stay in one hour folder
        on_a = [segment_at(disk_a, start + i, size=400 * 1024) for i in range(4)]
        on_b = [segment_at(disk_b, start - 100 + i, size=400 * 1024) for i in range(4)]
        report = enforce_retention([disk_a, disk_b], RetentionPolicy(retention_days=0, reserve_mb=1,
                                                                     reserve_percent=0), now=time.time())
        # b is older but has room; only a (short of its reserve) loses footage.
        assert all(p.exists() for p in on_b)
        assert [d.path for d in report.deletions] == on_a[: len(report.deletions)]
        assert report.deletions and shutil.disk_usage(disk_a).free >= MIB


def test_free_inodes_below_the_reserve_delete_oldest_first(tmp_path: Path) -> None:
    # Bytes to spare, inodes short: a card full of small files refuses new segments too.
    with mounted_tmpfs(tmp_path / "disk", "64m,nr_inodes=60") as disk:
        root = disk / "rec"
        start = past_hour_start(3) + 60  # a few minutes from here stay in one hour folder
        files = [segment_at(root, start + 10 * i) for i in range(20)]
        ballast = disk / "other"
        ballast.mkdir()
        i = 0
        while os.statvfs(disk).f_favail > 2:
            (ballast / str(i)).touch()
            i += 1
        policy = RetentionPolicy(retention_days=0, reserve_inodes=10, **NO_RESERVE)

        report = enforce_retention([root], policy, now=time.time())

        assert os.statvfs(disk).f_favail >= 10
        deleted = [d.path for d in report.deletions]
        assert deleted == files[: len(deleted)] and len(deleted) >= 8, "only the oldest, in order"
        assert all("free inodes" in d.reason for d in report.deletions)
        assert report.short_inodes == {}
        assert len(list(ballast.iterdir())) == i, "files that are not footage stay"
