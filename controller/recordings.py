"""Recordings over HTTP: the recorded hours page by page, and closed files with byte ranges.

Only closed footage files of vigil's own layout inside the recording root are ever served
(hw.footage): a path through a symbolic link, `..`, absolute paths, NUL bytes, foreign names
and `.partial` files are refused the same way as a missing file.
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

from hw.footage import (
    SECONDS_PER_HOUR,
    Footage,
    footage_at,
    hour_folder_for,
    hour_folders,
    list_footage,
    partials_in,
)

RANGE_CHUNK_BYTES = 64 * 1024
DEFAULT_PER_PAGE = 24
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000

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
    merged: RecordingFile | None = Field(description="The merged hour file, once merged (HH.mp4).")
    merged_files: list[RecordingFile] = Field(
        default_factory=list, description="Every merged file of the hour: HH.mp4, then HH-1.mp4, ...")
    segments: list[RecordingFile]
    is_recording: bool = Field(description="A segment of this hour is still being written.")


class RecordingPage(BaseModel):
    root: str
    page: int
    per_page: int
    total_hours: int
    total_pages: int
    hours: list[RecordingHour] = Field(description="Hours that hold footage, newest first.")


def _file(footage: Footage, root: Path) -> RecordingFile | None:
    try:
        size = os.lstat(footage.path).st_size
    except OSError:
        return None  # merged or deleted since the scan
    return RecordingFile(name=footage.path.name, path=footage.relative_to(root), size_bytes=size)


def _describe_hour(root: Path, start: float, files: list[Footage]) -> RecordingHour:
    folder = hour_folder_for(root, start)
    day, hour = folder.date_dir.name, folder.path.name
    merged = [f for f in (_file(item, root) for item in files if item.kind == "merged") if f is not None]
    segments = [f for f in (_file(item, root) for item in files if item.kind == "segment") if f is not None]
    return RecordingHour(day=day, hour=hour, merged=merged[0] if merged else None, merged_files=merged,
                         segments=segments, is_recording=bool(partials_in(folder.path)))


def list_recordings(root: Path, *, page: int, per_page: int) -> RecordingPage:
    """One page of the recorded hours under `root`, newest first.

    An hour is listed when it holds closed footage (segments, merged files) or a segment
    being written: every file merge and retention know about, through the footage layout.
    """
    by_hour: dict[float, list[Footage]] = {}
    for item in list_footage(root):
        by_hour.setdefault(item.hour_end - SECONDS_PER_HOUR, []).append(item)
    for folder in hour_folders(root):
        if partials_in(folder.path):
            by_hour.setdefault(folder.start, [])
    hours = sorted(by_hour, reverse=True)
    total_pages = max(1, -(-len(hours) // per_page))
    chosen = hours[(page - 1) * per_page : page * per_page]
    return RecordingPage(root=str(root), page=page, per_page=per_page, total_hours=len(hours),
                         total_pages=total_pages,
                         hours=[_describe_hour(root, start, by_hour[start]) for start in chosen])


def resolve_recording(root: Path, relative: str) -> Path | None:
    """The path of closed recording `relative` inside `root`, or None.

    None for anything that is not a closed footage file of vigil's layout (hw.footage):
    `..`, absolute paths, NUL bytes, `.partial`, foreign names, and any path through a link.
    """
    found = footage_at(root, relative)
    return found.path if found is not None else None


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
