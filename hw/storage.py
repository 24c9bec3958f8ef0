"""Storage probes: is a recording root usable, and which root to record into."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hw.writer import make_dirs_durably

PROBE_NAME = ".vigil-probe"
MIN_FREE_BYTES = 1024 * 1024  # room for at least a fragment or two
# A new segment may need a date folder, an hour folder and its file: one inode each.
MIN_FREE_INODES = 4


@dataclass(frozen=True, slots=True)
class RootStatus:
    """What a probe found out about one recording root."""

    path: Path
    is_usable: bool
    reason: str
    free_bytes: int = 0
    free_inodes: int | None = None  # None where the filesystem does not count inodes


def probe_root(root: Path, *, min_free_bytes: int = MIN_FREE_BYTES,
               min_free_inodes: int = MIN_FREE_INODES) -> RootStatus:
    """Create `root` if missing, write, fsync and remove a probe file, check free space and inodes."""
    try:
        make_dirs_durably(root)
        probe = root / PROBE_NAME
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"vigil")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
        free = shutil.disk_usage(root).free
        st = os.statvfs(root)
    except OSError as err:
        return RootStatus(root, False, f"{err.strerror or err} ({root})")
    inodes = st.f_favail if st.f_files else None
    if free < min_free_bytes:
        return RootStatus(root, False, f"only {free // 2**20} MiB free in {root}", free, inodes)
    if inodes is not None and inodes < min_free_inodes:
        return RootStatus(root, False, f"only {inodes} inodes free in {root}", free, inodes)
    return RootStatus(root, True, "writable", free, inodes)


def choose_root(primary: Path, fallbacks: tuple[Path, ...]) -> tuple[RootStatus, list[RootStatus]]:
    """The first usable root (primary first) and every probe made to find it."""
    probes = []
    for root in (primary, *fallbacks):
        status = probe_root(root)
        probes.append(status)
        if status.is_usable:
            return status, probes
    return probes[0], probes
