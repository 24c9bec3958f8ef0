"""Recordings over HTTP: the recorded hours page by page, and closed files with byte ranges.

Only closed footage files of vigil's own layout inside the recording root are ever served
(hw.footage): a path through a symbolic link, `..`, absolute paths, NUL bytes, foreign names
and `.partial` files are refused the same way as a missing file. A file is opened without
blocking and served only when fstat says it is a regular file: a directory, FIFO or device
named like footage is a 404, at once, with no descriptor left behind.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from email.utils import formatdate
from pathlib import Path

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
# A body up to this size is read at once and sent whole (an HLS fragment, a player's range):
# streaming it chunk by chunk costs a worker-thread hop per chunk, per request.
WHOLE_BODY_BYTES = 1024 * 1024
DEFAULT_PER_PAGE = 24
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)
# A byte position needs at most 19 digits (off_t is 63 bits); more is no position on any file.
MAX_POSITION_DIGITS = 19


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
    """The range starts past the end of the file, or names no possible position (HTTP 416)."""


def _position(text: str) -> int:
    """A byte position of the Range header; _RangeNotSatisfiable past any possible file.

    Bounded before int(): a position of thousands of digits is refused without converting it.
    """
    digits = text.lstrip("0") or "0"
    if len(digits) > MAX_POSITION_DIGITS or int(digits) >= 2**63:
        raise _RangeNotSatisfiable
    return int(digits)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of the one range asked for; None to send the whole file.

    Malformed and multi-range headers are ignored, as RFC 9110 allows; a range starting past
    the end, or with a position no file can have (more than 63 bits), raises
    _RangeNotSatisfiable.
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
        length = _position(last_text)
        if length == 0 or size == 0:
            raise _RangeNotSatisfiable
        return max(0, size - length), size - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid: ignored, the whole file goes out
    if first >= size:
        raise _RangeNotSatisfiable
    return first, min(last, size - 1)


# Errors that mean "no such recording" to a client, not worth a log line.
_QUIET_OPEN_ERRORS = frozenset({errno.ENOENT, errno.ELOOP, errno.EACCES, errno.EISDIR, errno.ENOTDIR,
                                errno.ENXIO, errno.ENAMETOOLONG, errno.EPERM})
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at `path`, and its stat.

    Opened without blocking (a FIFO or a device named like footage would block a plain open
    until someone writes to it) and without following a final symlink, then checked with
    fstat to be a regular file; anything else is closed again at once. Raises
    HTTPException: 404 for anything that is not a readable regular file, 503 when the
    process is out of descriptors.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        if err.errno in _OUT_OF_DESCRIPTORS:
            logger.warning("cannot open recording path={} error={}", path, err)
            raise HTTPException(503, detail="the recorder is out of file descriptors; try again",
                                headers={"Retry-After": "1"}) from err
        if err.errno not in _QUIET_OPEN_ERRORS:
            logger.warning("cannot open recording path={} error={}", path, err)
        raise HTTPException(404, detail="no such recording") from err
    try:
        info = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise HTTPException(404, detail="no such recording") from err
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise HTTPException(404, detail="no such recording (not a regular file)")
    return fd, info


def none_match(header: str | None, etag: str) -> bool:
    """Whether an If-None-Match header's condition fails for a file whose ETag is `etag`
    (RFC 9110 13.1.2: `*`, or a listed tag equal to it by the weak comparison): then a GET is
    answered 304 Not Modified, with no body."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)


def serve_file(path: Path, range_header: str | None, if_range: str | None, *,
               if_none_match: str | None = None, limit: int | None = None,
               patches: Sequence[tuple[int, bytes]] = ()) -> Response:
    """The file at `path` (already checked), whole or one byte range; 304 when the client's
    copy (If-None-Match) is current, before any range is looked at (RFC 9110 13.2.2).

    `patches` (file offset, bytes) replace the file's bytes there in what is sent (the HLS
    route's tfdt times); they never change a length.

    The file is opened before answering, so a merge that removes it meanwhile cannot turn a
    checked request into an error halfway through. The descriptor is closed when the body
    is sent, when the client goes away, or at once when there is nothing to send.
    """
    fd, info = open_regular(path)
    file = _OpenFile(fd)
    try:
        size = info.st_size if limit is None else min(info.st_size, limit)
        etag = f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{size:x}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag,
                   "Last-Modified": formatdate(info.st_mtime, usegmt=True)}
        if none_match(if_none_match, etag):
            file.close()
            return Response(status_code=304, headers=headers)
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
        if length <= WHOLE_BODY_BYTES:
            try:
                body = b"".join(_chunks(file, first, length, patches))  # closes the file
            finally:
                file.close()
            if len(body) < length and wanted is not None:  # the file shrank meanwhile
                headers["Content-Range"] = f"bytes {first}-{first + len(body) - 1}/{size}"
            headers["Content-Length"] = str(len(body))
            return Response(body, status_code=status_code, media_type="video/mp4", headers=headers)
        return StreamingResponse(_chunks(file, first, length, patches), status_code=status_code,
                                 media_type="video/mp4", headers=headers,
                                 background=BackgroundTask(file.close))
    except BaseException:
        file.close()
        raise


def serve_descriptor(fd: int, length: int, *, media_type: str, headers: dict[str, str]) -> Response:
    """`length` bytes from the start of open descriptor `fd` (whose name may already be
    gone, such as a removed temporary file), closed once sent or abandoned."""
    file = _OpenFile(fd)
    return StreamingResponse(_chunks(file, 0, length), media_type=media_type,
                             headers={**headers, "Content-Length": str(length)},
                             background=BackgroundTask(file.close))


class _OpenFile:
    """A descriptor closed exactly once, whichever of the body and the response ends first.

    The body's reads run on a worker thread and the response's end on another; a close that
    arrives during a read waits for it, so a read never meets a descriptor number that has
    been closed (and perhaps reused for another file).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._closed = False

    def pread(self, size: int, offset: int) -> bytes:
        with self._lock:
            if self._closed:
                return b""
            return os.pread(self._fd, size, offset)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


def _patched(chunk: bytes, offset: int, patches: Sequence[tuple[int, bytes]]) -> bytes:
    """`chunk` (read at `offset`) with the parts of `patches` that fall inside it laid over."""
    end = offset + len(chunk)
    out: bytearray | None = None
    for at, data in patches:
        if at >= end or at + len(data) <= offset:
            continue
        if out is None:
            out = bytearray(chunk)
        lo, hi = max(at, offset), min(at + len(data), end)
        out[lo - offset : hi - offset] = data[lo - at : hi - at]
    return chunk if out is None else bytes(out)


def _chunks(file: _OpenFile, first: int, length: int,
            patches: Sequence[tuple[int, bytes]] = ()) -> Iterator[bytes]:
    try:
        offset, left = first, length
        while left > 0:
            chunk = file.pread(min(RANGE_CHUNK_BYTES, left), offset)
            if not chunk:
                break  # the file shrank (or the response ended); the client sees a short body
            if patches:
                chunk = _patched(chunk, offset, patches)
            offset += len(chunk)
            left -= len(chunk)
            yield chunk
    finally:
        file.close()
