"""Clip export: one MP4 of a wall-clock span, stream-copied from whatever files hold it.

The span may cross segments, hours (a merged hour, then the next hour's segments) and the
segment still being written. Packets are copied, never re-encoded, and placed at their own
wall-clock time relative to the clip's first frame, so a gap in the recording (a recovery,
a restart) stays a gap in the clip's timestamps. The clip starts at the keyframe at or
before `start` (a decoder needs it; when `start` falls in a gap, the first keyframe after
it) and ends with the last frame that starts before `end`; the exact span covered comes
back in the result. Which frames are in the span goes by each file's own clock, as the spans
index counts them: a clip cut at a span's end as the index lists it holds that span's last
frame, wherever it began.

Files are found through the spans index (hw.footage names only, never through a link).
The open segment is never read where the writer is writing: its whole fragments are first
copied to a private file (as hw/recovery.py `playable_length` counts them), and that copy
is read. The reading pieces are the hourly merge's (controller/storage/merge.py): the
`vigil_start` tag gives each file's wall clock, and the output is the same faststart MP4.

A clip carries proof of where it came from (`clip_manifest`, hw.integrity's format, kind
"clip"): for each segment its frames came from, the links of that segment's manifest that
cover the clip's span (with the link before them, so they chain) and that manifest's
signature; the clip's own SHA-256 and size; signed with the unit's key when there is one.
Stream copy keeps each frame's bytes, so `vigil verify CLIP` checks the clip's frames
against the recorded fragments' payload hashes too (controller/verify.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from loguru import logger

from controller.storage.merge import MOVFLAGS, start_wallclock
from controller.surfaces import fmp4
from controller.surfaces.spans import (
    GAP_SECONDS,
    Span,
    TimelineCache,
    candidates,
    join_runs,
    nearest_spans,
    overlapping,
)
from hw.errors import VigilError
from hw.footage import final_path
from hw.integrity import (
    FORMAT,
    ManifestBuilder,
    Piece,
    Signer,
    pieces,
    read_file_range,
    read_manifest,
    sha256_file,
    sign_manifest,
)
from hw.recovery import add_pieces, chain_start
from hw.writer import START_TAG

OUT_TIME_BASE = Fraction(1, 90_000)
COPY_CHUNK_BYTES = 1 << 20
Progress = Callable[[float], None]


class ExportError(VigilError, RuntimeError):
    """The clip could not be made (a file unreadable, the output unwritable)."""


class NoFootage(VigilError, LookupError):
    """Nothing was recorded in the span asked for; `nearest` holds the spans around it."""

    def __init__(self, message: str, nearest: list[Span]) -> None:
        super().__init__(message)
        self.nearest = nearest


@dataclass
class Clip:
    """What an export wrote: the span its frames cover, how many, and the gaps it kept."""

    path: Path
    start: float = 0.0  # UTC seconds of the first frame
    end: float = 0.0  # UTC seconds when the last frame ends, by its file's clock (as the spans index)
    frames: int = 0
    keyframes: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (UTC start, seconds)
    files: list[Path] = field(default_factory=list)
    stopped_at_mode_change: bool = False
    # The chain links of the open segment's fragments the clip read (by the segment's path):
    # (the link it continues from, its links), None when it was written without integrity.
    open_links: dict[Path, tuple[str, list[dict[str, Any]]] | None] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> str:
        gaps = f", {len(self.gaps)} gap(s) kept" if self.gaps else ""
        return (f"{self.frames} frames from {utc_text(self.start)} to {utc_text(self.end)} "
                f"({self.end - self.start:.3f}s) from {len(self.files)} file(s){gaps}")


# The times a span may name: what `datetime` can show, year 1 to year 9999 UTC. Every time
# taken from outside (a query, the command line) is checked against these, and so is a start
# plus a duration, so no answer's text (which names the times) can fail to be written.
EARLIEST_SECONDS = -62135596800.0  # 0001-01-01T00:00:00Z
LATEST_SECONDS = 253402300800.0  # 10000-01-01T00:00:00Z, not included


def utc_text(t: float) -> str:
    if not EARLIEST_SECONDS <= t < LATEST_SECONDS:  # never for a checked time; no error text fails
        return f"{t:.3f} UNIX seconds"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """UTC seconds of an ISO 8601 time (a time without an offset is UTC), or of UNIX seconds.

    ValueError says what is wrong.
    """
    value = text.strip()
    if not value or len(value) > 64:
        raise ValueError(f"{text[:64]!r} is not a time: give ISO 8601 such as 2026-05-09T14:03:10Z")
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or not 0 <= number < LATEST_SECONDS:
            raise ValueError(f"{value!r} is not a UNIX time from 1970 to 9999")
        return number
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-05-09T14:03:10Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        seconds = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        seconds = math.nan
    # An offset can carry a time past either end of the calendar (9999-12-31T23:00-05:00).
    if not EARLIEST_SECONDS <= seconds < LATEST_SECONDS:
        raise ValueError(f"{value!r} is out of range: give a time from year 1 to 9999 UTC")
    return seconds


def resolve_span(start: str | None, end: str | None, duration: float | None, *,
                 max_seconds: float | None) -> tuple[float, float]:
    """(start, end) in UTC seconds from query text; ValueError (bad) or SpanTooLong (big)."""
    if start is None:
        raise ValueError("start is required (ISO 8601, e.g. 2026-05-09T14:03:10Z)")
    if (end is None) == (duration is None):
        raise ValueError("give exactly one of end and duration")
    t0 = parse_time(start)
    if duration is not None:
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration {duration!r} must be a number of seconds greater than 0")
        t1 = t0 + duration
        if t1 >= LATEST_SECONDS:
            raise ValueError(f"start {utc_text(t0)} plus duration {duration:g}s ends after the year 9999")
    else:
        assert end is not None
        t1 = parse_time(end)
    if t1 <= t0:
        raise ValueError(f"end {utc_text(t1)} is not after start {utc_text(t0)}")
    if max_seconds is not None and t1 - t0 > max_seconds:
        raise SpanTooLong(f"the span is {t1 - t0:g}s; at most {max_seconds:g}s can be exported at once "
                          f"(api.export_max_seconds)")
    return t0, t1


class SpanTooLong(VigilError, ValueError):
    """The span asked for is longer than the configured maximum."""


def _readable_copy(path: Path, workdir: Path) -> Path | None:
    """A private copy of the whole fragments of segment `path` being written (None: none yet).

    When the segment has closed meanwhile, its closed file is read instead (the same bytes,
    renamed).
    """
    try:
        length = fmp4.scan_fragmented(path).length
    except FileNotFoundError:
        closed = final_path(path)
        return closed if closed.exists() else None
    except fmp4.Mp4Error:
        return None
    copy = workdir / f"open-{path.name.removesuffix('.partial')}"
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with open(copy, "xb") as out:
            offset = 0
            while offset < length:
                chunk = os.pread(fd, min(COPY_CHUNK_BYTES, length - offset), offset)
                if not chunk:
                    break
                out.write(chunk)
                offset += len(chunk)
    finally:
        os.close(fd)
    return copy


@dataclass(frozen=True, slots=True)
class _Timed:
    packet: av.Packet  # type: ignore[type-arg]
    at: Fraction  # UTC seconds
    duration: Fraction


def _timed_packets(path: Path, start: float, *, seek: bool
                   ) -> Iterator[tuple[av.video.stream.VideoStream, _Timed]]:
    """The packets of `path` with their wall clock; with `seek`, from the keyframe at or
    before `start` (checked: a seek that lands later is undone by reading from the top)."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise ExportError(f"{path} cannot be read: {err}") from err
    with container:
        if not container.streams.video:
            raise ExportError(f"{path} holds no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base
        assert time_base is not None
        try:
            anchor = Fraction(start_wallclock(container, path)).limit_denominator(1_000_000)
        except VigilError as err:
            raise ExportError(str(err)) from err
        first = stream.start_time or 0
        rate = stream.guessed_rate or stream.average_rate
        frame = Fraction(1, 30) if not rate else 1 / Fraction(rate)
        target = start - float(anchor)
        try:
            packets = container.demux(stream)
            if seek and target > 1.0:  # a merged hour: jump to the keyframe, not read the hour
                container.seek(first + int(target / time_base), stream=stream, backward=True,
                               any_frame=False)
                packets = container.demux(stream)
                head = next((p for p in packets if p.dts is not None), None)
                if head is None or anchor + ((head.pts or head.dts or 0) - first) * time_base > start \
                        or not head.is_keyframe:
                    container.seek(first, stream=stream, backward=True, any_frame=False)
                    packets = container.demux(stream)
                else:
                    packets = itertools.chain([head], packets)
            for packet in packets:
                if packet.dts is None:
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                at = anchor + (pts - first) * time_base
                duration = (packet.duration or 0) * time_base
                if not 0 < duration <= 2 * frame:
                    duration = frame  # a merged hour's frame before a gap lasts until after it
                yield stream, _Timed(packet, at, duration)
        except av.FFmpegError as err:
            raise ExportError(f"{path} cannot be read: {err}") from err


def export_clip(root: Path, start: float, end: float, out_path: Path, *, workdir: Path,
                cache: TimelineCache | None = None, progress: Progress | None = None) -> Clip:
    """Write the clip of [start, end) under `root` to `out_path` (faststart MP4).

    Raises NoFootage when nothing was recorded in the span, ExportError when a file cannot
    be read or the clip cannot be written. `workdir` is a private directory for the copy of
    the open segment's whole fragments.
    """
    cache = cache if cache is not None else TimelineCache()
    found = overlapping(candidates(root), start, end)
    timelines = [t for c in found if (t := cache.timeline(c)) is not None]
    timelines = [t for t in timelines if any(r.end > start and r.start < end for r in t.runs)]
    if not timelines:
        nearest = nearest_spans(root, start, end, cache)
        raise NoFootage(f"nothing was recorded from {utc_text(start)} to {utc_text(end)}", nearest)
    timelines.sort(key=lambda t: (t.runs[0].start, t.kind != "merged"))
    clip = Clip(out_path)
    try:
        _write_clip(timelines, start, end, out_path, workdir, clip, progress)
    except av.FFmpegError as err:
        raise ExportError(f"writing the clip failed: {err}") from err
    if clip.frames == 0:
        out_path.unlink(missing_ok=True)
        nearest = join_runs(timelines) or nearest_spans(root, start, end, cache)
        raise NoFootage(f"no whole frame was recorded from {utc_text(start)} to {utc_text(end)}", nearest)
    logger.info("exported clip {} to {}", clip.describe(), out_path)
    return clip


def _write_clip(timelines: list, start: float, end: float, out_path: Path,  # type: ignore[type-arg]
                workdir: Path, clip: Clip, progress: Progress | None) -> None:
    output = av.open(str(out_path), "w", format="mp4", options={"movflags": MOVFLAGS})
    try:
        out_stream: av.video.stream.VideoStream | None = None
        shape: tuple[str, int, int] | None = None
        origin: Fraction | None = None  # wall clock of the clip's first frame
        last_at: Fraction | None = None  # wall clock of the last frame written
        last_end = Fraction(0)
        own_end: Fraction | None = None  # when the last frame written ends, by its file's clock
        last_pts = -1
        gop: list[_Timed] = []  # packets since the last keyframe, while before `start`
        done = False
        for timeline in timelines:
            if done:
                break
            path = timeline.path
            if timeline.kind == "open":
                copy = _readable_copy(path, workdir)
                if copy is None:
                    continue
                if copy.parent == workdir:  # not closed meanwhile: no manifest of its own yet
                    clip.open_links[timeline.path] = open_segment_links(copy)
                path = copy
            used = False
            shift: Fraction | None = None
            for stream, timed in _timed_packets(path, start, seek=timeline.kind == "merged"):
                own = timed.at  # the frame's time by its own file, as the spans index has it
                if shift is None:
                    # A file that starts a little before the last one ended (the wall clock
                    # and the capture clock drift apart) goes right after it, as the hourly
                    # merge places it; one that overlaps more holds frames already written
                    # (a merged hour and a segment a crash left beside it): those are skipped.
                    overlap = last_end - timed.at if last_at is not None else Fraction(0)
                    shift = overlap if 0 < overlap < GAP_SECONDS else Fraction(0)
                if shift:
                    timed = _Timed(timed.packet, timed.at + shift, timed.duration)
                if last_at is not None and timed.at <= last_at:
                    continue  # already written from another file
                # Which frames are in the span goes by each frame's own time, not by where the
                # shift placed it: the shifts add up over a run of files (up to a frame per
                # few segments when the clocks drift), so a clip cut at a span's end as the
                # index lists it lost that span's last frame; and a frame is then in a clip or
                # not whatever file the clip began in.
                # A frame is in when its middle is: the next frame after a listed end begins at
                # that end to within the clocks' microsecond rounding, in or out by chance.
                if own + timed.duration / 2 >= end:
                    done = True
                    break
                ctx = stream.codec_context
                this_shape = (ctx.name, ctx.width, ctx.height)
                if shape is None:
                    shape = this_shape
                    out_stream = output.add_stream_from_template(stream)
                elif this_shape != shape:
                    clip.stopped_at_mode_change = True
                    done = True
                    break
                if origin is None:
                    if timed.packet.is_keyframe:
                        gop = [timed]
                    elif gop:
                        gop.append(timed)
                    if own + timed.duration <= start:
                        continue  # before the span: kept only as the keyframe's group
                    if not gop:
                        continue  # no keyframe yet: wait for one
                    pending, gop = gop, []
                    origin = pending[0].at
                    clip.start = float(origin)
                    output.metadata[START_TAG] = f"{float(origin):.6f}"
                    output.metadata["creation_time"] = datetime.fromtimestamp(
                        float(origin), UTC).isoformat(timespec="microseconds")
                else:
                    pending = [timed]
                assert out_stream is not None
                for item in pending:
                    if last_at is not None and item.at - last_end > GAP_SECONDS:
                        clip.gaps.append((float(last_end), float(item.at - last_end)))
                    pts = max(last_pts + 1, round((item.at - origin) / OUT_TIME_BASE))
                    packet = item.packet
                    packet.stream = out_stream
                    packet.time_base = OUT_TIME_BASE
                    packet.pts = packet.dts = pts
                    packet.duration = max(1, round(item.duration / OUT_TIME_BASE))
                    output.mux(packet)
                    last_pts, last_at = pts, item.at
                    last_end = item.at + item.duration
                    clip.frames += 1
                    clip.keyframes += int(packet.is_keyframe)
                    used = True
                own_end = own + timed.duration  # `timed` is the last of `pending`
                if progress is not None and last_at is not None:
                    progress(min(1.0, max(0.0, (float(last_at) - start) / (end - start))))
            if used:
                clip.files.append(timeline.path)
        clip.end = float(own_end) if own_end is not None else 0.0
        if out_stream is None or clip.frames == 0:
            with contextlib.suppress(av.FFmpegError, OSError):
                output.close()  # nothing to write: the caller removes the file
            return
        output.close()
    except BaseException:
        with contextlib.suppress(av.FFmpegError, OSError):
            output.close()
        raise


def open_segment_links(copy: Path) -> tuple[str, list[dict[str, Any]]] | None:
    """The chain links of the whole fragments in `copy` (of the segment being written), as
    the writer makes them and the segment's manifest will list them when it closes: (the
    link the segment continues from, its links). None when it was written without integrity
    or cannot be read (logged). Read a fragment at a time: memory stays bounded."""
    try:
        chained = chain_start(copy)
        if chained is None:
            return None
        prev, base, spans = chained
        scanned = fmp4.scan_fragmented(copy)
        builder = ManifestBuilder(prev, base)
        with open(copy, "rb") as file:
            init = read_file_range(file, 0, scanned.init_size)
            empty = hashlib.sha256(b"").digest()
            index = add_pieces(builder, [Piece(0, len(init), hashlib.sha256(init).digest(), empty, 0)], spans)
            for fragment in scanned.fragments:
                found, _ = pieces(read_file_range(file, fragment.offset, fragment.size), fragment.offset,
                                  with_init=False)
                index = add_pieces(builder, found, spans, index)
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        logger.warning("cannot chain the open segment's fragments for a clip path={} error={}", copy, err)
        return None
    return prev.hex(), builder.links


def _chosen(links: list[dict[str, Any]], clip: Clip) -> list[int]:
    return [i for i, e in enumerate(links) if e.get("frames", 0) > 0
            and float(e["end"]) > clip.start and float(e["start"]) < clip.end]


def _source_manifests(path: Path) -> list[dict[str, Any]] | None:
    """The segment manifests behind one file a clip read (a merged hour's: its sources)."""
    manifest = read_manifest(final_path(path))
    if manifest is None:
        return None
    if manifest.get("kind") == "merged":
        return [m for m in manifest.get("sources") or [] if isinstance(m, dict)]
    return [manifest]


def clip_manifest(clip: Clip, signer: Signer | None, *, name: str | None = None) -> dict[str, Any]:
    """The manifest of `clip`: which fragments of which segments it holds, and its hash.

    A fragment is listed when its span overlaps the clip's. Fragments of the segment still
    being written have no signed manifest yet: they are listed with the links the writer
    makes for them (computed from the fragments the clip read; the segment's own manifest
    lists the same when it closes), marked `"open": true`, under the clip's signature only.
    A file without any (footage from before integrity was on) is listed with `links: null`
    and a `why`.
    Signed when `signer` is given; otherwise `public_key` and `signature` are absent.
    `name` is the clip's file name when it is renamed after this (default: its own).
    """
    sources: list[dict[str, Any]] = []
    for path in clip.files:
        manifests = _source_manifests(path)
        if manifests is None and path in clip.open_links:
            opened = clip.open_links[path]
            if opened is not None:
                prev_link, links = opened
                chosen = _chosen(links, clip)
                if chosen:
                    first = chosen[0]
                    sources.append({
                        "file": final_path(path).name, "open": True, "signature": None, "public_key": None,
                        "prev_link": links[first - 1]["link"] if first > 0 else prev_link,
                        "links": links[first:chosen[-1] + 1],
                        "why": "the segment was still being written: these links are computed from its "
                               "fsynced fragments and vouched for by this clip's signature; the segment's "
                               "own signed manifest, written when it closed, lists the same links"})
                continue
        if manifests is None:
            why = ("the segment was still being written without integrity (no chain in the file)"
                   if path in clip.open_links else
                   "no manifest: recorded before integrity was on, or removed")
            sources.append({"file": final_path(path).name, "links": None, "signature": None, "why": why})
            continue
        for manifest in manifests:
            links = manifest.get("links") or []
            chosen = _chosen(links, clip)
            if not chosen:
                continue
            first = chosen[0]
            prev = links[first - 1]["link"] if first > 0 else manifest.get("prev_link")
            sources.append({"file": manifest.get("file"), "signature": manifest.get("signature"),
                            "public_key": manifest.get("public_key"), "prev_link": prev,
                            "links": links[first:chosen[-1] + 1]})
    body: dict[str, Any] = {
        "format": FORMAT, "kind": "clip", "file": name or clip.path.name, "size": clip.path.stat().st_size,
        "sha256": sha256_file(clip.path), "start": clip.start, "end": clip.end, "frames": clip.frames,
        "sources": sources,
    }
    if signer is None:
        return body
    body["unit"] = signer.unit
    return sign_manifest(body, signer)
