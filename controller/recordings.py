"""Recordings over HTTP: the recorded hours page by page, and closed files with byte ranges.

Only closed `.mp4` files strictly inside the recording root are ever served: a path is
resolved (every symlink followed) and must stay inside the resolved root; `..`, absolute
paths, NUL bytes and `.partial` files are refused the same way as a missing file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse
from loguru import logger
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from hw.writer import PARTIAL_SUFFIX

RANGE_CHUNK_BYTES = 64 * 1024
SEGMENT_SUFFIX = ".mp4"
DEFAULT_PER_PAGE = 24
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000

_DAY_DIR = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR_DIR = re.compile(r"\d{2}")
_MERGED_FILE = re.compile(r"(\d{2})\.mp4")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Problem(BaseModel):
    """Why a request failed, in one sentence."""

    detail: str


class RecordingFile(BaseModel):
    name: str
    path: str = Field(description="Path below /recordings/ to fetch the file.")
    size_bytes: int


class RecordingHour(BaseModel):
    day: str = Field(description="UTC date, YYYY-MM-DD.")
    hour: str = Field(description="UTC hour, HH.")
    merged: RecordingFile | None = Field(description="The merged hour file, once merged.")
    segments: list[RecordingFile]
    is_recording: bool = Field(description="A segment of this hour is still being written.")


class RecordingPage(BaseModel):
    root: str
    page: int
    per_page: int
    total_hours: int
    total_pages: int
    hours: list[RecordingHour] = Field(description="Hours that hold footage, newest first.")


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def _hours(root: Path) -> list[tuple[str, str]]:
    """(day, hour) of every hour holding footage or a merged file, newest first."""
    found: set[tuple[str, str]] = set()
    for day in _scan(root):
        if not (_DAY_DIR.fullmatch(day.name) and day.is_dir(follow_symlinks=False)):
            continue
        for entry in _scan(Path(day.path)):
            if _HOUR_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                found.add((day.name, entry.name))
            merged = _MERGED_FILE.fullmatch(entry.name)
            if merged and entry.is_file(follow_symlinks=False):
                found.add((day.name, merged.group(1)))
    return sorted(found, reverse=True)


def _file(entry: os.DirEntry[str] | Path, relative: str) -> RecordingFile | None:
    try:
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        return None  # merged or deleted since the scan
    return RecordingFile(name=entry.name, path=relative, size_bytes=size)


def _describe_hour(root: Path, day: str, hour: str) -> RecordingHour:
    segments: list[RecordingFile] = []
    is_recording = False
    for entry in sorted(_scan(root / day / hour), key=lambda e: e.name):
        if entry.name.endswith(PARTIAL_SUFFIX):
            is_recording = True
        elif entry.name.endswith(SEGMENT_SUFFIX) and entry.is_file(follow_symlinks=False):
            described = _file(entry, f"{day}/{hour}/{entry.name}")
            if described is not None:
                segments.append(described)
    merged_path = root / day / f"{hour}{SEGMENT_SUFFIX}"
    merged = None
    if merged_path.is_file() and not merged_path.is_symlink():
        merged = _file(merged_path, f"{day}/{merged_path.name}")
    return RecordingHour(day=day, hour=hour, merged=merged, segments=segments,
                         is_recording=is_recording)


def list_recordings(root: Path, *, page: int, per_page: int) -> RecordingPage:
    """One page of the recorded hours under `root`, newest first."""
    hours = _hours(root)
    total_pages = max(1, -(-len(hours) // per_page))
    chosen = hours[(page - 1) * per_page : page * per_page]
    return RecordingPage(root=str(root), page=page, per_page=per_page, total_hours=len(hours),
                         total_pages=total_pages,
                         hours=[_describe_hour(root, day, hour) for day, hour in chosen])


def resolve_recording(root: Path, relative: str) -> Path | None:
    """The real path of closed recording `relative` inside `root`, or None.

    None for anything that is not a closed `.mp4` strictly inside the root once every
    symlink is resolved: `..`, absolute paths, NUL bytes, links out of the root, `.partial`.
    """
    if not relative or "\x00" in relative or not relative.endswith(SEGMENT_SUFFIX):
        return None
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        return None
    try:
        real_root = root.resolve(strict=True)
        target = (real_root / candidate).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if target == real_root or not target.is_relative_to(real_root):
        return None
    if not target.name.endswith(SEGMENT_SUFFIX):
        return None
    return target


class _RangeNotSatisfiable(Exception):
    """The range starts past the end of the file (HTTP 416)."""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of the one range asked for; None to send the whole file.

    Malformed and multi-range headers are ignored, as RFC 9110 allows; a range starting past
    the end raises _RangeNotSatisfiable.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # a suffix: the last N bytes
        length = int(last_text)
        if length == 0 or size == 0:
            raise _RangeNotSatisfiable
        return max(0, size - length), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid: ignored, the whole file goes out
    if first >= size:
        raise _RangeNotSatisfiable
    return first, min(last, size - 1)


def serve_file(path: Path, range_header: str | None, if_range: str | None) -> Response:
    """The file at `path` (already checked), whole or one byte range.

    The file is opened before answering, so a merge that removes it meanwhile cannot turn a
    checked request into an error halfway through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.EISDIR):
            logger.warning("cannot open recording path={} error={}", path, err)
        raise HTTPException(404, detail="no such recording") from err
    file = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        file.close()
        raise HTTPException(404, detail="no such recording")
    size = info.st_size
    etag = f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{size:x}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag,
               "Last-Modified": formatdate(info.st_mtime, usegmt=True)}
    try:
        wanted = _parse_range(range_header, size) if if_range in (None, etag) else None
    except _RangeNotSatisfiable:
        file.close()
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    first, last = wanted if wanted is not None else (0, size - 1)
    length = last - first + 1
    headers["Content-Length"] = str(length)
    status_code = 200
    if wanted is not None:
        status_code = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(_chunks(file, first, length), status_code=status_code,
                             media_type="video/mp4", headers=headers,
                             background=BackgroundTask(file.close))


def _chunks(file: Any, first: int, length: int) -> Iterator[bytes]:
    try:
        fd = file.fileno()
        offset, left = first, length
        while left > 0:
            chunk = os.pread(fd, min(RANGE_CHUNK_BYTES, left), offset)
            if not chunk:
                break  # the file shrank; the client sees a short body
            offset += len(chunk)
            left -= len(chunk)
            yield chunk
    finally:
        file.close()
