"""A small file's bytes, read only when it is a regular file and only up to a bound.

The config file and the API token are named by whoever edits the SD card or the command line.
A FIFO there would block a plain open() forever, /dev/zero or /dev/urandom would be read
without end, so the file is opened without blocking, checked with fstat() before a byte is
read, and read at most `max_bytes` + 1 bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hw.errors import VigilError

_READ_CHUNK_BYTES = 64 * 1024


class FileRefused(VigilError, ValueError):
    """The file exists and could be opened, but is not one vigil reads: `reason` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def describe_kind(mode: int) -> str:
    """What a file of `mode` is, for a message: "a named pipe (FIFO)", "a character device"."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def read_regular_file(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes`.

    Raises OSError when it cannot be opened or read (IsADirectoryError for a directory, as a
    plain open would), FileRefused when it is a FIFO, device or socket, or larger than
    `max_bytes`. Never blocks on a FIFO and never reads more than `max_bytes` + 1 bytes.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing only
            kind = _kind_without_opening(path)
            if kind is not None:
                raise FileRefused(path, f"is {kind}, not a regular file") from err
        raise
    except ValueError as err:  # a NUL byte in the name
        raise FileRefused(path, "the file name holds a NUL byte") from err
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise FileRefused(path, f"is {describe_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_READ_CHUNK_BYTES, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise FileRefused(path, f"is larger than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind_without_opening(path: Path) -> str | None:
    try:
        return describe_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None
