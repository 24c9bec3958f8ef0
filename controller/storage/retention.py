"""Retention: which footage to delete, oldest first, to honour the age limit and the free-space reserve.

Two rules, applied to segments and merged hours alike (their time comes from their names):
footage whose hour ended more than `retention_days` ago is deleted, and while the free
space of a filesystem is below the reserve (`reserve_mb` or `reserve_percent` of its size,
whichever is larger, at most half of it) or its free inodes are below `reserve_inodes` (at
most half of its inodes: a card full of small files is as full as one out of bytes) the
oldest footage on it is deleted. Never deleted: the open segment
(a `.partial`, which is not footage yet) and the newest closed segment of a root that is
being recorded into, so the footage just before the open one stays whole.

With upload on, `is_uploaded` says which files are already verified in the bucket: the
free-space rule deletes those first (oldest first), and footage not yet uploaded only when
the reserve cannot be held otherwise; each such deletion is marked (`uploaded` False) so the
housekeeper can raise "footage lost before upload".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from hw.footage import (
    DATE_DIR_NAME,
    HOUR_DIR_NAME,
    SECONDS_PER_HOUR,
    Footage,
    date_dirs,
    hour_folders,
    list_footage,
    remove_manifest,
)
from hw.writer import fsync_directory

SECONDS_PER_DAY = 86_400
MIB = 1024 * 1024
MAX_RESERVE_FRACTION = 0.5
# Free inodes kept on a card: every segment and folder takes one, and a card out of inodes
# refuses new files with ENOSPC however many bytes are free.
DEFAULT_RESERVE_INODES = 64
# Folders of the last hours may be about to receive a segment: never removed while empty.
RECENT_FOLDER_SECONDS = 2 * SECONDS_PER_HOUR


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long footage is kept and how much room is kept free."""

    retention_days: float = 30.0  # 0 keeps footage forever
    reserve_mb: float = 1024.0
    reserve_percent: float = 5.0
    reserve_inodes: int = DEFAULT_RESERVE_INODES

    def reserve_bytes(self, total_bytes: int) -> int:
        """The free space to keep on a filesystem of `total_bytes`: the larger of the two
        settings, but never more than half the filesystem (a 1 GiB default on a 64 MiB card
        would otherwise delete every file it records)."""
        wanted = max(self.reserve_mb * MIB, total_bytes * self.reserve_percent / 100.0)
        return int(min(wanted, total_bytes * MAX_RESERVE_FRACTION))

    def reserve_inode_count(self, total_inodes: int) -> int:
        """The free inodes to keep on a filesystem of `total_inodes`: `reserve_inodes`, but
        never more than half of them (0 where the filesystem does not count inodes)."""
        return int(min(self.reserve_inodes, total_inodes * MAX_RESERVE_FRACTION))


def inode_usage(path: Path) -> tuple[int, int]:
    """(total inodes, inodes free to an unprivileged writer) of `path`'s filesystem."""
    st = os.statvfs(path)
    return st.f_files, st.f_favail


@dataclass(frozen=True, slots=True)
class Deletion:
    """One file retention deleted, and why."""

    path: Path
    bytes: int
    reason: str
    uploaded: bool | None = None  # None: upload is off


@dataclass
class RetentionReport:
    """What one retention pass did and where each filesystem stands afterwards."""

    deletions: list[Deletion] = field(default_factory=list)
    # Per filesystem (keyed by a root on it): free bytes afterwards (estimated), and the reserve.
    free_bytes: dict[Path, int] = field(default_factory=dict)
    reserve_bytes: dict[Path, int] = field(default_factory=dict)
    # Filesystems where the reserve could not be met: only protected footage (or none) is left.
    short: dict[Path, int] = field(default_factory=dict)
    # The same for inodes: free inodes afterwards (estimated), the reserve, the shortfall.
    free_inodes: dict[Path, int] = field(default_factory=dict)
    reserve_inodes: dict[Path, int] = field(default_factory=dict)
    short_inodes: dict[Path, int] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.deletions)


def protected_paths(roots: Sequence[Path], open_segments: Sequence[Path]) -> set[Path]:
    """The newest closed segment of every root that holds an open segment."""
    protected: set[Path] = set()
    for root in roots:
        if not any(_is_under(p, root) for p in open_segments):
            continue
        segments = [f for f in list_footage(root) if f.kind == "segment"]
        if segments:
            protected.add(segments[-1].path)
    return protected


