"""The footage layout: the names vigil writes under a recording root, and walking a root.

The one place that knows them; the writer, recovery, merge, retention, the API, export and
upload all ask here.

    ROOT/YYYY-MM-DD/HH/YYYYMMDDTHHMMSSZ[-N].mp4          a closed segment (UTC start)
    ROOT/YYYY-MM-DD/HH/YYYYMMDDTHHMMSSZ[-N].mp4.partial  the segment being written
    ROOT/YYYY-MM-DD/HH[-N].mp4                           a merged hour
    ROOT/YYYY-MM-DD/.HH[-N].mp4.merging                  a merge in progress
    ...NAME.mp4.manifest.json                            a file's signed manifest (hw.integrity),
                                                          part of it: deleted and moved with it

`-N` is taken when a name is already used: nothing is ever overwritten. Times come from
these names, never from file mtimes (a copied or restored card keeps its names but not its
mtimes). Walking a root never follows a symbolic link and yields only names vigil writes:
a link or a foreign file inside the root is someone else's, and vigil leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Literal

SECONDS_PER_HOUR = 3600
SEGMENT_SUFFIX = ".mp4"
PARTIAL_SUFFIX = ".partial"
MERGE_TEMP_SUFFIX = ".merging"
SEGMENT_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?\.mp4$")
PARTIAL_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?\.mp4\.partial$")
MERGED_NAME = re.compile(r"^(\d{2})(?:-(\d+))?\.mp4$")
MERGE_TEMP_NAME = re.compile(r"^\.(\d{2})(?:-(\d+))?\.mp4\.merging$")
DATE_DIR_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HOUR_DIR_NAME = re.compile(r"^\d{2}$")
HOUR_ARGUMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")
SEGMENT_STEM_FORMAT = "%Y%m%dT%H%M%SZ"

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

    def relative_to(self, root: Path) -> str:
        """The path below `root` as the API names it: YYYY-MM-DD/HH/NAME.mp4 or YYYY-MM-DD/HH.mp4."""
        return self.path.relative_to(root).as_posix()


# --- names ----------------------------------------------------------------------------------


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
    """The hour folder that footage starting at `start` (UTC seconds) belongs in."""
    t = datetime.fromtimestamp(start, UTC)
    hour_start = t.replace(minute=0, second=0, microsecond=0).timestamp()
    return HourFolder(root / t.strftime("%Y-%m-%d") / t.strftime("%H"), hour_start)


def segment_dir(root: Path, wallclock: float) -> Path:
    """ROOT/YYYY-MM-DD/HH for a segment starting at `wallclock` (UTC)."""
    return hour_folder_for(root, wallclock).path


def segment_stem(wallclock: float) -> str:
    return datetime.fromtimestamp(wallclock, UTC).strftime(SEGMENT_STEM_FORMAT)


def _numbered(stem: str, n: int) -> str:
    return f"{stem}{SEGMENT_SUFFIX}" if n == 0 else f"{stem}-{n}{SEGMENT_SUFFIX}"


def unique_segment_path(directory: Path, stem: str) -> Path:
    """NAME.mp4, or NAME-N.mp4 when NAME is taken (closed or still partial)."""
    n = 0
    while True:
        path = directory / _numbered(stem, n)
        if not _exists(path) and not _exists(partial_path(path)):
            return path
        n += 1


def free_merged_path(hour: HourFolder) -> Path:
    """HH.mp4, or HH-N.mp4 when taken: a merge never overwrites anything."""
    n = 0
    while True:
        path = hour.date_dir / _numbered(hour.path.name, n)
        if not _exists(path):
            return path
        n += 1


def merge_temp_path(final: Path) -> Path:
    """Where a merge writes before it renames into `final`: .HH[-N].mp4.merging beside it."""
    return final.with_name(f".{final.name}{MERGE_TEMP_SUFFIX}")


def partial_path(final: Path) -> Path:
    """NAME.mp4.partial: where the segment that will be `final` is written."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def final_path(partial: Path) -> Path:
    """NAME.mp4 for NAME.mp4.partial."""
    return partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX))


