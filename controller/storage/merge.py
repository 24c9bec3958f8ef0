"""Hourly merge: the closed segments of one hour joined by stream copy into one file.

`ROOT/YYYY-MM-DD/HH/*.mp4` becomes `ROOT/YYYY-MM-DD/HH.mp4` (`HH-1.mp4`, ... when that
name is taken or the camera mode changed within the hour).

An hour recorded in one piece is one segment (segments end on the clock hour): that file
already is the hour's file, so it is adopted, renamed into place, not copied (every footage
byte is written once). Only an hour broken into several segments (a restart, a change of
mode) is joined: packets copied, never re-encoded, into a fragmented MP4 like the segments
(its index, the `moov`, is at the front by construction, so no faststart pass rewrites the
file). Each segment is placed at its own wall-clock start (the `vigil_start` tag) relative
to the first one, so a gap between segments (a recovery, a restart) stays a gap in the
merged file's timestamps.

The order of the work is what makes it crash-safe: write `.HH.mp4.merging`, verify it
(every packet byte-identical to the inputs by CRC, frame and keyframe counts and time span
as planned; a decode of every frame or keyframe when asked), fsync it, rename it to
`HH.mp4`, fsync the folder; only then remove the segments. A crash at any point leaves the
segments or the verified merged file. The merged file names its sources in the
`vigil_sources` tag, so start-up cleanup (`clean_interrupted_merges`) can finish a removal
that a crash cut short. An adopted segment is read back whole (every packet demuxed, and
decoded when asked) before its rename: the footage is never under no name (a filesystem
that makes the new name durable before the old one's removal may keep both after a cut;
start-up cleanup drops the segment's).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from loguru import logger

from hw.errors import VigilError
from hw.footage import (
    SECONDS_PER_HOUR,
    HourFolder,
    collision_number,
    date_dirs,
    free_merged_path,
    hour_folder_for,
    hour_folders,
    hour_key,
    is_real_directory,
    merge_temp_path,
    merge_temps_in,
    merged_files_for,
    orphan_manifests_in,
    partials_in,
    segment_start,
    segments_in,
)
from hw.footage import remove_manifest as remove_manifest_of
from hw.integrity import FORMAT, Signer, read_manifest, sha256_file, sign_manifest, write_manifest
from hw.writer import START_TAG, fsync_directory

VerifyMode = Literal["packets", "keyframes", "full"]
Step = Literal["written", "verified", "renamed", "segment_removed"]
StepHook = Callable[[Step], None]
AbortCheck = Callable[[], bool]

VERIFY_MODES: tuple[VerifyMode, ...] = ("packets", "keyframes", "full")
DEFAULT_VERIFY: VerifyMode = "packets"
SOURCES_TAG = "vigil_sources"
HOUR_TAG = "vigil_hour"
# The segments' own layout (hw.writer): a fragment per keyframe, the moov at the front
# without a second pass over the file.
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+use_metadata_tags"
# An MP4's index (stsd) already says what the stream is: without this, opening each file
# probes its first frames, about half the cost of merging small segments.
READ_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
# Packets still queued when the hour ends are written a moment later; wait this long past
# the hour before treating it as closed.
CLOSE_GRACE_SECONDS = 30.0
# Spread the merged file's writeback over the merge instead of one burst at the end, which
# would compete with the recording's own fsyncs.
FSYNC_EVERY_BYTES = 16 * 1024 * 1024
SPAN_TOLERANCE_SECONDS = Fraction(1, 1000)
# Shorter gaps between segments (clock jitter between the segments of one run) are kept
# in the timestamps like any other, but not reported as gaps.
GAP_REPORT_SECONDS = Fraction(1, 2)
LOCK_NAME = ".vigil-housekeeping.lock"
LOCK_POLL_SECONDS = 0.1


class MergeError(VigilError, RuntimeError):
    """A merge could not be done or did not verify; the segments are untouched."""


class MergeAborted(MergeError):
    """The merge was stopped on request (shutdown, low disk); the segments are untouched."""


class HourStillOpen(MergeError):
    """The hour asked for is still being recorded (current hour, or a `.partial` in it)."""


class NothingToMerge(MergeError, FileNotFoundError):
    """No footage for the hour asked for."""


class MergeDeferred(MergeError):
    """No room for the merged copy above the free-space reserve; the merge waits."""


class MergeBusy(MergeError):
    """Another process holds the housekeeping lock of this root."""


@dataclass(frozen=True, slots=True)
class MergedHour:
    """One merged file: where it went, what it holds, and what the merge cost."""

    hour: str
    path: Path
    sources: tuple[str, ...]  # the segments' names, in the hour's segment folder
    folder: Path  # the hour's segment folder, ROOT/YYYY-MM-DD/HH
    frames: int
    span_seconds: float
    gaps: tuple[tuple[float, float], ...]  # (offset in the file, length) in seconds
    bytes_in: int
    bytes_out: int
    seconds: float

    @property
    def source_paths(self) -> tuple[Path, ...]:
        """Where the merged segments were (they are gone once the merge is done)."""
        return tuple(self.folder / name for name in self.sources)

    def describe(self) -> str:
        gaps = f", {len(self.gaps)} gap(s) kept" if self.gaps else ""
        return (f"{self.hour}: {len(self.sources)} segment(s) -> {self.path} "
                f"({self.frames} frames, {self.span_seconds:.1f}s, {self.bytes_out / 2**20:.1f} MiB"
                f"{gaps})")


@dataclass(frozen=True, slots=True)
class _SegmentInfo:
    path: Path
    start: float  # wall clock UTC seconds of the first frame
    shape: tuple[str, int, int]  # codec, width, height: segments merge only with their own kind


@dataclass
class _Plan:
    """What copying a run of segments produced (or would produce): the verify's expectations."""

    frames: int = 0
    keyframes: int = 0
    crc: int = 0
    span: Fraction = Fraction(0)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    bytes_in: int = 0


