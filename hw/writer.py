"""Crash-safe segment files: fragmented MP4, a fragment per keyframe, fsynced as it lands.

A segment is written as `NAME.mp4.partial` and renamed to `NAME.mp4` (then its directory
is fsynced) when it closes. A power cut loses at most the fragment still being filled;
hw.recovery turns a leftover `.partial` into a closed segment at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
from loguru import logger

from hw.camera import EncodedPacket
from hw.errors import StorageError, StorageFull
from hw.footage import partial_path, segment_dir, segment_stem, unique_segment_path

MUX_TIME_BASE = Fraction(1, 90_000)
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+use_metadata_tags"
START_TAG = "vigil_start"
CLOCK_JUMP_SECONDS = 5.0
COPY_CHUNK_BYTES = 1 << 20

FileOpener = Callable[[Path], BinaryIO]


def open_exclusive(path: Path) -> BinaryIO:
    """Create `path` for writing, unbuffered; fail if it exists (nothing is overwritten).

    Opened read-write so that a segment whose directory is deleted under it can be read
    back from the still-open file and saved into a recreated directory.
    """
    return open(path, "xb+", buffering=0)


def copy_out(source: BinaryIO, destination: Path) -> int:
    """Copy an open file's whole content (even if unlinked) into a new durable file."""
    fd = source.fileno()
    size = os.fstat(fd).st_size
    offset = 0
    with open_exclusive(destination) as out:
        while offset < size:
            chunk = os.pread(fd, min(COPY_CHUNK_BYTES, size - offset), offset)
            if not chunk:
                break
            out.write(chunk)
            offset += len(chunk)
        os.fsync(out.fileno())
    return offset