def is_segment_name(name: str) -> bool:
    return SEGMENT_NAME.match(name) is not None


def is_partial_name(name: str) -> bool:
    return PARTIAL_NAME.match(name) is not None


def is_merged_name(name: str) -> bool:
    return MERGED_NAME.match(name) is not None


def segment_start(name: str) -> float | None:
    """UTC seconds encoded in a segment's file name (closed or partial), or None."""
    match = SEGMENT_NAME.match(name) or PARTIAL_NAME.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), SEGMENT_STEM_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def collision_number(name: str) -> int:
    """N of a `NAME-N.mp4` (a name taken when the file was made), 0 for a plain name."""
    match = SEGMENT_NAME.match(name) or MERGED_NAME.match(name) or PARTIAL_NAME.match(name)
    if match is None or match.group(2) is None:
        return 0
    return int(match.group(2))


def _hour_start(date_name: str, hour_name: str) -> float | None:
    try:
        day = datetime.strptime(date_name, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    hour = int(hour_name)
    if hour > 23:
        return None
    return (day + timedelta(hours=hour)).timestamp()


def date_start(date_name: str) -> float | None:
    """UTC seconds of the first instant of a YYYY-MM-DD folder's day, or None."""
    return _hour_start(date_name, "00") if DATE_DIR_NAME.match(date_name) else None


# --- walking a root: never through a link -----------------------------------------------------


def _exists(path: Path) -> bool:
    """Whether anything, a dangling link included, has this name."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def is_real_directory(path: Path) -> bool:
    """A directory that is not a symbolic link."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def date_dirs(root: Path) -> list[Path]:
    """ROOT/YYYY-MM-DD folders (real folders, not links), oldest first."""
    if not is_real_directory(root) and not root.is_dir():
        return []
    return sorted(Path(e.path) for e in _entries(root) if DATE_DIR_NAME.match(e.name) and _is_dir(e))


def hour_folders(root: Path) -> list[HourFolder]:
    """Every ROOT/YYYY-MM-DD/HH folder (real folders, not links), oldest first."""
    found = []
    for date_dir in date_dirs(root):
        for entry in _entries(date_dir):
            if not HOUR_DIR_NAME.match(entry.name) or not _is_dir(entry):
                continue
            start = _hour_start(date_dir.name, entry.name)
            if start is not None:
                found.append(HourFolder(Path(entry.path), start))
    return sorted(found, key=lambda h: h.start)


def segments_in(folder: Path) -> list[Path]:
    """Closed segment files directly in `folder` (regular files with a segment name), by name."""
    if not is_real_directory(folder):
        return []
    return sorted(Path(e.path) for e in _entries(folder) if SEGMENT_NAME.match(e.name) and _is_file(e))


def partials_in(folder: Path) -> list[Path]:
    """Segments still being written (or left by a crash) directly in `folder`, by name."""
    if not is_real_directory(folder):
        return []
    return sorted(Path(e.path) for e in _entries(folder) if PARTIAL_NAME.match(e.name) and _is_file(e))


def partial_segments(root: Path) -> list[Path]:
    """Every `.partial` segment under `root` in the layout's own places, oldest first."""
    return [p for hour in hour_folders(root) for p in partials_in(hour.path)]


def merged_files_for(hour: HourFolder) -> list[Path]:
    """The merged files of `hour` (HH.mp4, HH-1.mp4, ...) in its date folder."""
    hh = hour.path.name
    return sorted(
        (Path(e.path) for e in _entries(hour.date_dir)
         if (m := MERGED_NAME.match(e.name)) is not None and m.group(1) == hh and _is_file(e)),
        key=lambda p: collision_number(p.name),
    )


def merge_temps_in(date_dir: Path) -> list[Path]:
    """Interrupted merges' temporary files in a date folder."""
    return sorted(Path(e.path) for e in _entries(date_dir) if MERGE_TEMP_NAME.match(e.name) and _is_file(e))


def list_footage(root: Path) -> list[Footage]:
    """Every closed segment and merged hour under `root`, oldest first (times from the names)."""
    items: list[Footage] = []
    for date_dir in date_dirs(root):
        for entry in _entries(date_dir):
            if HOUR_DIR_NAME.match(entry.name) and _is_dir(entry):
                start = _hour_start(date_dir.name, entry.name)
                if start is None:
                    continue
                for path in segments_in(Path(entry.path)):
                    seg_start = segment_start(path.name)
                    if seg_start is not None:
                        items.append(Footage(path, "segment", seg_start, start + SECONDS_PER_HOUR))
            elif (merged := MERGED_NAME.match(entry.name)) is not None and _is_file(entry):
                start = _hour_start(date_dir.name, merged.group(1))
                if start is not None:
                    items.append(Footage(Path(entry.path), "merged", start, start + SECONDS_PER_HOUR))
    return sorted(items, key=lambda f: f.sort_key)


def footage_at(root: Path, relative: str) -> Footage | None:
    """The closed footage file `relative` (as `Footage.relative_to` spells it) under `root`.

    None for anything else: a name vigil does not write, `..`, absolute paths, NUL bytes,
    `.partial`, and any path with a symbolic link in it (a link inside the root may point
    anywhere; vigil serves only its own files).
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if len(parts) == 3:
        day, hour, name = parts
        if not (DATE_DIR_NAME.match(day) and HOUR_DIR_NAME.match(hour) and SEGMENT_NAME.match(name)):
            return None
        hour_start, start = _hour_start(day, hour), segment_start(name)
        kind: FootageKind = "segment"
    elif len(parts) == 2:
        day, name = parts
        merged = MERGED_NAME.match(name)
        if not (DATE_DIR_NAME.match(day) and merged):
            return None
        hour_start = start = _hour_start(day, merged.group(1))
        kind = "merged"
    else:
        return None
    if hour_start is None or start is None:
        return None
    path = root.joinpath(*parts)
    current = root
    for part in parts[:-1]:
        current = current / part
        if not is_real_directory(current):
            return None
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    return Footage(path, kind, start, hour_start + SECONDS_PER_HOUR)


def partial_at(root: Path, relative: str) -> Path | None:
    """The segment being written, `YYYY-MM-DD/HH/NAME.mp4.partial`, under `root`, or None.

    The same refusals as `footage_at` (names vigil does not write, `..`, links, anything
    but a regular file), for the one place a `.partial` may be read: its whole fragments.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if len(parts) != 3:
        return None
    day, hour, name = parts
    if not (DATE_DIR_NAME.match(day) and HOUR_DIR_NAME.match(hour) and PARTIAL_NAME.match(name)):
        return None
    if _hour_start(day, hour) is None or segment_start(name) is None:
        return None
    if not (is_real_directory(root / day) and is_real_directory(root / day / hour)):
        return None
    path = root / day / hour / name
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    return path


def same_filesystem(path: Path, root: Path) -> bool:
    """Whether `path` lives on the filesystem of `root` (deletion never leaves a root's own)."""
    try:
        return os.lstat(path).st_dev == os.stat(root).st_dev
    except OSError:
        return False


MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(footage: Path) -> Path:
    """NAME.mp4.manifest.json: the signed manifest beside a segment or merged hour."""
    return footage.with_name(footage.name + MANIFEST_SUFFIX)


def remove_manifest(footage: Path) -> None:
    """Delete `footage`'s manifest (it goes with its file); nothing when there is none."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(manifest_path(footage))


def orphan_manifests_in(folder: Path) -> list[Path]:
    """Segment manifests in an hour folder whose segment is gone (neither NAME.mp4 nor its
    `.partial`, whose manifest is written just before its rename): a cut-short removal."""
    found = []
    for entry in _entries(folder):
        name = entry.name.removesuffix(MANIFEST_SUFFIX)
        if name != entry.name and SEGMENT_NAME.match(name) and _is_file(entry):
            segment = folder / name
            if not (_exists(segment) or _exists(partial_path(segment))):
                found.append(Path(entry.path))
    return sorted(found)


def move_manifest(footage: Path, to: Path) -> None:
    """Rename `footage`'s manifest to go with `to` (its file, renamed); nothing when none."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(manifest_path(footage), manifest_path(to))
