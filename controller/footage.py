"""Where footage lives under a recording root, and which hour of UTC time each file holds.

The layout is fixed by the segment writer: `ROOT/YYYY-MM-DD/HH/YYYYMMDDTHHMMSSZ[-N].mp4`
for segments, and the merge adds `ROOT/YYYY-MM-DD/HH[-N].mp4` for merged hours. Times come
from these names, never from file mtimes (a copied or restored card keeps its names but
not its mtimes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

SECONDS_PER_HOUR = 3600
SEGMENT_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-\d+)?\.mp4$")
MERGED_NAME = re.compile(r"^(\d{2})(?:-\d+)?\.mp4$")
DATE_DIR_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HOUR_DIR_NAME = re.compile(r"^\d{2}$")
HOUR_ARGUMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")
MERGE_TEMP_SUFFIX = ".merging"

FootageKind = Literal["segment", "merged"]


@dataclass(frozen=True, slots=True)
class HourFolder:
    """ROOT/YYYY-MM-DD/HH: the segments of one hour, and where that hour's merge goes."""

    path: Path
    start: float  # UTC seconds of the hour's first instant

    @property
    def end(self) -> float:
        return self.start + SECONDS_PER_HOUR

    @property
    def date_dir(self) -> Path:
        return self.path.parent

    @property
    def key(self) -> str:
        """The hour as `vigil merge --hour` spells it: YYYY-MM-DDTHH."""
        return hour_key(self.start)


@dataclass(frozen=True, slots=True)
class Footage:
    """One file of footage: a segment or a merged hour, with the UTC hour it belongs to."""

    path: Path
    kind: FootageKind
    start: float  # UTC seconds: the segment's start, or the merged hour's first instant
    hour_end: float  # no frame of the file is later than this (segments split at the hour)

    @property
    def sort_key(self) -> tuple[float, int, str]:
        """Oldest first; NAME.mp4 before NAME-1.mp4, which was created after it."""
        return (self.start, collision_number(self.path.name), self.path.name)


def hour_key(start: float) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H")


def parse_hour(text: str) -> float:
    """UTC seconds of the hour `YYYY-MM-DDTHH`; ValueError saying what is wrong otherwise."""
    if not HOUR_ARGUMENT.match(text):
        raise ValueError(f"{text!r} is not an hour in the form YYYY-MM-DDTHH (e.g. 2026-05-09T14)")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a valid hour: there is no such date or hour") from None


def hour_folder_for(root: Path, start: float) -> HourFolder:
    t = datetime.fromtimestamp(start, UTC)
    return HourFolder(root / t.strftime("%Y-%m-%d") / t.strftime("%H"), start)


def _hour_start(date_name: str, hour_name: str) -> float | None:
    try:
        day = datetime.strptime(date_name, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    hour = int(hour_name)
    if hour > 23:
        return None
    return (day + timedelta(hours=hour)).timestamp()


def segment_start(name: str) -> float | None:
    """UTC seconds encoded in a segment's file name, or None if it is not a segment name."""
    match = SEGMENT_NAME.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def collision_number(name: str) -> int:
    """N of a `NAME-N.mp4` (a name taken when the file was made), 0 for a plain name."""
    stem = name.removesuffix(".mp4")
    head, dash, tail = stem.rpartition("-")
    return int(tail) if dash and tail.isdigit() and head else 0


def date_dirs(root: Path) -> list[Path]:
    """ROOT/YYYY-MM-DD folders, oldest first."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if DATE_DIR_NAME.match(p.name) and p.is_dir())


def hour_folders(root: Path) -> list[HourFolder]:
    """Every ROOT/YYYY-MM-DD/HH folder, oldest first."""
    found = []
    for date_dir in date_dirs(root):
        try:
            entries = list(date_dir.iterdir())
        except OSError:
            continue
        for entry in entries:
            if not HOUR_DIR_NAME.match(entry.name) or not entry.is_dir():
                continue
            start = _hour_start(date_dir.name, entry.name)
            if start is not None:
                found.append(HourFolder(entry, start))
    return sorted(found, key=lambda h: h.start)


def segments_in(folder: Path) -> list[Path]:
    """Closed segment files directly in `folder` (no `.partial`, nothing foreign), by name."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if SEGMENT_NAME.match(p.name) and p.is_file())


def merged_files_for(hour: HourFolder) -> list[Path]:
    """The merged files of `hour` (HH.mp4, HH-1.mp4, ...) in its date folder."""
    try:
        entries = list(hour.date_dir.iterdir())
    except OSError:
        return []
    hh = hour.path.name
    return sorted(
        p for p in entries
        if MERGED_NAME.match(p.name) and p.name.split(".")[0].split("-")[0] == hh and p.is_file()
    )


def list_footage(root: Path) -> list[Footage]:
    """Every segment and merged hour under `root`, oldest first (times from the names)."""
    items: list[Footage] = []
    for date_dir in date_dirs(root):
        try:
            entries = list(date_dir.iterdir())
        except OSError:
            continue
        for entry in entries:
            if HOUR_DIR_NAME.match(entry.name) and entry.is_dir():
                start = _hour_start(date_dir.name, entry.name)
                if start is None:
                    continue
                for path in segments_in(entry):
                    seg_start = segment_start(path.name)
                    if seg_start is not None:
                        items.append(Footage(path, "segment", seg_start, start + SECONDS_PER_HOUR))
            elif MERGED_NAME.match(entry.name) and entry.is_file():
                start = _hour_start(date_dir.name, entry.name[:2])
                if start is not None:
                    items.append(Footage(entry, "merged", start, start + SECONDS_PER_HOUR))
    return sorted(items, key=lambda f: f.sort_key)
