"""Storage probes: is a recording root usable, and which root to record into."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hw.writer import make_dirs_durably

PROBE_NAME = ".vigil-probe"
MIN_FREE_BYTES = 1024 * 1024  # room for at least a fragment or two


@dataclass(frozen=True, slots=True)
class RootStatus:
    """What a probe found out about one recording root."""

    path: Path
    is_usable: bool
    reason: str
    free_bytes: int = 0


def probe_root(root: Path, *, min_free_bytes: int = MIN_FREE_BYTES) -> RootStatus:
    """Create `root` if missing, write, fsync and remove a probe file, check free space."""
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
    except OSError as err:
        return RootStatus(root, False, f"{err.strerror or err} ({root})")
    if free < min_free_bytes:
        return RootStatus(root, False, f"only {free // 2**20} MiB free in {root}", free)
    return RootStatus(root, True, "writable", free)


def choose_root(primary: Path, fallbacks: tuple[Path, ...]) -> tuple[RootStatus, list[RootStatus]]:
    """The first usable root (primary first) and every probe made to find it."""
    probes = []
    for root in (primary, *fallbacks):
        status = probe_root(root)
        probes.append(status)
        if status.is_usable:
            return status, probes
    return probes[0], probes