def enforce_retention(
    roots: Sequence[Path],
    policy: RetentionPolicy,
    *,
    now: float,
    open_segments: Sequence[Path] = (),
    headroom_bytes: int = 0,
    headroom_inodes: int = 0,
    by_age: bool = True,
    disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
    inodes: Callable[[Path], tuple[int, int]] = inode_usage,
    is_uploaded: Callable[[Path], bool] | None = None,
) -> RetentionReport:
    """Delete footage under `roots` that the policy no longer keeps; returns what it did.

    `headroom_bytes` and `headroom_inodes` are kept free on top of the reserves (what will
    be written before the next check, or room to record again after ENOSPC); `by_age` False
    runs only the free-space rules (the quick pass after a storage_full error).
    `is_uploaded` (upload on): the free-space rule takes uploaded footage first.
    """
    report = RetentionReport()
    protected = protected_paths(roots, open_segments)
    kept_open = {p.parent for p in open_segments}
    touched: set[Path] = set()
    for group in _by_filesystem(roots):
        device = os.stat(group[0]).st_dev
        footage = [f for root in group for f in list_footage(root) if f.path not in protected]
        footage.sort(key=lambda f: f.sort_key)
        if by_age and policy.retention_days > 0:
            cutoff = now - policy.retention_days * SECONDS_PER_DAY
            while footage and footage[0].hour_end <= cutoff:
                item = footage.pop(0)
                reason = (f"older than retention_days={policy.retention_days:g} "
                          f"(hour ended {_utc(item.hour_end)})")
                if _delete(item, reason, report, device, is_uploaded):
                    touched.add(item.path.parent)
        if is_uploaded is not None:
            # Off the unit already: those go first; the rest keep their oldest-first order.
            footage.sort(key=lambda f: (not is_uploaded(f.path), f.sort_key))
        total, _, free = disk_usage(group[0])
        reserve = policy.reserve_bytes(total)
        target = reserve + headroom_bytes
        total_inodes, free_inodes = inodes(group[0])
        reserve_inodes = policy.reserve_inode_count(total_inodes)
        # A filesystem that does not count inodes (f_files 0) is never short of them.
        target_inodes = reserve_inodes + headroom_inodes if total_inodes else 0
        while (free < target or free_inodes < target_inodes) and footage:
            item = footage.pop(0)
            if free < target:
                reason = (f"free space {free / MIB:.1f} MiB below the reserve {reserve / MIB:.1f} MiB"
                          + (f" + {headroom_bytes / MIB:.1f} MiB headroom" if headroom_bytes else ""))
            else:
                reason = (f"free inodes {free_inodes} below the reserve {reserve_inodes}"
                          + (f" + {headroom_inodes} headroom" if headroom_inodes else ""))
            freed = _delete(item, reason + f" on the filesystem of {group[0]}", report, device, is_uploaded)
            if freed:
                touched.add(item.path.parent)
                # Counted as freed even if someone still holds the file open (space not yet
                # returned): deleting more because of a reader would lose footage for nothing.
                free += freed
                free_inodes += 1
        report.free_bytes[group[0]] = free
        report.reserve_bytes[group[0]] = reserve
        if free < reserve:
            report.short[group[0]] = reserve - free
        report.free_inodes[group[0]] = free_inodes
        report.reserve_inodes[group[0]] = reserve_inodes
        if total_inodes and free_inodes < reserve_inodes:
            report.short_inodes[group[0]] = reserve_inodes - free_inodes
    for root in roots:
        _prune_empty_folders(root, touched, now=now, keep=kept_open)
    return report


def _delete(item: Footage, reason: str, report: RetentionReport, device: int,
            is_uploaded: Callable[[Path], bool] | None = None) -> int:
    """Unlink one file; the bytes it held on disk, or 0 when it could not be deleted.

    Only a regular file on the root's own filesystem (`device`): a mount or a link inside
    the root is someone else's.
    """
    try:
        st = os.lstat(item.path)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != device:
            logger.warning("retention left alone path={}: not a regular file on the root's "
                           "filesystem", item.path)
            return 0
        uploaded = is_uploaded(item.path) if is_uploaded is not None else None
        item.path.unlink()
        remove_manifest(item.path)  # the manifest goes with its footage
    except FileNotFoundError:
        return 0
    except OSError as err:
        logger.error("retention could not delete path={} error={}", item.path, err)
        return 0
    size = st.st_blocks * 512 or st.st_size
    logger.warning("retention deleted {} path={} bytes={} reason: {}", item.kind, item.path, st.st_size,
                   reason)
    report.deletions.append(Deletion(item.path, size, reason, uploaded))
    return size


def _prune_empty_folders(root: Path, touched: set[Path], *, now: float, keep: set[Path]) -> None:
    """Remove hour and date folders emptied by deletions (not recent ones, not the open one's)."""
    candidates = set()
    for folder in touched:
        if not _is_under(folder, root):
            continue
        if HOUR_DIR_NAME.match(folder.name) and DATE_DIR_NAME.match(folder.parent.name):
            candidates.add(folder)
            candidates.add(folder.parent)
        elif DATE_DIR_NAME.match(folder.name):
            candidates.add(folder)
    for date_dir in date_dirs(root):
        # Leftover empty hour folders of days retention works on go too.
        if date_dir in candidates:
            candidates.update(h.path for h in hour_folders(root) if h.date_dir == date_dir)
    # Hour folders before their date folders.
    for folder in sorted(candidates, key=lambda p: len(p.parts), reverse=True):
        if folder in keep or _folder_end(folder) > now - RECENT_FOLDER_SECONDS:
            continue
        try:
            folder.rmdir()
        except OSError:
            continue  # not empty, or gone
        logger.info("retention removed empty folder path={}", folder)
        with contextlib.suppress(OSError):
            fsync_directory(folder.parent)


def _folder_end(folder: Path) -> float:
    """When the hour (or day) a footage folder stands for ends, in UTC seconds."""
    try:
        if HOUR_DIR_NAME.match(folder.name):
            day = datetime.strptime(folder.parent.name, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
            return day + (int(folder.name) + 1) * SECONDS_PER_HOUR
        return datetime.strptime(folder.name, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() + SECONDS_PER_DAY
    except ValueError:
        return float("inf")


def _by_filesystem(roots: Sequence[Path]) -> list[list[Path]]:
    """Existing roots grouped by the filesystem they are on: the reserve is per filesystem."""
    groups: dict[int, list[Path]] = {}
    for root in roots:
        try:
            device = os.stat(root).st_dev
        except OSError:
            continue
        group = groups.setdefault(device, [])
        if root not in group:
            group.append(root)
    return list(groups.values())


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
