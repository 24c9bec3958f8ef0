"""The recorded-spans index: which wall-clock spans of a root hold footage, read from the files.

Every file lookup goes through hw.footage (vigil's names only, never through a link). Frame
times come from the files' own index boxes (controller.surfaces.fmp4), not from decoding:
a segment's fragments (`tfdt`, `trun`), a merged hour's `stts`, each placed at the file's
`vigil_start` tag. A segment still being written counts up to its last whole fragment.
A pause longer than GAP_SECONDS (a recovery, a restart) ends a span; a merged hour keeps
such gaps in its timestamps, so it may hold several spans.

The timelines of closed files are cached by (inode, size, mtime): a closed file does not
change, so asking again costs a `stat` per file.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loguru import logger

from controller.storage.merge import GAP_REPORT_SECONDS
from controller.surfaces import fmp4
from hw.footage import SECONDS_PER_HOUR, hour_folders, list_footage, partials_in, segment_start
from hw.writer import START_TAG

GAP_SECONDS = float(GAP_REPORT_SECONDS)
# Frames of a segment lie between the second its name gives and shortly after its hour
# ends (segments split at the hour; the last frame may overrun it by its own duration).
HOUR_OVERRUN_SECONDS = 1.0
CACHE_FILES = 4096
MAX_SPANS = 10_000

FileKind = Literal["segment", "merged", "open"]


@dataclass(frozen=True, slots=True)
class Run:
    """Frames without a pause: from the first frame's start to the last frame's end (UTC s)."""

    start: float
    end: float
    frames: int


@dataclass(frozen=True, slots=True)
class FileTimeline:
    path: Path
    kind: FileKind
    runs: tuple[Run, ...]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A footage file that may hold frames of a span, by its name."""

    path: Path
    kind: FileKind
    earliest: float  # no frame before this
    latest: float  # no frame after this


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float
    frames: int
    files: tuple[Path, ...]


def anchor_of(moov: bytes, path: Path) -> float:
    tags = fmp4.metadata_tags(moov)
    try:
        return float(tags[START_TAG])
    except (KeyError, ValueError):
        named = segment_start(path.name)
        if named is None:
            raise fmp4.Mp4Error(f"{path.name} has no {START_TAG} tag") from None
        return named


def segment_runs(path: Path, kind: FileKind = "segment") -> FileTimeline:
    """The runs of a segment (closed, or `.partial` up to its last whole fragment)."""
    scanned = fmp4.scan_fragmented(path)
    if not scanned.fragments:
        return FileTimeline(path, kind, ())
    anchor = anchor_of(fmp4.read_moov(path, limit=scanned.init_size), path)
    first = scanned.fragments[0].start
    runs = _split_fragments(scanned, anchor, first)
    return FileTimeline(path, kind, runs)


def _split_fragments(scanned: fmp4.FragmentedFile, anchor: float, first: int) -> tuple[Run, ...]:
    # The muxer gives a fragment's last frame the time up to the next fragment's first, so a
    # pause (a restart joined by a merge, a camera loss) hides in that frame's duration: a
    # fragment ends when its last frame starts plus, at the most, the file's typical frame
    # duration. (Not its frames times the typical duration: frames slower than typical, as
    # under load, made that end before the last frame began, and an export cut there lost it.)
    per_frame = sorted(f.duration / f.frames for f in scanned.fragments if f.frames)
    typical = per_frame[len(per_frame) // 2] if per_frame else 0.0
    runs: list[Run] = []
    for frag in scanned.fragments:
        t0 = anchor + (frag.start - first) / scanned.timescale
        if frag.frames and frag.last_duration:
            last_start = frag.duration - frag.last_duration
            t1 = t0 + (last_start + min(frag.last_duration, typical)) / scanned.timescale
        else:
            t1 = t0 + min(frag.duration, frag.frames * typical) / scanned.timescale
        if runs and t0 - runs[-1].end <= GAP_SECONDS:
            last = runs[-1]
            runs[-1] = Run(last.start, max(last.end, t1), last.frames + frag.frames)
        else:
            runs.append(Run(t0, t1, frag.frames))
    return tuple(runs)


def merged_runs(path: Path) -> FileTimeline:
    """The runs of a merged hour, split at the gaps it kept: from its fragments, as a
    segment's (an adopted segment, or segments joined since merges write fragmented MP4),
    or from `stts` (an hour merged by an older vigil into an ordinary MP4)."""
    if fmp4.is_fragmented(path):
        return segment_runs(path, "merged")
    timescale, deltas = fmp4.sample_deltas(path)
    anchor = anchor_of(fmp4.read_moov(path), path)
    runs: list[Run] = []
    tick = 0
    start = anchor
    frames = 0
    gap_ticks = GAP_SECONDS * timescale
    typical = max(deltas, key=lambda run: run[0])[1] if deltas else 0  # the frame duration
    for count, delta in deltas:
        if delta - typical > gap_ticks and count:
            # Every frame of this run but the last lasts `delta`; a gap follows each of them.
            for _ in range(count):
                frames += 1
                end = anchor + (tick + typical) / timescale
                runs.append(Run(start, end, frames))
                tick += delta
                start, frames = anchor + tick / timescale, 0
            continue
        tick += count * delta
        frames += count
    if frames:
        runs.append(Run(start, anchor + tick / timescale, frames))
    return FileTimeline(path, "merged", tuple(runs))


class TimelineCache:
    """Timelines of closed files, by (path, inode, size, mtime); bounded, thread-safe."""

    def __init__(self, capacity: int = CACHE_FILES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int, int, int], FileTimeline] = OrderedDict()
        self._lock = threading.Lock()

    def timeline(self, candidate: Candidate) -> FileTimeline | None:
        """The file's runs; None when it cannot be read (gone, or not vigil's MP4: logged)."""
        path = candidate.path
        try:
            info = os.lstat(path)
            if candidate.kind == "open":
                return segment_runs(path, "open")
            key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
            with self._lock:
                found = self._items.get(key)
                if found is not None:
                    self._items.move_to_end(key)
                    return found
            made = merged_runs(path) if candidate.kind == "merged" else segment_runs(path)
        except FileNotFoundError:
            return None  # merged or deleted since the listing
        except (OSError, fmp4.Mp4Error, ValueError) as err:
            logger.warning("footage file unreadable for the spans index path={} error={}", path, err)
            return None
        with self._lock:
            self._items[key] = made
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return made


