"""Shared test helpers: decode recordings back into frame numbers."""

from __future__ import annotations

import itertools
from pathlib import Path

import av

from hw import framecode


def _segment_key(path: Path) -> tuple[Path, str, int]:
    """Start time from the name, then the collision suffix as a number (X, X-1, X-2, X-10)."""
    stem, _, n = path.stem.partition("-")
    return (path.parent, stem, int(n) if n.isdigit() else 0)


def segments(root: Path) -> list[Path]:
    """Closed segment files under `root`, oldest first (names sort by start time)."""
    return sorted(root.rglob("*.mp4"), key=_segment_key)


def frame_numbers(path: Path) -> list[int]:
    """Decode every frame of `path` and read its frame-number code."""
    with av.open(str(path)) as container:
        return [framecode.read_video_frame(f) for f in container.decode(video=0)]


def recorded_numbers(root: Path) -> list[int]:
    """Frame numbers of every segment under `root`, in recording order."""
    numbers: list[int] = []
    for path in segments(root):
        numbers.extend(frame_numbers(path))
    return numbers


def gaps(numbers: list[int]) -> list[tuple[int, int]]:
    """(last before, first after) for every place the numbers do not go up by one."""
    return [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1]