# -- which hours may be merged ---------------------------------------------------------------


def open_reason(
    hour: HourFolder, *, now: float, open_segments: Sequence[Path] = (),
    grace: float = CLOSE_GRACE_SECONDS,
) -> str | None:
    """Why `hour` is still being written (so must not be merged), or None when it is closed."""
    if now < hour.start:
        return f"hour {hour.key} is in the future (UTC now is {_utc(now)})"
    if now < hour.end:
        return f"hour {hour.key} is the current UTC hour and is still being recorded"
    if now < hour.end + grace:
        return (f"hour {hour.key} ended less than {grace:g}s ago; its last frames may still be "
                f"on their way to disk (try again after {_utc(hour.end + grace)})")
    partials = partials_in(hour.path)
    if partials:
        return f"{partials[0]} is still being written"
    for path in open_segments:
        if path.parent == hour.path:
            return f"{path} is the open segment"
    return None


def closed_hours(root: Path, *, now: float, open_segments: Sequence[Path] = ()) -> list[HourFolder]:
    """Hour folders under `root` that hold segments and are closed, oldest first."""
    return [h for h in hour_folders(root)
            if segments_in(h.path) and open_reason(h, now=now, open_segments=open_segments) is None]


# -- reading segments --------------------------------------------------------------------------


def segment_order(path: Path) -> tuple[float, int, str]:
    """Sort key: by the start in the name, NAME.mp4 before NAME-1.mp4 (created after it)."""
    return (segment_start(path.name) or 0.0, collision_number(path.name), path.name)


def start_wallclock(container: av.container.InputContainer, path: Path) -> float:
    """A segment's first-frame wall clock: `vigil_start`, else `creation_time`, else its name."""
    tags = container.metadata
    with contextlib.suppress(KeyError, ValueError):
        return float(tags[START_TAG])
    with contextlib.suppress(KeyError, ValueError):
        return datetime.fromisoformat(tags["creation_time"].replace("Z", "+00:00")).timestamp()
    named = segment_start(path.name)
    if named is None:
        raise MergeError(f"{path} has no start time (no {START_TAG} tag, no creation_time)")
    return named