def candidates(root: Path) -> list[Candidate]:
    """Every footage file under `root` (closed, merged and being written), by earliest frame."""
    found = [Candidate(f.path, f.kind, f.start, f.hour_end + HOUR_OVERRUN_SECONDS)
             for f in list_footage(root)]
    for hour in hour_folders(root):
        for partial in partials_in(hour.path):
            start = segment_start(partial.name)
            if start is not None:
                found.append(Candidate(partial, "open", start, hour.start + SECONDS_PER_HOUR
                                       + HOUR_OVERRUN_SECONDS))
    return sorted(found, key=lambda c: (c.earliest, c.kind != "merged", c.path.name))


def overlapping(found: list[Candidate], start: float, end: float) -> list[Candidate]:
    return [c for c in found if c.earliest < end and c.latest > start]


def join_runs(timelines: Iterable[FileTimeline]) -> list[Span]:
    """Runs of many files as continuous spans; a run already covered (a merged hour and a
    segment it was made from, left by a crash) is counted once."""
    pieces = sorted(((run, t.path) for t in timelines for run in t.runs), key=lambda p: p[0].start)
    spans: list[Span] = []
    for run, path in pieces:
        if spans and run.end <= spans[-1].end + 1e-6 and run.start >= spans[-1].start - 1e-6:
            continue  # inside what is already counted
        if spans and run.start - spans[-1].end <= GAP_SECONDS:
            last = spans[-1]
            files = last.files if path in last.files else (*last.files, path)
            spans[-1] = Span(last.start, max(last.end, run.end), last.frames + run.frames, files)
        else:
            spans.append(Span(run.start, run.end, run.frames, (path,)))
    return spans


def recorded_spans(root: Path, start: float, end: float, cache: TimelineCache) -> list[Span]:
    """The continuous recorded spans under `root` that reach into [start, end)."""
    timelines = [t for c in overlapping(candidates(root), start, end) if (t := cache.timeline(c)) is not None]
    return [s for s in join_runs(timelines) if s.end > start and s.start < end][:MAX_SPANS]


def nearest_spans(root: Path, start: float, end: float, cache: TimelineCache) -> list[Span]:
    """The recorded span that ends last before `start` and the one that starts first after `end`."""
    found = candidates(root)
    before = [c for c in found if c.earliest < start]
    after = [c for c in found if c.latest > end]
    out: list[Span] = []
    for candidate in reversed(before):
        timeline = cache.timeline(candidate)
        earlier = [s for s in join_runs([timeline]) if s.end <= start] if timeline is not None else []
        if earlier:
            out.append(earlier[-1])
            break
    for candidate in after:
        timeline = cache.timeline(candidate)
        later = [s for s in join_runs([timeline]) if s.start >= end] if timeline is not None else []
        if later:
            out.append(later[0])
            break
    return out
