"""Turning `.partial` segments left by a crash or power cut into closed, playable segments.

A fragmented MP4 is `ftyp`, `moov`, then `moof`+`mdat` pairs. Whatever follows the last
complete pair is the fragment that was being written when the power went: it is cut off,
the file is fsynced and renamed to its closed name. A file with no complete fragment holds
no playable video and is removed. Only files vigil writes are touched: a segment name in an
hour folder (never through a link) whose content is vigil's fragmented MP4 (`ftyp`, then a
`moov` with `mvex`); anything else is someone else's and is left alone.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
from loguru import logger

from hw.footage import (
    SEGMENT_SUFFIX,
    final_path,
    is_partial_name,
    is_real_directory,
    partial_segments,
    unique_segment_path,
)
from hw.integrity import CHAIN_TAG, TIME_BASE, ManifestBuilder, Piece, Signer, pieces, write_manifest
from hw.writer import START_TAG, fsync_directory

HEADER_BYTES = 8
LARGE_HEADER_BYTES = 16


@dataclass(frozen=True, slots=True)
class RecoveredPartial:
    """What recovery did with one `.partial` file."""

    partial: Path
    result: Path | None
    kept_bytes: int
    dropped_bytes: int
    fragments: int


def playable_length(path: Path) -> tuple[int, int]:
    """(bytes up to the end of the last complete fragment, complete fragments)."""
    size = path.stat().st_size
    kept, fragments, seen_moov, pending_moof = 0, 0, False, False
    with open(path, "rb") as f:
        offset = 0
        while offset + HEADER_BYTES <= size:
            f.seek(offset)
            head = f.read(LARGE_HEADER_BYTES)
            box_size, kind = struct.unpack(">I4s", head[:HEADER_BYTES])
            if box_size == 1 and len(head) == LARGE_HEADER_BYTES:
                box_size = struct.unpack(">Q", head[HEADER_BYTES:])[0]
            if box_size < HEADER_BYTES or offset + box_size > size:
                break  # a box cut short by the crash
            offset += box_size
            if kind == b"moov":
                seen_moov = True
            elif kind == b"moof":
                pending_moof = True
            elif kind == b"mdat" and pending_moof and seen_moov:
                pending_moof = False
                fragments += 1
                kept = offset
    return kept, fragments


def is_vigil_fragmented_mp4(path: Path) -> bool:
    """Whether `path` starts the way vigil's segments do: `ftyp`, then a fragmented `moov`.

    A file cut before its `moov` was complete counts (a crash right after creation); one
    whose media comes before a `moov`, or whose `moov` has no `mvex` (not fragmented), is
    an ordinary MP4 that another program wrote.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            return True  # torn at creation: nothing of anyone's is in it
        if head[4:8] != b"ftyp":
            return False
        offset = struct.unpack(">I", head[:4])[0]
        while offset + HEADER_BYTES <= size:
            f.seek(offset)
            box_size, kind = struct.unpack(">I4s", f.read(HEADER_BYTES))
            if kind == b"moov":
                if box_size < HEADER_BYTES or offset + box_size > size:
                    return True  # the moov itself was being written
                return b"mvex" in f.read(min(box_size - HEADER_BYTES, 1 << 20))
            if kind in (b"mdat", b"moof") or box_size < HEADER_BYTES:
                return False
            offset += box_size
    return True


Spans = list[tuple[int, int]]  # each frame's (start, end) in the chain's ticks (hw.integrity.TIME_BASE)


def chain_start(path: Path) -> tuple[bytes, float, Spans] | None:
    """(the link `path` continues from, its start tag, its frames' spans) of a segment written
    with integrity on; None without the `vigil_chain` tag. av.FFmpegError, ValueError as reading raises."""
    with av.open(str(path)) as container:
        tags = container.metadata
        if CHAIN_TAG not in tags or START_TAG not in tags:
            return None
        prev, base = bytes.fromhex(tags[CHAIN_TAG]), float(tags[START_TAG])
        stream = container.streams.video[0]
        time_base = stream.time_base
        assert time_base is not None
        spans = [(round(p.pts * time_base * TIME_BASE), round((p.pts + (p.duration or 0))
                  * time_base * TIME_BASE)) for p in container.demux(stream) if p.pts is not None]
    return prev, base, spans


def add_pieces(builder: ManifestBuilder, found: Iterable[Piece], spans: Spans, index: int = 0) -> int:
    """Chain `found` (the init section, then fragments in order) into `builder`, each fragment
    spanning its frames in `spans` from `index` on; returns the index after the last."""
    for piece in found:
        if piece.frames == 0:
            builder.add(piece, 0, 0)
            continue
        group = spans[index:index + piece.frames]
        if not group:
            break
        index += piece.frames
        builder.add(piece, group[0][0], group[-1][1])
    return index