def _probe(path: Path) -> _SegmentInfo:
    try:
        with av.open(str(path), options=READ_OPTIONS) as container:
            if not container.streams.video:
                raise MergeError(f"{path} holds no video stream")
            ctx = container.streams.video[0].codec_context
            return _SegmentInfo(path, start_wallclock(container, path), (ctx.name, ctx.width, ctx.height))
    except (av.FFmpegError, OSError) as err:
        raise MergeError(f"{path} cannot be read: {err}") from err


def _runs(infos: list[_SegmentInfo]) -> list[list[_SegmentInfo]]:
    """Consecutive segments of the same codec and size: each run becomes one merged file."""
    runs: list[list[_SegmentInfo]] = []
    for info in infos:
        if runs and runs[-1][-1].shape == info.shape:
            runs[-1].append(info)
        else:
            runs.append([info])
    return runs


def _copied_packets(
    infos: Sequence[_SegmentInfo], plan: _Plan, should_abort: AbortCheck | None,
    when_template: Callable[[av.video.stream.VideoStream], None] | None = None,
) -> Iterator[av.Packet]:  # type: ignore[type-arg]
    """Every packet of `infos` in order, re-timed onto one timeline; fills in `plan`.

    Segment i starts at its wall-clock offset from segment 0, or right after segment i-1
    when the clocks say they overlap (a clock stepped back): timestamps must keep rising.
    """
    anchor = infos[0].start
    end = Fraction(0)
    for index, info in enumerate(infos):
        wall_offset = Fraction(round((info.start - anchor) * 1_000_000), 1_000_000)
        place = max(wall_offset, end)
        if index and wall_offset > end + GAP_REPORT_SECONDS:
            plan.gaps.append((float(end), float(wall_offset - end)))
        elif index and wall_offset < end - GAP_REPORT_SECONDS:
            logger.warning("segment starts {:.3f}s before the previous one ends (clock stepped "
                           "back?); placed right after it path={}", float(end - wall_offset), info.path)
        try:
            container = av.open(str(info.path), options=READ_OPTIONS)
        except (av.FFmpegError, OSError) as err:
            raise MergeError(f"{info.path} cannot be read: {err}") from err
        with container:
            stream = container.streams.video[0]
            if when_template is not None and index == 0:
                when_template(stream)
            time_base = stream.time_base
            assert time_base is not None
            shift: int | None = None
            end_ticks: int | None = None  # integers per packet: a Fraction each costs microseconds
            try:
                for packet in container.demux(stream):
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    if should_abort is not None and should_abort():
                        raise MergeAborted("merge stopped on request")
                    if shift is None:
                        shift = round(place / time_base) - packet.dts
                    pts = packet.pts if packet.pts is not None else packet.dts
                    packet.dts += shift
                    packet.pts = pts + shift
                    plan.frames += 1
                    plan.keyframes += int(packet.is_keyframe)
                    plan.crc = zlib.crc32(packet, plan.crc)
                    plan.bytes_in += packet.size
                    tick = packet.pts + (packet.duration or 0)
                    if end_ticks is None or tick > end_ticks:
                        end_ticks = tick
                    yield packet
            except av.FFmpegError as err:
                raise MergeError(f"{info.path} cannot be read: {err}") from err
        end = place if end_ticks is None else max(place, end_ticks * time_base)
    plan.span = end


# -- writing and verifying ---------------------------------------------------------------------


def concat_segments(
    segments: Sequence[Path], out_path: Path, *, hour: str = "", should_abort: AbortCheck | None = None,
    fsync: bool = True,
) -> _Plan:
    """Stream-copy `segments` (one codec and size, in order) into `out_path` (fragmented MP4)."""
    infos = [_probe(p) for p in segments]
    return _write(infos, out_path, hour=hour, should_abort=should_abort, fsync=fsync)


def _write(
    infos: Sequence[_SegmentInfo], out_path: Path, *, hour: str, should_abort: AbortCheck | None,
    fsync: bool,
) -> _Plan:
    try:
        return _write_file(infos, out_path, hour=hour, should_abort=should_abort, fsync=fsync)
    except av.FFmpegError as err:
        raise MergeError(f"writing {out_path} failed: {err}") from err