def fsync_directory(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(directory: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry was created, so the tree survives a cut."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_directory(d.parent)


def storage_error(err: OSError, what: str) -> StorageError:
    """Translate an OSError at the storage boundary into vigil's tree."""
    cls = StorageFull if err.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    out = cls(err.errno, f"{what}: {err.strerror or err}")
    out.filename = err.filename
    return out


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    """A segment that is closed and durable on disk."""

    path: Path
    frames: int
    started_wallclock: float
    duration_seconds: float
    size_bytes: int


class _OpenSegment:
    def __init__(
        self, path: Path, packet: EncodedPacket, width: int, height: int, fps: float,
        opener: FileOpener,
    ) -> None:
        self.path = path
        self.partial = partial_path(path)
        self.start_timestamp = packet.timestamp
        self.start_wallclock = packet.wallclock
        self.last_timestamp = packet.timestamp
        self.frames = 0
        self.opened_monotonic = time.monotonic()
        self.file = opener(self.partial)
        try:
            self.container = av.open(
                self.file, "w", format="mp4",
                options={"movflags": MOVFLAGS, "flush_packets": "1"},
            )
            started = datetime.fromtimestamp(packet.wallclock, UTC)
            self.container.metadata["creation_time"] = started.isoformat(timespec="microseconds")
            self.container.metadata[START_TAG] = f"{packet.wallclock:.6f}"
            self.stream = self.container.add_mux_stream(
                "h264", rate=Fraction(fps).limit_denominator(1001), width=width, height=height
            )
            self.stream.time_base = MUX_TIME_BASE
        except BaseException:
            self.file.close()
            with contextlib.suppress(OSError):
                self.partial.unlink()  # nothing is in it yet
            raise
        self.frame_ticks = max(1, round(MUX_TIME_BASE.denominator / fps))

    def mux(self, packet: EncodedPacket) -> None:
        pts = round((packet.timestamp - self.start_timestamp) * MUX_TIME_BASE.denominator)
        av_packet = av.Packet(packet.data)
        av_packet.stream = self.stream
        av_packet.time_base = MUX_TIME_BASE
        av_packet.pts = av_packet.dts = pts
        av_packet.duration = self.frame_ticks
        av_packet.is_keyframe = packet.is_keyframe
        self.container.mux(av_packet)
        self.frames += 1
        self.last_timestamp = packet.timestamp

    def fsync(self) -> None:
        os.fsync(self.file.fileno())


class SegmentWriter:
    """Muxes H.264 packets into segment files under `root`, splitting at keyframes.

    A new segment starts at the first keyframe after `segment_seconds`, at an hour
    boundary (so hours merge cleanly), or after a wall-clock jump (an NTP sync): frames are
    never lost or repeated across a boundary. Storage failures raise StorageError or
    StorageFull; the writer is then dead and `abandon()` leaves the `.partial` for recovery.
    """

    def __init__(
        self,
        root: Path,
        *,
        width: int,
        height: int,
        fps: float,
        segment_seconds: float,
        fsync: bool = True,
        opener: FileOpener = open_exclusive,
        when_segment_closed: Callable[[ClosedSegment], None] | None = None,
        when_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.width, self.height, self.fps = width, height, fps
        self.segment_seconds = segment_seconds
        self.fsync_enabled = fsync
        self._opener = opener
        self.when_segment_closed = when_segment_closed
        self.when_error = when_error
        self._next_root: Path | None = None
        self._open: _OpenSegment | None = None
        self.segments_closed = 0
        self.last_closed: ClosedSegment | None = None
        self.packets_written = 0
        self.packets_skipped = 0
        self.bytes_written = 0
        self.is_dead = False

    def __repr__(self) -> str:
        where = self._open.partial.name if self._open else "no open segment"
        return f"<SegmentWriter root={self.root} {where} closed={self.segments_closed}>"

    @property
    def open_path(self) -> Path | None:
        """The `.partial` file being written, if any."""
        return self._open.partial if self._open else None

    @property
    def open_age_seconds(self) -> float | None:
        """Seconds since the open segment was created (monotonic clock), if one is open."""
        return time.monotonic() - self._open.opened_monotonic if self._open else None

    def write(self, packet: EncodedPacket) -> None:
        if self.is_dead:
            raise StorageError(errno.EIO, "segment writer is dead after a storage failure")
        try:
            self._write(packet)
        except OSError as err:
            self.is_dead = True
            raise storage_error(err, f"writing {self.open_path}") from err
        except av.FFmpegError as err:
            self.is_dead = True
            raise StorageError(errno.EIO, f"muxing into {self.open_path}: {err}") from err

    def _write(self, packet: EncodedPacket) -> None:
        seg = self._open
        if seg is None:
            if not packet.is_keyframe:
                self.packets_skipped += 1
                return
            seg = self._start(packet)
        elif packet.is_keyframe and self._should_split(seg, packet):
            self._finish()
            seg = self._start(packet)
        elif packet.timestamp <= seg.last_timestamp:
            self.packets_skipped += 1  # until the keyframe that starts a new segment
            return
        seg.mux(packet)
        self.packets_written += 1
        self.bytes_written += len(packet.data)
        if packet.is_keyframe and seg.frames > 1 and self.fsync_enabled:
            # Muxing a keyframe flushed the previous fragment to the file: make it durable.
            seg.fsync()

    def retarget(self, root: Path) -> None:
        """Record under `root` from the next keyframe on (a root that healed, or a fallback)."""
        self._next_root = Path(root)

    def _should_split(self, seg: _OpenSegment, packet: EncodedPacket) -> bool:
        if self._next_root is not None:
            self.root, self._next_root = self._next_root, None
            return True
        if packet.timestamp <= seg.last_timestamp:
            # A camera reopened across a loss whose clock started again: the segment cannot
            # go back in time, a new one starts at this keyframe.
            return True
        if not seg.partial.exists():
            # The directory (or the file) was deleted under us: close at this keyframe, so
            # the footage is copied out of the still-open file into a recreated directory.
            return True
        if packet.timestamp - seg.start_timestamp >= self.segment_seconds - 0.5 / self.fps:
            return True
        expected_wall = seg.start_wallclock + (packet.timestamp - seg.start_timestamp)
        if abs(packet.wallclock - expected_wall) > CLOCK_JUMP_SECONDS:
            return True
        return segment_dir(self.root, packet.wallclock) != segment_dir(
            self.root, seg.start_wallclock
        )

    def _start(self, packet: EncodedPacket) -> _OpenSegment:
        wallclock = packet.wallclock or time.time()
        packet.wallclock = wallclock
        directory = segment_dir(self.root, wallclock)
        make_dirs_durably(directory)
        path = unique_segment_path(directory, segment_stem(wallclock))
        seg = _OpenSegment(path, packet, self.width, self.height, self.fps, self._opener)
        if self.fsync_enabled:
            try:
                fsync_directory(directory)
            except OSError:
                # (EMFILE: no descriptor left for the directory.) The new file must not stay
                # open: the cleanup guard would refuse every recovery attempt while it is.
                self._discard(seg)
                raise
        self._open = seg
        return seg

    @staticmethod
    def _discard(seg: _OpenSegment) -> None:
        """Close a segment that holds nothing yet and remove its empty `.partial`."""
        for close in (seg.container.close, seg.file.close):
            with contextlib.suppress(OSError, av.FFmpegError):
                close()
        with contextlib.suppress(OSError):
            seg.partial.unlink()

    def _finish(self) -> ClosedSegment | None:
        seg = self._open
        if seg is None:
            return None
        self._open = None
        seg.container.close()
        if self.fsync_enabled:
            seg.fsync()
        if seg.frames == 0:
            seg.file.close()
            seg.partial.unlink(missing_ok=True)
            return None
        if seg.partial.exists():
            seg.file.close()
            os.rename(seg.partial, seg.path)
        else:
            self._save_orphan(seg)
        if self.fsync_enabled:
            fsync_directory(seg.path.parent)
        duration = seg.last_timestamp - seg.start_timestamp + 1.0 / self.fps
        closed = ClosedSegment(
            seg.path, seg.frames, seg.start_wallclock, duration, seg.path.stat().st_size
        )
        self.segments_closed += 1
        self.last_closed = closed
        logger.info("segment closed path={} frames={} seconds={:.1f} bytes={}",
                    closed.path, closed.frames, closed.duration_seconds, closed.size_bytes)
        if self.when_segment_closed is not None:
            self.when_segment_closed(closed)
        return closed

    def _save_orphan(self, seg: _OpenSegment) -> None:
        """The segment's file was unlinked while open: write its content out again."""
        make_dirs_durably(seg.path.parent)
        seg.path = unique_segment_path(seg.path.parent, seg.path.name.removesuffix(".mp4"))
        try:
            copied = copy_out(seg.file, seg.path)
        finally:
            seg.file.close()
        logger.warning("segment directory vanished while recording; recreated it and saved "
                       "the segment path={} bytes={}", seg.path, copied)
        if self.when_error is not None:
            self.when_error("directory_missing", f"{seg.partial.parent} was deleted while recording")

    def close(self) -> ClosedSegment | None:
        """Close the open segment (idempotent); returns it, or None if nothing was open."""
        if self.is_dead:
            self.abandon()
            return None
        try:
            return self._finish()
        except OSError as err:
            self.is_dead = True
            self.abandon()
            raise storage_error(err, "closing segment") from err

    def abandon(self) -> Path | None:
        """Drop the open segment without finishing it; its `.partial` stays for recovery."""
        seg, self._open = self._open, None
        if seg is None:
            return None
        # The storage is failing: what already reached the disk is what we keep.
        for close in (seg.container.close, seg.file.close):
            with contextlib.suppress(OSError, av.FFmpegError):
                close()
        return seg.partial