def rebuild_manifest(path: Path, signer: Signer, *, fsync: bool = True,
                     footage: Path | None = None) -> bool:
    """Hash the whole fragments of `path` (a trimmed segment) into the manifest of `footage`
    (default: `path`), continuing from the link the segment names in its `vigil_chain` tag.

    The spans come from the fragments' own timestamps, as the writer computed them. False
    (no manifest) for a segment without the tag: one written before integrity was on.
    """
    try:
        chained = chain_start(path)
    except (av.FFmpegError, ValueError, IndexError) as err:
        logger.error("cannot rebuild the manifest of path={}: {}", path, err)
        return False
    if chained is None:
        return False
    prev, base, spans = chained
    found, _ = pieces(path.read_bytes(), 0, with_init=True)
    builder = ManifestBuilder(prev, base)
    add_pieces(builder, found, spans)
    data_size = path.stat().st_size
    target = footage or path
    write_manifest(target, builder.manifest(target, data_size, signer, None), fsync=fsync)
    return True


def recover_partial(partial: Path, *, signer: Signer | None = None) -> RecoveredPartial:
    """Trim one `.partial` to its last whole fragment and close it under its final name.

    With a `signer`, its whole fragments are hashed into a manifest first (`rebuild_manifest`).
    """
    size = partial.stat().st_size
    if not is_vigil_fragmented_mp4(partial):
        logger.error("partial segment is not a vigil fragmented MP4, left alone path={}", partial)
        return RecoveredPartial(partial, None, size, 0, 0)
    kept, fragments = playable_length(partial)
    if fragments == 0:
        partial.unlink()
        fsync_directory(partial.parent)
        logger.warning("partial segment held no whole fragment, removed path={} bytes={}",
                       partial, size)
        return RecoveredPartial(partial, None, 0, size, 0)
    with open(partial, "r+b") as f:
        f.truncate(kept)
        os.fsync(f.fileno())
    final = final_path(partial)
    if final.exists() or final.is_symlink():
        final = unique_segment_path(partial.parent, final.name.removesuffix(SEGMENT_SUFFIX))
    if signer is not None:
        rebuild_manifest(partial, signer, footage=final)
    os.rename(partial, final)
    fsync_directory(partial.parent)
    logger.info("recovered partial segment path={} fragments={} kept_bytes={} dropped_bytes={}",
                final, fragments, kept, size - kept)
    return RecoveredPartial(partial, final, kept, size - kept, fragments)


def recover_partials(root: Path, *, skip: set[Path] | None = None,
                     signer: Signer | None = None) -> list[RecoveredPartial]:
    """Recover every `.partial` segment under `root` except those in `skip` (open right now)."""
    results = []
    for partial in partial_segments(root):
        if skip and partial in skip:
            continue
        try:
            results.append(recover_partial(partial, signer=signer))
        except OSError as err:
            logger.error("could not recover partial segment path={} error={}; left in place",
                         partial, err)
    return results


class CloseOuts:
    """`.partial` segments whose close-out the storage refused (ENOSPC, EIO, a read-only
    card), retried by `retry()` until it takes them, rather than at the next start.

    Thread-safe: the controller thread adds, the housekeeping thread retries. A path is
    forgotten once it is closed out, or once its hour folder is there without it (someone
    else closed or removed it); while the folder itself is missing (a card unmounted) it is
    kept, so a card that comes back gets its segment closed out.
    """

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer
        self._lock = threading.Lock()
        self._pending: list[Path] = []
        self.closed_out = 0

    def __repr__(self) -> str:
        return f"<CloseOuts pending={len(self._pending)} closed_out={self.closed_out}>"

    def add(self, partial: Path) -> None:
        """Remember one `.partial` vigil wrote (any other name is ignored)."""
        if not is_partial_name(partial.name):
            return
        with self._lock:
            if partial not in self._pending:
                self._pending.append(partial)
        logger.warning("partial segment could not be closed out yet path={}; retrying until "
                       "the storage allows it", partial)

    @property
    def pending(self) -> tuple[Path, ...]:
        with self._lock:
            return tuple(self._pending)

    def retry(self) -> list[RecoveredPartial]:
        """Try every pending close-out once; what was closed out now."""
        done: list[RecoveredPartial] = []
        for partial in self.pending:
            try:
                result = recover_partial(partial, signer=self.signer)
            except FileNotFoundError:
                if is_real_directory(partial.parent):
                    self._forget(partial)
                continue
            except OSError as err:
                logger.debug("close-out still refused path={} error={}", partial, err)
                continue
            self._forget(partial)
            if result.result is not None:
                self.closed_out += 1
                done.append(result)
        return done

    def _forget(self, partial: Path) -> None:
        with self._lock:
            if partial in self._pending:
                self._pending.remove(partial)