def _write_file(
    infos: Sequence[_SegmentInfo], out_path: Path, *, hour: str, should_abort: AbortCheck | None,
    fsync: bool,
) -> _Plan:
    plan = _Plan()
    anchor = infos[0].start
    output = av.open(str(out_path), "w", format="mp4", options={"movflags": MOVFLAGS})
    sync_fd: int | None = None
    try:
        output.metadata["creation_time"] = datetime.fromtimestamp(anchor, UTC).isoformat(
            timespec="microseconds")
        output.metadata[START_TAG] = f"{anchor:.6f}"
        output.metadata[HOUR_TAG] = hour
        output.metadata[SOURCES_TAG] = ",".join(info.path.name for info in infos)
        streams: list[av.video.stream.VideoStream] = []
        unsynced = 0
        for packet in _copied_packets(infos, plan, should_abort,
                                      lambda s: streams.append(output.add_stream_from_template(s))):
            packet.stream = streams[0]
            output.mux(packet)
            unsynced += packet.size
            if fsync and unsynced >= FSYNC_EVERY_BYTES:
                if sync_fd is None:
                    sync_fd = os.open(out_path, os.O_RDONLY)
                os.fdatasync(sync_fd)
                unsynced = 0
        output.close()
    except BaseException:
        with contextlib.suppress(av.FFmpegError, OSError):
            output.close()
        raise
    finally:
        if sync_fd is not None:
            os.close(sync_fd)
    return plan


@dataclass(frozen=True, slots=True)
class Inspection:
    """What reading a merged file back found."""

    frames: int
    keyframes: int
    decoded: int
    crc: int
    span: Fraction


def _expected_decoded(mode: VerifyMode, frames: int, keyframes: int) -> int:
    return frames if mode == "full" else keyframes if mode == "keyframes" else 0


def inspect_merged(path: Path, *, mode: VerifyMode = DEFAULT_VERIFY,
                   should_abort: AbortCheck | None = None) -> Inspection:
    """Read every packet of `path`; decode every frame (`full`), every keyframe
    (`keyframes`) or none (`packets`: the packets' bytes are what is checked)."""
    frames = keyframes = decoded = crc = 0
    first: int | None = None  # in ticks of the stream's time base
    end = 0
    time_base = Fraction(1)
    try:
        with av.open(str(path), options=READ_OPTIONS) as container:
            if not container.streams.video:
                raise MergeError(f"{path} holds no video stream")
            stream = container.streams.video[0]
            decode = mode != "packets"
            if decode:
                stream.thread_type = "AUTO"
            if mode == "keyframes":
                stream.codec_context.skip_frame = "NONKEY"
            assert stream.time_base is not None
            time_base = stream.time_base
            for packet in container.demux(stream):
                if packet.dts is not None:
                    if should_abort is not None and should_abort():
                        raise MergeAborted("verify stopped on request")
                    frames += 1
                    keyframes += int(packet.is_keyframe)
                    crc = zlib.crc32(packet, crc)
                    pts = packet.pts if packet.pts is not None else packet.dts
                    if first is None or pts < first:
                        first = pts
                    tick = pts + (packet.duration or 0)
                    if tick > end:
                        end = tick
                if decode:
                    decoded += len(packet.decode())  # the end marker flushes the decoder
    except av.FFmpegError as err:
        raise MergeError(f"{path} does not decode: {err}") from err
    return Inspection(frames, keyframes, decoded, crc, (end - (first or 0)) * time_base)


def verify_merged(
    path: Path, *, frames: int, keyframes: int, crc: int | None, span: Fraction | None,
    mode: VerifyMode = DEFAULT_VERIFY, should_abort: AbortCheck | None = None,
) -> Inspection:
    """Raise MergeError unless `path` holds exactly what was planned.

    Checks the packet count, the keyframe count, the CRC of every packet's bytes (None:
    skip) and the time span (None: skip): the CRC proves the bytes are the inputs'. With
    `full` every frame must also decode, with `keyframes` every keyframe (a decode costs
    about a second of CPU per recorded minute at 720p; several on a Pi).
    """
    got = inspect_merged(path, mode=mode, should_abort=should_abort)
    expected_decoded = _expected_decoded(mode, frames, keyframes)
    problems = []
    if got.frames != frames:
        problems.append(f"{got.frames} frames, expected {frames}")
    if got.keyframes != keyframes:
        problems.append(f"{got.keyframes} keyframes, expected {keyframes}")
    if got.decoded != expected_decoded:
        problems.append(f"{got.decoded} frames decoded, expected {expected_decoded}")
    if crc is not None and got.crc != crc:
        problems.append("packet bytes differ from the segments'")
    if span is not None and abs(got.span - span) > SPAN_TOLERANCE_SECONDS:
        problems.append(f"spans {float(got.span):.3f}s, expected {float(span):.3f}s")
    if problems:
        raise MergeError(f"{path} failed verification: {'; '.join(problems)}")
    return got


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one hour ---------------------------------------------------------------------------------


