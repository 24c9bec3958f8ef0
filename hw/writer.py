"""Crash-safe segment files: fragmented MP4, a fragment per keyframe, fsynced as it lands.

A segment is written as `NAME.mp4.partial` and renamed to `NAME.mp4` (then its directory
is fsynced) when it closes. A power cut loses at most the fragment still being filled;
hw.recovery turns a leftover `.partial` into a closed segment at the next start.

A full disk (ENOSPC, EDQUOT: out of bytes or inodes) does not kill the writer: what the
disk already holds is closed out at once (trimmed to its whole fragments and renamed), and
the packets that were not yet durable, the open fragment's, are held in memory with every
packet that follows, while `when_error("storage_held", ...)` asks for room. They are
written out, in order, as soon as the disk takes them again (or a fallback root does), so
a full disk that retention can clear loses nothing. Only when the held footage outgrows
HOLD_SECONDS or HOLD_MAX_BYTES does the writer give up and raise StorageFull.
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
from hw.footage import SEGMENT_SUFFIX, partial_path, segment_dir, segment_stem, unique_segment_path
from hw.integrity import CHAIN_TAG, Chain, ManifestBuilder, Signer, pieces, write_manifest

MUX_TIME_BASE = Fraction(1, 90_000)
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+use_metadata_tags"
START_TAG = "vigil_start"
CLOCK_JUMP_SECONDS = 5.0
COPY_CHUNK_BYTES = 1 << 20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
HOLD_CATEGORY = "storage_held"  # the ledger's category for "disk full, footage held in memory"
# How much footage (camera time, and bytes) a full disk may make the writer hold in memory
# before it gives up; beyond that the storage is not coming back soon.
HOLD_SECONDS = 10.0
HOLD_MAX_BYTES = 64 * 1024 * 1024
HOLD_RETRY_SECONDS = 0.25  # how often a holding writer looks for room again
HOLD_REPORT_SECONDS = 1.0  # a holding writer asks for room again at most this often
# After this much held footage without room on its root, the writer tries a fallback root.
HOLD_FALLBACK_SECONDS = 2.0
# Room a root needs before a holding writer tries it: a fragment, and inodes for a segment
# file and its folders.
RESUME_MIN_FREE_BYTES = 1024 * 1024
RESUME_MIN_FREE_INODES = 3

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
    cls = StorageFull if err.errno in FULL_ERRNOS else StorageError
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
        opener: FileOpener, chain_head: bytes | None = None,
    ) -> None:
        self.path = path
        self.partial = partial_path(path)
        self.start_timestamp = packet.timestamp
        self.start_wallclock = packet.wallclock
        self.last_timestamp = packet.timestamp
        self.frames = 0
        # Bytes of the file known to be on disk: the header and every fragment before the
        # last fsync. A failure keeps exactly these; the packets after them are rewritten.
        self.durable_bytes = 0
        self.opened_monotonic = time.monotonic()
        self.file = opener(self.partial)
        try:
            self.container = av.open(
                self.file, "w", format="mp4",
                options={"movflags": MOVFLAGS, "flush_packets": "1"},
            )
            started = datetime.fromtimestamp(packet.wallclock, UTC)
            self.container.metadata["creation_time"] = started.isoformat(timespec="microseconds")
            start_tag = f"{packet.wallclock:.6f}"
            self.container.metadata[START_TAG] = start_tag
            # The chain: the link this segment continues from, in the file itself, so that
            # recovery can rebuild the manifest of a segment a crash left unfinished.
            self.builder: ManifestBuilder | None = None
            if chain_head is not None:
                self.container.metadata[CHAIN_TAG] = chain_head.hex()
                self.builder = ManifestBuilder(chain_head, float(start_tag))
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
        self.hashed_bytes = 0  # how much of the file the chain covers
        self.fragment_start_ticks = 0  # the open fragment's first pts
        self.previous_ticks = self.last_ticks = 0  # the pts muxed before the last, and the last

    def hash_durable(self, size: int, end_ticks: int) -> bytes | None:
        """Hash what became durable since the last call (the init section, the finished
        fragment) into the chain; returns the new head. Bytes from the page cache."""
        if self.builder is None or size <= self.hashed_bytes:
            return None
        data = os.pread(self.file.fileno(), size - self.hashed_bytes, self.hashed_bytes)
        found, covered = pieces(data, self.hashed_bytes, with_init=self.hashed_bytes == 0)
        for piece in found:
            if piece.frames == 0:
                self.builder.add(piece, 0, 0)
            else:
                self.builder.add(piece, self.fragment_start_ticks, end_ticks)
        self.hashed_bytes += covered
        return self.builder.head

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
        self.previous_ticks, self.last_ticks = self.last_ticks, pts

    def fsync(self) -> None:
        os.fsync(self.file.fileno())

    def discard_undurable(self, fsync: bool) -> None:
        """Cut the file back to its durable bytes and close it: a failure mid-fragment
        leaves neither a torn fragment nor one that will be written again elsewhere."""
        try:
            os.ftruncate(self.file.fileno(), self.durable_bytes)
            if fsync:
                os.fsync(self.file.fileno())
        except ValueError:  # the file was closed already (a failed close): cut it by name
            with contextlib.suppress(OSError):
                os.truncate(self.partial, self.durable_bytes)
        except OSError:
            pass
        # The file first: the container's close then cannot add anything to it.
        for close in (self.file.close, self.container.close):
            with contextlib.suppress(Exception):
                close()


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
        fallback_roots: tuple[Path, ...] = (),
        hold_on_full: bool = True,
        signer: Signer | None = None,
        chain: Chain | None = None,
    ) -> None:
        self.root = Path(root)
        # Integrity (hw.integrity): with a signer, every fragment is chained and each closed
        # segment gets a signed manifest; the chain is shared across writers of one daemon.
        self.signer = signer
        self.chain = chain if chain is not None else Chain()
        # Where footage goes when `root` becomes unusable mid-run (a segment whose folder
        # vanished, a full disk that nothing clears): the config's fallback roots.
        self.fallback_roots = tuple(Path(r) for r in fallback_roots)
        self.hold_on_full = hold_on_full
        self.width, self.height, self.fps = width, height, fps
        self.segment_seconds = segment_seconds
        self.fsync_enabled = fsync
        self._opener = opener
        self.when_segment_closed = when_segment_closed
        self.when_error = when_error
        self._next_root: Path | None = None
        self._next_stream: tuple[int, int, float] | None = None
        self._open: _OpenSegment | None = None
        self.segments_closed = 0
        self.last_closed: ClosedSegment | None = None
        self.packets_written = 0  # every mux: held packets written out again count twice
        self.packets_skipped = 0
        self.bytes_written = 0
        self.is_dead = False
        # Packets not yet durable, oldest first, from the keyframe that opened the fragment
        # the muxer is filling: what a storage failure right now would lose.
        self._unsaved: list[EncodedPacket] = []
        # A full disk: the footage held in memory (from a keyframe on), until room returns.
        self._held: list[EncodedPacket] | None = None
        self._held_bytes = 0
        self._held_for: Path | None = None
        self._next_retry = 0.0
        self._next_report = 0.0
        self.holds = 0  # how often a full disk made the writer hold footage
        self.packets_lost = 0  # packets given up (held too long, or dropped while dead)
        # `.partial` files this writer stopped writing and could not close out (the storage
        # refused the trim or the rename): someone retries them (hw.recovery.CloseOuts).
        self.unclosed: list[Path] = []

    def __repr__(self) -> str:
        where = self._open.partial.name if self._open else "no open segment"
        return f"<SegmentWriter root={self.root} {where} closed={self.segments_closed}>"

    @property
    def open_path(self) -> Path | None:
        """The `.partial` file being written, if any (while holding: the one the held
        footage belongs to, so its hour is neither merged nor pruned)."""
        if self._open is not None:
            return self._open.partial
        return self._held_for if self._held is not None else None

    @property
    def is_holding(self) -> bool:
        """A full disk: footage is held in memory until the storage takes it again."""
        return self._held is not None

    @property
    def target_root(self) -> Path:
        """The root footage goes to from the next keyframe on."""
        return self._next_root or self.root

    @property
    def open_age_seconds(self) -> float | None:
        """Seconds since the open segment was created (monotonic clock), if one is open."""
        return time.monotonic() - self._open.opened_monotonic if self._open else None

    def write(self, packet: EncodedPacket) -> None:
        if self.is_dead:
            raise StorageError(errno.EIO, "segment writer is dead after a storage failure")
        if self._held is not None:
            self._hold(packet)
            return
        try:
            self._write(packet)
        except OSError as err:
            if self.hold_on_full and err.errno in FULL_ERRNOS:
                self._begin_hold(err)
                return
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
            self._unsaved = [packet]
            seg = self._start(packet)
        elif packet.is_keyframe and self._should_split(seg, packet):
            self._unsaved.append(packet)
            self._finish()
            self._unsaved = [packet]
            seg = self._start(packet)
        elif packet.timestamp <= seg.last_timestamp:
            self.packets_skipped += 1  # until the keyframe that starts a new segment
            return
        else:
            self._unsaved.append(packet)
        seg.mux(packet)
        self.packets_written += 1
        self.bytes_written += len(packet.data)
        if packet.is_keyframe and seg.frames > 1:
            # Muxing a keyframe flushed the previous fragment to the file: make it durable.
            if self.fsync_enabled:
                seg.fsync()
            seg.durable_bytes = os.fstat(seg.file.fileno()).st_size
            self._chain(seg, seg.durable_bytes, seg.previous_ticks + seg.frame_ticks)
            seg.fragment_start_ticks = seg.last_ticks
            self._unsaved = [packet]

    def _chain(self, seg: _OpenSegment, size: int, end_ticks: int) -> None:
        head = seg.hash_durable(size, end_ticks)
        if head is not None:
            self.chain.head = head

    # -- a full disk: hold the footage in memory, write it out once there is room ----

    def _begin_hold(self, err: OSError) -> None:
        """The disk is full: keep its whole fragments, hold what was not yet durable."""
        seg, self._open = self._open, None
        held, self._unsaved = self._unsaved, []
        if seg is not None:
            seg.discard_undurable(self.fsync_enabled)
            self._close_out(seg.partial)
        first = held[0]
        self._held_for = partial_path(segment_dir(self.root, first.wallclock)
                                      / f"{segment_stem(first.wallclock)}.mp4")
        self._held = held
        self._held_bytes = sum(len(p.data) for p in held)
        now = time.monotonic()
        self._next_retry = now + HOLD_RETRY_SECONDS
        if now >= self._next_report:
            self._next_report = now + HOLD_REPORT_SECONDS
            self.holds += 1
            logger.warning("storage full under {} ({}); holding {} packets in memory until there "
                           "is room", self.root, err.strerror or err, len(held))
            if self.when_error is not None:
                self.when_error(HOLD_CATEGORY, f"{self.root}: {err.strerror or err}; footage "
                                f"held in memory until there is room")

    def _hold(self, packet: EncodedPacket) -> None:
        held = self._held
        assert held is not None
        held.append(packet)
        self._held_bytes += len(packet.data)
        seconds = packet.timestamp - held[0].timestamp
        if seconds > HOLD_SECONDS or self._held_bytes > HOLD_MAX_BYTES:
            self._give_up_hold(f"the disk stayed full for {seconds:.1f}s of footage "
                               f"({self._held_bytes / 2**20:.1f} MiB held)")
        if time.monotonic() >= self._next_retry:
            self._next_retry = time.monotonic() + HOLD_RETRY_SECONDS
            self._resume(force=False)

    def _give_up_hold(self, why: str) -> None:
        held, self._held = self._held or [], None
        self.packets_lost += len(held)
        self.is_dead = True
        logger.error("giving up on the full disk: {}; {} held packets are lost", why, len(held))
        raise StorageFull(errno.ENOSPC, f"storage full under {self.root}: {why}; "
                          f"{len(held)} held packets lost")

    def _has_room(self, root: Path) -> bool:
        try:
            st = os.statvfs(root)
        except OSError:
            return False
        if st.f_bavail * st.f_frsize < RESUME_MIN_FREE_BYTES:
            return False
        return st.f_files == 0 or st.f_favail >= RESUME_MIN_FREE_INODES

    def _room_for_held(self) -> bool:
        """Whether a root has room for the held footage; moves to a fallback when the
        root has had none for HOLD_FALLBACK_SECONDS of footage."""
        if self._next_root is not None:
            self.root, self._next_root = self._next_root, None
        if self._has_room(self.root):
            return True
        held = self._held or []
        if not held or held[-1].timestamp - held[0].timestamp < HOLD_FALLBACK_SECONDS:
            return False
        for fallback in self.fallback_roots:
            if fallback != self.root and self._has_room(fallback):
                logger.warning("storage under {} still full; writing the held footage to fallback "
                               "root {}", self.root, fallback)
                if self.when_error is not None:
                    self.when_error("directory_missing", f"{self.root} stayed full; recording to "
                                    f"fallback root {fallback}")
                self.root = fallback
                return True
        return False

    def _resume(self, *, force: bool) -> None:
        """Write the held footage out, in order; whatever the disk refuses is held again."""
        if not force and not self._room_for_held():
            return
        backlog, self._held = self._held or [], None
        for i, packet in enumerate(backlog):
            try:
                self._write(packet)
            except OSError as err:
                if err.errno not in FULL_ERRNOS:
                    self.packets_lost += len(backlog) - i
                    self.is_dead = True
                    raise storage_error(err, f"writing held footage to {self.open_path}") from err
                self._begin_hold(err)
                assert self._held is not None
                self._held.extend(backlog[i + 1:])
                self._held_bytes = sum(len(p.data) for p in self._held)
                return
            except av.FFmpegError as err:
                self.packets_lost += len(backlog) - i
                self.is_dead = True
                raise StorageError(errno.EIO, f"muxing held footage: {err}") from err
        self._held_for = None
        logger.info("storage has room again; wrote {} held packets to {}", len(backlog),
                    self.open_path)

    def _close_out(self, partial: Path) -> None:
        """Close out a `.partial` this writer stopped writing; remember it if that fails."""
        from hw.recovery import recover_partial  # hw.recovery builds on this module

        try:
            recover_partial(partial, signer=self.signer)
        except FileNotFoundError:
            return
        except OSError as err:
            logger.error("could not close out partial={} error={}; retried later", partial, err)
            self.unclosed.append(partial)

    def retarget(self, root: Path) -> None:
        """Record under `root` from the next keyframe on (a root that healed, or a fallback)."""
        self._next_root = Path(root)

    def restream(self, width: int, height: int, fps: float) -> None:
        """Start a new segment at the next keyframe, for a stream of these parameters (a
        quality step: hw.adaptive); each segment holds one stream, so both halves decode."""
        if self._open is None:
            self.width, self.height, self.fps = width, height, fps
        else:
            self._next_stream = (width, height, fps)

    def _should_split(self, seg: _OpenSegment, packet: EncodedPacket) -> bool:
        if self._next_stream is not None:
            self.width, self.height, self.fps = self._next_stream
            self._next_stream = None
            if self._next_root is not None:
                self.root, self._next_root = self._next_root, None
            return True
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
        try:
            return self._start_in(self.root, packet)
        except OSError as err:
            if err.errno in FULL_ERRNOS or not self.fallback_roots:
                raise
            failed = err
        # The root cannot take a new segment (replaced by a file, read-only): a fallback can.
        for root in self.fallback_roots:
            if root == self.root:
                continue
            try:
                seg = self._start_in(root, packet)
            except OSError:
                continue
            logger.warning("recording root {} unusable ({}); recording to fallback root {}",
                           self.root, failed.strerror or failed, root)
            if self.when_error is not None:
                self.when_error("directory_missing", f"{self.root} unusable "
                                f"({failed.strerror or failed}); recording to fallback root {root}")
            self.root = root
            return seg
        raise failed

    def _start_in(self, root: Path, packet: EncodedPacket) -> _OpenSegment:
        wallclock = packet.wallclock or time.time()
        packet.wallclock = wallclock
        directory = segment_dir(root, wallclock)
        make_dirs_durably(directory)
        path = unique_segment_path(directory, segment_stem(wallclock))
        seg = _OpenSegment(path, packet, self.width, self.height, self.fps, self._opener,
                           chain_head=self.chain.head if self.signer is not None else None)
        if self.fsync_enabled:
            try:
                fsync_directory(directory)
            except OSError:
                seg.discard_undurable(fsync=False)
                with contextlib.suppress(OSError):
                    seg.partial.unlink()
                raise
        self._open = seg
        return seg

    def _finish(self) -> ClosedSegment | None:
        seg = self._open
        if seg is None:
            return None
        # The segment stays open until it is renamed or saved: a failure before that leaves
        # it to the caller (held on a full disk, abandoned otherwise) with its durable bytes.
        seg.container.close()
        if self.fsync_enabled:
            seg.fsync()
        if seg.frames == 0:
            self._open = None
            seg.file.close()
            seg.partial.unlink(missing_ok=True)
            return None
        size = os.fstat(seg.file.fileno()).st_size
        self._chain(seg, size, seg.last_ticks + seg.frame_ticks)
        if seg.partial.exists():
            self._write_manifest(seg, size)  # before the rename: a closed segment has one
            seg.file.close()
            os.rename(seg.partial, seg.path)
        else:
            self._save_orphan(seg)
            self._write_manifest(seg, size)
        self._open = None
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

    def _write_manifest(self, seg: _OpenSegment, size: int) -> None:
        if seg.builder is None or self.signer is None:
            return
        manifest = seg.builder.manifest(seg.path, size, self.signer, self.chain.take_continues_from())
        write_manifest(seg.path, manifest, fsync=self.fsync_enabled)

    def _save_orphan(self, seg: _OpenSegment) -> None:
        """The segment's file was unlinked while open: write its content out again, into
        its recreated folder, or into a fallback root when the root itself is unusable (a
        regular file or a read-only mount where the folder was); recording goes on there."""
        stem = seg.path.name.removesuffix(SEGMENT_SUFFIX)
        failures = []
        for root in (self.root, *(r for r in self.fallback_roots if r != self.root)):
            directory = segment_dir(root, seg.start_wallclock)
            try:
                make_dirs_durably(directory)
                path = unique_segment_path(directory, stem)
                copied = copy_out(seg.file, path)
            except OSError as err:
                failures.append(f"{directory}: {err.strerror or err}")
                continue
            seg.file.close()
            seg.path = path
            moved = root != self.root
            if moved:
                self.root, self._next_root = root, None
            logger.warning("segment directory vanished while recording; saved the segment "
                           "path={} bytes={}{}", path, copied,
                           f" in fallback root {root} (could not: {'; '.join(failures)})" if moved
                           else " in its recreated folder")
            if self.when_error is not None:
                self.when_error("directory_missing", f"{seg.partial.parent} was deleted while "
                                f"recording" + (f"; recording to fallback root {root}" if moved else ""))
            return
        raise OSError(errno.EIO, f"the segment's folder vanished and no root took its copy: "
                      f"{'; '.join(failures)}")

    def close(self) -> ClosedSegment | None:
        """Close the open segment (idempotent); returns it, or None if nothing was open.

        Footage held for a full disk is written out first; StorageFull if the disk still
        refuses it (it is lost then, and counted in `packets_lost`).
        """
        if self.is_dead:
            self.abandon()
            return None
        if self._held is not None:
            try:
                self._resume(force=True)
            except StorageError:
                self.abandon()
                raise
            if self._held is not None:
                self._give_up_hold("the disk was still full when the segment closed")
        try:
            return self._finish()
        except OSError as err:
            self.is_dead = True
            self.abandon()
            raise storage_error(err, "closing segment") from err

    def abandon(self) -> Path | None:
        """Drop the open segment without finishing it; its `.partial` stays for recovery."""
        if self._held is not None:
            logger.error("dropping {} packets held for a full disk", len(self._held))
            self.packets_lost += len(self._held)
            self._held, self._held_for = None, None
        seg, self._open = self._open, None
        if seg is None:
            return None
        # The storage is failing: what already reached the disk is what we keep.
        for close in (seg.container.close, seg.file.close):
            with contextlib.suppress(OSError, av.FFmpegError):
                close()
        return seg.partial
