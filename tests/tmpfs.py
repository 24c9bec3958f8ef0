"""A real size-limited filesystem for tests that fill the disk: tmpfs, mounted and unmounted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` for the block. Mounting needs root (or CAP_SYS_ADMIN): the suite
    runs as root, so a machine where this fails fails the test, saying why, rather than
    skipping the full-disk behaviour it exists to prove."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a size-limited tmpfs on {path} ({done.stderr.strip()}): "
                    "the full-disk tests need root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