def merge_hour(
    hour: HourFolder, *, verify: VerifyMode = DEFAULT_VERIFY, fsync: bool = True,
    should_abort: AbortCheck | None = None, when_step: StepHook | None = None,
    reserve_bytes: int = 0, skip: frozenset[Path] = frozenset(),
    unreadable: set[Path] | None = None, signer: Signer | None = None,
) -> list[MergedHour]:
    """Merge the closed segments of `hour` into merged file(s); returns what was written.

    The caller decides that the hour is closed (`open_reason`) and holds the root's
    housekeeping lock. Segments in `skip` stay as they are; segments that cannot be read
    stay too and are added to `unreadable`. Raises MergeError (segments untouched) when the
    merge fails, MergeAborted when `should_abort` says so, and MergeDeferred when there is
    no room for the merged copy above `reserve_bytes`.
    """
    reconcile_hour(hour, verify=verify)
    infos = []
    for path in sorted((p for p in segments_in(hour.path) if p not in skip), key=segment_order):
        try:
            infos.append(_probe(path))
        except MergeError as err:
            logger.error("segment cannot be read; it stays unmerged: {}", err)
            if unreadable is not None:
                unreadable.add(path)
    results = []
    for run in _runs(infos):
        if len(run) == 1:
            results.append(_adopt(hour, run[0], verify=verify, fsync=fsync, should_abort=should_abort,
                                  when_step=when_step, signer=signer))
            continue
        results.append(_merge_run(hour, run, verify=verify, fsync=fsync, should_abort=should_abort,
                                  when_step=when_step, reserve_bytes=reserve_bytes, signer=signer))
    _remove_if_empty(hour, fsync=fsync)
    return results


def _merge_run(
    hour: HourFolder, infos: list[_SegmentInfo], *, verify: VerifyMode, fsync: bool,
    should_abort: AbortCheck | None, when_step: StepHook | None, reserve_bytes: int,
    signer: Signer | None = None,
) -> MergedHour:
    started = time.monotonic()
    needed = sum(info.path.stat().st_size for info in infos)
    free = shutil.disk_usage(hour.date_dir).free
    if free - needed < reserve_bytes:
        raise MergeDeferred(f"merging {hour.key} needs {needed / 2**20:.1f} MiB free above the "
                            f"{reserve_bytes / 2**20:.1f} MiB reserve; {free / 2**20:.1f} MiB free")
    final = free_merged_path(hour)
    temp = merge_temp_path(final)
    temp.unlink(missing_ok=True)  # a leftover of a crash: we hold the lock, nobody else writes it
    try:
        plan = _write(infos, temp, hour=hour.key, should_abort=should_abort, fsync=fsync)
        _step(when_step, "written")
        verify_merged(temp, frames=plan.frames, keyframes=plan.keyframes, crc=plan.crc, span=plan.span,
                      mode=verify, should_abort=should_abort)
        if fsync:
            fsync_file(temp)
        _step(when_step, "verified")
        if final.exists():  # the lock keeps others out; a name taken meanwhile is still not ours
            raise MergeError(f"{final} appeared during the merge; leaving the segments as they are")
        if signer is not None:
            _write_merged_manifest(final, temp, [info.path for info in infos], signer, fsync=fsync)
        os.rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
            if not final.exists():
                remove_manifest_of(final)
        raise
    if fsync:
        fsync_directory(hour.date_dir)
    _step(when_step, "renamed")
    _remove_sources(hour, [info.path for info in infos], fsync=fsync, when_step=when_step)
    result = MergedHour(
        hour=hour.key, path=final, sources=tuple(info.path.name for info in infos), folder=hour.path,
        frames=plan.frames, span_seconds=float(plan.span), gaps=tuple(plan.gaps),
        bytes_in=plan.bytes_in, bytes_out=final.stat().st_size, seconds=time.monotonic() - started,
    )
    logger.info("merged hour={} path={} segments={} frames={} seconds={:.1f} gaps={} bytes={} "
                "took={:.1f}s", result.hour, final, len(result.sources), result.frames,
                result.span_seconds, len(result.gaps), result.bytes_out, result.seconds)
    return result


def _adopt(
    hour: HourFolder, info: _SegmentInfo, *, verify: VerifyMode, fsync: bool,
    should_abort: AbortCheck | None, when_step: StepHook | None, signer: Signer | None,
) -> MergedHour:
    """The hour's one segment becomes its merged file by a rename: nothing is copied.

    The segment is read back first (every packet, and decoded as `verify` says): a file
    that does not demux to its end stays a segment and raises MergeError. The rename moves
    one inode from the hour folder to the date folder, so at every instant the footage is
    under exactly one name (hw.writer fsynced its data when it closed it).
    """
    started = time.monotonic()
    source = info.path
    got = inspect_merged(source, mode=verify, should_abort=should_abort)
    expected_decoded = _expected_decoded(verify, got.frames, got.keyframes)
    if got.frames == 0 or got.decoded != expected_decoded:
        raise MergeError(f"{source} failed verification: {got.frames} frames, {got.decoded} "
                         f"decoded of {expected_decoded}; it stays a segment")
    _step(when_step, "verified")
    final = free_merged_path(hour)
    try:
        if signer is not None:
            _write_merged_manifest(final, source, [source], signer, fsync=fsync)
        os.rename(source, final)
    except BaseException:
        with contextlib.suppress(OSError):
            if not final.exists():
                remove_manifest_of(final)
        raise
    if fsync:
        # The new name first: a cut between the two leaves the file under both names
        # (reconcile_hour drops the segment's), never under none.
        fsync_directory(hour.date_dir)
        fsync_directory(hour.path)
    _step(when_step, "renamed")
    _remove_sources(hour, [source], fsync=fsync, when_step=when_step, unlink=False)
    size = final.stat().st_size
    result = MergedHour(
        hour=hour.key, path=final, sources=(source.name,), folder=hour.path, frames=got.frames,
        span_seconds=float(got.span), gaps=(), bytes_in=size, bytes_out=size,
        seconds=time.monotonic() - started,
    )
    logger.info("adopted the hour's only segment as its file hour={} path={} segment={} frames={} "
                "seconds={:.1f} bytes={} took={:.1f}s", result.hour, final, source.name, result.frames,
                result.span_seconds, size, result.seconds)
    return result


def _write_merged_manifest(final: Path, temp: Path, sources: Sequence[Path], signer: Signer, *,
                           fsync: bool) -> None:
    """The merged file's manifest, before its rename: the sources' manifests as they are
    (their links and signatures), and the merged file's own hash, signed. Only when every
    source has one: a manifest that covered part of the hour would prove too little."""
    manifests = [read_manifest(p) for p in sources]
    if any(m is None for m in manifests):
        logger.warning("hour merged without a manifest: a source segment has none path={}", final)
        return
    body = {
        "format": FORMAT, "kind": "merged", "unit": signer.unit, "file": final.name,
        "size": temp.stat().st_size, "sha256": sha256_file(temp),
        "start": manifests[0]["start"] if manifests[0] else None,
        "end": manifests[-1]["end"] if manifests[-1] else None,
        "sources": manifests,
    }
    write_manifest(final, sign_manifest(body, signer), fsync=fsync)


def _step(hook: StepHook | None, step: Step) -> None:
    if hook is not None:
        hook(step)


def _remove_sources(hour: HourFolder, paths: Sequence[Path], *, fsync: bool,
                    when_step: StepHook | None, unlink: bool = True) -> None:
    for path in paths:
        if unlink:
            path.unlink(missing_ok=True)
        remove_manifest_of(path)  # its links live on in the merged hour's manifest
        _step(when_step, "segment_removed")
    if fsync:
        fsync_directory(hour.path)


def _remove_if_empty(hour: HourFolder, *, fsync: bool) -> None:
    """rmdir the hour folder, then its date folder once that day is over, when they are empty."""
    folders = [hour.path]
    day_end = hour.start - int(hour.path.name) * SECONDS_PER_HOUR + 24 * SECONDS_PER_HOUR
    if time.time() >= day_end + CLOSE_GRACE_SECONDS:
        # Before that the writer may be about to create the day's next hour folder in it.
        folders.append(hour.date_dir)
    for directory in folders:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (a late segment, foreign files) or already gone
        if fsync:
            with contextlib.suppress(OSError):
                fsync_directory(directory.parent)


# -- start-up cleanup ------------------------------------------------------------------------


def merged_sources(path: Path) -> tuple[str, ...] | None:
    """The segment names a merged file was made from (its `vigil_sources` tag), or None."""
    try:
        with av.open(str(path)) as container:
            tag = container.metadata.get(SOURCES_TAG)
    except (av.FFmpegError, OSError):
        return None
    if tag is None:
        return None
    return tuple(name for name in tag.split(",") if name)


def reconcile_hour(
    hour: HourFolder, *, verify: VerifyMode = DEFAULT_VERIFY, fsync: bool = True,
) -> list[Path]:
    """Finish what a crash between rename and segment removal left: returns segments removed.

    A merged file whose sources are all still present is verified against them in full
    (as before its rename) and the sources removed; if it does not verify it is removed
    instead and the hour will be merged again. When only some sources remain, the removal
    had begun, which happens only after a verified, fsynced rename: the merged file is
    checked to decode and to hold at least their frames, then they are removed.
    """
    removed = _finish_adoptions(hour, fsync=fsync)
    for merged in merged_files_for(hour):
        sources = merged_sources(merged)
        if sources is None:
            continue
        present = [hour.path / name for name in sources if (hour.path / name).is_file()]
        if not present:
            continue
        try:
            if len(present) == len(sources):
                infos = [_probe(p) for p in present]
                plan = _Plan()
                for _ in _copied_packets(infos, plan, None):
                    pass
                verify_merged(merged, frames=plan.frames, keyframes=plan.keyframes, crc=plan.crc,
                              span=plan.span, mode=verify)
            else:
                remaining = sum(inspect_merged(p, mode="keyframes").frames for p in present)
                _verify_holds_at_least(merged, remaining, verify)
        except MergeError as err:
            if len(present) == len(sources):
                logger.error("merged file from an interrupted merge does not verify; removing it, "
                             "the segments stay and the hour is merged again: {}", err)
                merged.unlink(missing_ok=True)
                remove_manifest_of(merged)
                if fsync:
                    fsync_directory(hour.date_dir)
            else:
                logger.error("merged file does not verify and some of its segments are gone; "
                             "keeping both path={} remaining={}: {}", merged, len(present), err)
            continue
        logger.info("finishing an interrupted merge: removing {} segment(s) now in path={}",
                    len(present), merged)
        _remove_sources(hour, present, fsync=fsync, when_step=None)
        removed.extend(present)
    if removed:
        _remove_if_empty(hour, fsync=fsync)
    return removed


def _finish_adoptions(hour: HourFolder, *, fsync: bool) -> list[Path]:
    """Finish what a cut during an adoption left: a segment name still linked to a merged
    file (the same inode: a filesystem that made the new name durable before dropping the
    old), and the adopted segment's manifest, which goes once its file has gone."""
    merged = merged_files_for(hour)
    if not merged:
        return []
    inodes = set()
    for path in merged:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            inodes.add((st.st_dev, st.st_ino))
    removed: list[Path] = []
    for segment in segments_in(hour.path):
        with contextlib.suppress(OSError):
            st = os.lstat(segment)
            if (st.st_dev, st.st_ino) in inodes:
                logger.info("finishing an interrupted adoption: the segment is already the merged "
                            "hour path={}", segment)
                segment.unlink()
                removed.append(segment)
    orphans = orphan_manifests_in(hour.path)
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    if (removed or orphans) and fsync:
        fsync_directory(hour.path)
    return removed


def _verify_holds_at_least(path: Path, frames: int, mode: VerifyMode) -> None:
    got = inspect_merged(path, mode=mode)
    expected_decoded = _expected_decoded(mode, got.frames, got.keyframes)
    if got.decoded != expected_decoded:
        raise MergeError(f"{path} does not decode: {got.decoded} of {expected_decoded} frames")
    if got.frames < frames:
        raise MergeError(f"{path} holds {got.frames} frames, fewer than its remaining segments' {frames}")


def clean_interrupted_merges(
    root: Path, *, verify: VerifyMode = DEFAULT_VERIFY, fsync: bool = True,
) -> list[str]:
    """Remove temporary merge files and finish cut-short removals under `root`; what was done.

    Call with the root's housekeeping lock held. A temporary file is always removed: the
    segments it was made from are removed only after its rename, so they are all there.
    """
    done: list[str] = []
    for date_dir in date_dirs(root):
        for temp in merge_temps_in(date_dir):
            temp.unlink(missing_ok=True)
            logger.info("removed the temporary file of an interrupted merge path={}", temp)
            done.append(f"removed {temp}")
    for hour in hour_folders(root):
        for path in reconcile_hour(hour, verify=verify, fsync=fsync):
            done.append(f"removed merged segment {path}")
    return done


# -- the lock and the force merge --------------------------------------------------------------


@contextlib.contextmanager
def housekeeping_lock(root: Path, *, timeout: float | None) -> Iterator[None]:
    """Hold ROOT/.vigil-housekeeping.lock; MergeBusy after `timeout` s (0: try once; None: wait)."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError as err:
                assert deadline is not None
                if time.monotonic() >= deadline:
                    raise MergeBusy(f"another vigil process is housekeeping {root}") from err
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def has_footage_of(root: Path, hour: float) -> bool:
    """Whether `root` holds segments or a merged file of the hour starting at `hour`."""
    folder = hour_folder_for(root, hour)
    return is_real_directory(folder.path) or bool(merged_files_for(folder))


def force_merge(
    roots: Sequence[Path], *, hour: float | None, now: float, verify: VerifyMode = DEFAULT_VERIFY,
    open_segments: Sequence[Path] = (), lock_timeout: float | None = None,
    should_abort: AbortCheck | None = None, reserve_bytes: Callable[[Path], int] | None = None,
    missing_ok: bool = False, signer: Signer | None = None,
) -> list[MergedHour]:
    """Merge the hour starting at `hour` (UTC seconds), or every closed hour, in `roots` now.

    Raises HourStillOpen for an hour still being written, NothingToMerge when no root has
    footage of that hour (unless `missing_ok`), MergeBusy when another process holds a
    root's lock past `lock_timeout`, MergeDeferred when there is no room above
    `reserve_bytes(root)`, MergeError when a merge fails (its segments stay). An hour that
    is already merged gives no result and no error.
    """
    results: list[MergedHour] = []
    for root in roots:
        if not root.is_dir():
            continue
        if hour is not None:
            folder = hour_folder_for(root, hour)
            reason = open_reason(folder, now=now, open_segments=open_segments)
            if reason is not None:
                raise HourStillOpen(f"not merging: {reason}")
            targets = [folder] if is_real_directory(folder.path) else []
        else:
            targets = closed_hours(root, now=now, open_segments=open_segments)
        if not targets:
            continue
        with housekeeping_lock(root, timeout=lock_timeout):
            for folder in targets:
                # Looked at again under the lock: the daemon may have merged it meanwhile.
                if is_real_directory(folder.path):
                    reserve = reserve_bytes(root) if reserve_bytes is not None else 0
                    results.extend(merge_hour(folder, verify=verify, should_abort=should_abort,
                                              reserve_bytes=reserve, signer=signer))
    if hour is not None and not missing_ok and not any(has_footage_of(r, hour) for r in roots):
        raise NothingToMerge(f"no footage of hour {hour_key(hour)} under "
                             f"{', '.join(str(r) for r in roots)}")
    return results


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
