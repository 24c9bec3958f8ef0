"""HLS playlists (RFC 8216) over the fragments already on disk: no second encoder, no remux.

Every fragment vigil writes is a keyframe-aligned `moof`+`mdat` pair, so it is an HLS media
segment as it stands (fMP4): the playlist names it by byte range (`EXT-X-BYTERANGE`) in its
segment file, and the file's `ftyp`+`moov` by byte range as the init section (`EXT-X-MAP`).
Each segment file has its own init section, so every new file has its `EXT-X-MAP`. Most
files carry on the stream of the file before: vigil splits segments at keyframes of one
running encoder, so the decoder setup (sample description with SPS and PPS, timescale,
track) is the same and, on the wall-clock timeline below, the timestamps run on. That is no
discontinuity (RFC 8216 4.3.2.3: a change of file format, tracks, timestamp sequence,
encoding parameters or encoding sequence). `EXT-X-DISCONTINUITY` marks where the encoder did
start again: the setup differs (a quality step, another camera mode) or the frames pause for
longer than a recorded span allows (a recovery, a restart). VLC 3.0 keeps only a playlist's
first `EXT-X-MAP` and starts its MP4 reader again at a discontinuity without one
(modules/demux/hls/playlist/Parser.cpp: "FIXME: handle discontinuities"), so a tag at every
new file stopped it at the first segment boundary. The bytes come
from `/hls/{path}`, which names every segment by its closed name: a closed segment whole, the
segment being written (`NAME.mp4.partial` on disk) only up to the end of its last whole
fragment.

Each file's decode times start at 0. ffmpeg's HLS reader (5.1) feeds every file into one
MP4 parser and ignores the discontinuity, so a file restarting at 0 lands before what it
already played and its first fragment is dropped. `/hls/` therefore serves the fragments'
`tfdt` (baseMediaDecodeTime) on one timeline, the wall clock: a fragment starts at its
file's `vigil_start` plus its offset in the file, in the track's ticks. Only the tfdt value
is patched, in place and at its own width, so byte lengths and the playlists' byte ranges
stay as they are; the init section is served as written. Any client, live or recorded,
gets the same times, and a pause in recording is a pause in the timestamps.

The live playlist (`/live.m3u8`) rolls over the newest segment files' whole fragments; its
media sequence numbers are given out by `LiveSequence`, in the order fragments first
appear, so they keep rising for every client of this process. The recorded playlist
(`/vod.m3u8`) lists the fragments of a span and ends with `EXT-X-ENDLIST`. A merged hour is an
ordinary MP4 (index at the front, no fragments): the recorded playlist names its groups of
pictures instead, each made into an fMP4 media segment when asked (hls_merged).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from controller.surfaces import fmp4
from controller.surfaces.hls_merged import INDEXES, INIT_NAME
from controller.surfaces.spans import (
    GAP_SECONDS,
    HOUR_OVERRUN_SECONDS,
    Candidate,
    FileKind,
    anchor_of,
    candidates,
    overlapping,
    segment_runs,
)
from hw.footage import (
    PARTIAL_SUFFIX,
    SECONDS_PER_HOUR,
    final_path,
    footage_at,
    hour_folders,
    partial_at,
    partials_in,
    segment_start,
    segments_in,
)

LIVE_FRAGMENTS = 6
SCANS_REMEMBERED = 64  # files whose scan (and tfdt patches) every viewer's request reuses
MAX_VOD_FRAGMENTS = 100_000
REMEMBERED_FRAGMENTS = 4096
VERSION = 7  # EXT-X-MAP without I-frames-only needs 6; fMP4 segments, 7
CONTENT_TYPE = "application/vnd.apple.mpegurl"
HLS_PREFIX = "hls/"

Patches = tuple[tuple[int, bytes], ...]  # (file offset, bytes laid over the file's there)


@dataclass(frozen=True, slots=True)
class Entry:
    """One media segment of a playlist: a fragment of a segment file."""

    relative: str  # the file below the root, as /hls/ names it
    init_size: int
    offset: int
    size: int
    seconds: float
    starts_file: bool
    discontinuous: bool = False  # starts a file whose stream does not carry on the one before
    made: bool = False  # a group of a merged hour (hls_merged): `offset` is its number, no byte range


@dataclass(frozen=True, slots=True)
class Edges:
    """How a segment file meets its neighbours: its decoder setup and, in UTC seconds, where
    its frames begin and end."""

    setup: fmp4.DecoderSetup
    start: float  # its first frame
    last_frame: float  # its last frame's start
    end: float  # its last frame's end


def continues(before: Edges, after: Edges) -> bool:
    """Whether `after`'s frames carry on `before`'s stream: the same decoder setup, and its
    first frame after `before`'s last one with no pause longer than a recorded span allows."""
    return after.setup == before.setup and before.last_frame < after.start <= before.end + GAP_SECONDS


def _edges(path: Path, scanned: fmp4.FragmentedFile, moov: bytes) -> Edges | None:
    if not scanned.fragments:
        return None
    anchor = anchor_of(moov, path)
    first, last = scanned.fragments[0], scanned.fragments[-1]
    end = (last.start + last.duration - first.start) / scanned.timescale
    return Edges(fmp4.decoder_setup(moov), anchor,
                 anchor + end - last.last_duration / scanned.timescale, anchor + end)


Scan = tuple[fmp4.FragmentedFile, Patches, Edges | None]


class _ScanCache:
    """Scans of segment files by (path, inode, size, mtime): a file that has not changed since
    is not read again, so many viewers asking for the same fragment cost one scan. A segment
    being written changes size with each fragment, and so is scanned once per fragment."""

    def __init__(self, capacity: int = SCANS_REMEMBERED) -> None:
        self._items: OrderedDict[tuple[str, int, int, int], Scan] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def scan(self, path: Path) -> Scan:
        """The file's scan, wall-clock tfdt patches and edges (None: no whole fragment yet);
        OSError, fmp4.Mp4Error as scanning raises."""
        info = os.stat(path, follow_symlinks=False)
        key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        scanned = fmp4.scan_fragmented(path, limit=info.st_size)
        moov = fmp4.read_moov(path, limit=scanned.init_size)
        made = (scanned, wallclock_patches(path, scanned, moov), _edges(path, scanned, moov))
        with self._lock:
            self._items[key] = made
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return made


_SCANS = _ScanCache()


def _scan_of(candidate: Candidate) -> Scan | None:
    """The scan of a segment file (the open one by its closed name once it has closed); None
    when it cannot be read as one (gone, torn, or an hour merged into an ordinary MP4)."""
    try:
        return _SCANS.scan(candidate.path)
    except FileNotFoundError:
        if candidate.kind != "open":
            return None
        try:
            return _SCANS.scan(final_path(candidate.path))
        except (OSError, fmp4.Mp4Error):
            return None
    except (OSError, fmp4.Mp4Error) as err:
        logger.warning("segment unreadable for HLS path={} error={}", candidate.path, err)
        return None


def _fragments_of(candidate: Candidate, root: Path, before: Candidate | None) -> list[Entry]:
    """The fragments of `candidate`; the first is discontinuous unless the file carries on
    the stream of `before`, the file recorded before it."""
    found = _scan_of(candidate)
    if found is None:
        return []
    scanned, _, edges = found
    previous = None
    if before is not None and (before.kind != "merged" or _is_fragmented(before.path)):
        previous = _scan_of(before)
    joined = (edges is not None and previous is not None and previous[2] is not None
              and continues(previous[2], edges))
    # The open segment by its closed name: the URI outlives the rename (see media_file).
    relative = candidate.path.relative_to(root).as_posix().removesuffix(PARTIAL_SUFFIX)
    return [Entry(relative, scanned.init_size, f.offset, f.size, f.duration / scanned.timescale, i == 0,
                  discontinuous=i == 0 and not joined)
            for i, f in enumerate(scanned.fragments)]


class LiveSequence:
    """Media sequence numbers for the live playlist: one per fragment, in order of appearance."""

    def __init__(self) -> None:
        self._numbers: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._next = 0
        self._discontinuities: list[int] = []  # sequence numbers after an EXT-X-DISCONTINUITY
        self._lock = threading.Lock()

    def number(self, entry: Entry) -> int:
        key = (entry.relative, entry.offset)
        with self._lock:
            found = self._numbers.get(key)
            if found is not None:
                return found
            number = self._next
            self._next += 1
            self._numbers[key] = number
            if entry.discontinuous and number > 0:
                self._discontinuities.append(number)
            while len(self._numbers) > REMEMBERED_FRAGMENTS:
                self._numbers.popitem(last=False)
            return number

    def discontinuities_before(self, number: int) -> int:
        """The EXT-X-DISCONTINUITY-SEQUENCE of a playlist whose first fragment is `number`: the
        tags that are no longer in it, the first fragment's own included (a playlist writes no
        tag before its first fragment), so a fragment keeps its discontinuity number from one
        reload to the next (hls.js fails with levelParsingError when it changes)."""
        with self._lock:
            return sum(1 for n in self._discontinuities if n <= number)


def _header(entries: list[Entry], *, sequence: int, discontinuity_sequence: int, ended: bool) -> list[str]:
    longest = max((e.seconds for e in entries), default=1.0)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}",
             f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
             f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if ended:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    return lines


def _body(entries: list[Entry], first_is_discontinuity: bool) -> list[str]:
    lines: list[str] = []
    current_init: str | None = None
    for index, entry in enumerate(entries):
        if entry.relative != current_init:
            if entry.discontinuous and (index > 0 or first_is_discontinuity):
                lines.append("#EXT-X-DISCONTINUITY")
            if entry.made:
                lines.append(f'#EXT-X-MAP:URI="{HLS_PREFIX}{entry.relative}/{INIT_NAME}"')
            else:
                lines.append(f'#EXT-X-MAP:URI="{HLS_PREFIX}{entry.relative}",BYTERANGE="{entry.init_size}@0"')
            current_init = entry.relative
        lines.append(f"#EXTINF:{entry.seconds:.3f},")
        if entry.made:
            lines.append(f"{HLS_PREFIX}{entry.relative}/{entry.offset:06d}.m4s")
        else:
            lines.append(f"#EXT-X-BYTERANGE:{entry.size}@{entry.offset}")
            lines.append(f"{HLS_PREFIX}{entry.relative}")
    return lines


def _newest_segment_files(root: Path, hours: int = 2) -> list[Candidate]:
    """The closed and open segments of the newest `hours` hour folders, oldest first: what a
    live playlist can reach, without walking every older hour of the root on each reload."""
    found = []
    for hour in hour_folders(root)[-hours:]:
        latest = hour.start + SECONDS_PER_HOUR + HOUR_OVERRUN_SECONDS
        kinds: tuple[tuple[FileKind, list[Path]], ...] = (
            ("segment", segments_in(hour.path)), ("open", partials_in(hour.path)))
        for kind, paths in kinds:
            for path in paths:
                start = segment_start(path.name)
                if start is not None:
                    found.append(Candidate(path, kind, start, latest))
    return sorted(found, key=lambda c: (c.earliest, c.path.name))


def live_playlist(root: Path, sequence: LiveSequence, *, fragments: int = LIVE_FRAGMENTS) -> str | None:
    """The live playlist over the newest whole fragments under `root`; None when there are none."""
    return _live_playlist(root, sequence, fragments)[0]


def _live_playlist(root: Path, sequence: LiveSequence, fragments: int) -> tuple[str | None, tuple[Path, ...]]:
    """The live playlist, and the folders and files it was made from (what LivePlaylist watches)."""
    files = _newest_segment_files(root)
    entries: list[Entry] = []
    used: list[Path] = []
    for at in reversed(range(max(0, len(files) - 3), len(files))):
        candidate = files[at]
        entries[:0] = _fragments_of(candidate, root, files[at - 1] if at > 0 else None)
        used.append(candidate.path)
        if len(entries) >= fragments:
            break
    folders = {p.parent for p in used} | {p.parent.parent for p in used}
    watched = (root, *sorted(folders), *used)
    entries = entries[-fragments:]
    if not entries:
        return None, watched
    numbers = [sequence.number(e) for e in entries]
    first = numbers[0]
    lines = _header(entries, sequence=first, discontinuity_sequence=sequence.discontinuities_before(first),
                    ended=False)
    lines += _body(entries, first_is_discontinuity=False)
    return "\n".join(lines) + "\n", watched


Stamp = tuple[int, int, int, int] | None  # (inode, size, mtime ns, ctime ns); None: not there


def _stamp(path: Path) -> Stamp:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class LivePlaylist:
    """The live playlist, made again only when the footage it lists has changed.

    Every viewer reloads the live playlist about once a fragment; making it walks the root's
    hour folders and scans the newest files. Between two fragments nothing it is made of
    changes, so each request only stats what the last one was made from: the root, the date
    and hour folders of the files it lists (a file added, renamed or removed changes their
    mtime) and those files (the open segment grows by a fragment). A folder's mtime has the
    kernel's coarse clock: a change in the same tick as the look before it would not show, so
    a playlist made while a stamp was younger than FRESH_STAMP_SECONDS is not reused, and
    none is reused for longer than REUSE_SECONDS whatever the stamps say.
    """

    FRESH_STAMP_SECONDS = 0.05
    REUSE_SECONDS = 10.0

    def __init__(self, sequence: LiveSequence | None = None, *, fragments: int = LIVE_FRAGMENTS) -> None:
        self.sequence = sequence if sequence is not None else LiveSequence()
        self._fragments = fragments
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._watched: tuple[Path, ...] = ()
        self._stamps: tuple[Stamp, ...] | None = None
        self._made_at = 0.0
        self._text: str | None = None
        self.made = 0  # how many times it was made (not reused): for tests and the bench

    def __repr__(self) -> str:
        return f"<LivePlaylist made={self.made} watching={len(self._watched)}>"

    def cached(self, root: Path) -> tuple[bool, str | None]:
        """(True, the playlist) when the last one made still holds; (False, None) when not.

        Only stats: cheap enough to run on the server's event loop."""
        hit, text, _, _ = self._look(root)
        return hit, text

    def _look(self, root: Path) -> tuple[bool, str | None, tuple[Stamp, ...] | None, tuple[Path, ...]]:
        """(hit, the playlist, the stamps now of what the last one watched (None: another root),
        the paths it watched)."""
        with self._lock:
            root_then, watched, stamps, made_at, text = (
                self._root, self._watched, self._stamps, self._made_at, self._text)
        if root_then != root:
            return False, None, None, watched
        now = tuple(_stamp(p) for p in watched)
        hit = stamps is not None and now == stamps and time.time() - made_at <= self.REUSE_SECONDS
        return hit, text if hit else None, now, watched

    def text(self, root: Path) -> str | None:
        """The live playlist over the newest whole fragments under `root`; None: none yet."""
        looked_at = time.time()
        hit, text, before, watched_before = self._look(root)
        if hit:
            return text
        text, watched = _live_playlist(root, self.sequence, self._fragments)
        # The stamps taken before the files were read are what the next request compares with:
        # any change after them shows. They hold only for the same watched paths, and only when
        # none was touched within a clock tick of the look (see the class).
        newest = max((s[2] for s in before or () if s is not None), default=0) / 1e9
        trusted = (before is not None and watched == watched_before
                   and newest < looked_at - self.FRESH_STAMP_SECONDS)
        with self._lock:
            self.made += 1
            self._root, self._watched, self._made_at, self._text = root, watched, looked_at, text
            self._stamps = before if trusted else None
        return text


def _is_fragmented(path: Path) -> bool:
    try:
        return fmp4.is_fragmented(path)
    except (OSError, fmp4.Mp4Error):
        return False


def _groups_of(candidate: Candidate, root: Path, start: float, end: float) -> list[Entry]:
    """The groups of pictures of a merged hour that overlap [start, end) (see hls_merged)."""
    try:
        index = INDEXES.index(candidate.path)
    except (OSError, fmp4.Mp4Error) as err:
        logger.warning("merged hour unreadable for HLS path={} error={}", candidate.path, err)
        return []
    relative = candidate.path.relative_to(root).as_posix()
    found: list[Entry] = []
    for number, (tick, seconds) in enumerate(zip(index.starts, index.seconds, strict=True)):
        t0 = index.anchor + tick / index.timescale
        if t0 + seconds > start and t0 < end:
            found.append(Entry(relative, 0, number, 0, seconds, not found, discontinuous=not found,
                               made=True))
    return found


def vod_playlist(root: Path, start: float, end: float) -> str | None:
    """The recorded playlist of the segments' fragments in [start, end); None when none.

    Whole fragments, each from a keyframe: play starts at the keyframe at or before `start`
    and ends with the fragment that holds the last frame before `end`.
    """
    entries: list[Entry] = []
    before: Candidate | None = None
    for candidate in overlapping(candidates(root), start, end):
        previous, before = before, candidate
        if candidate.kind == "merged" and not _is_fragmented(candidate.path):
            entries += _groups_of(candidate, root, start, end)  # an hour merged before write-once
            continue
        try:
            timeline = segment_runs(candidate.path, candidate.kind)
        except (OSError, fmp4.Mp4Error):
            continue
        if not timeline.runs or timeline.runs[-1].end <= start or timeline.runs[0].start >= end:
            continue
        file_start = timeline.runs[0].start
        elapsed = 0.0
        for entry in _fragments_of(candidate, root, previous):
            t0 = file_start + elapsed
            elapsed += entry.seconds
            if t0 + entry.seconds > start and t0 < end:
                entries.append(entry)
        if len(entries) > MAX_VOD_FRAGMENTS:
            break
    if not entries:
        return None
    entries = entries[:MAX_VOD_FRAGMENTS]
    lines = _header(entries, sequence=0, discontinuity_sequence=0, ended=True)
    lines += _body(entries, first_is_discontinuity=False)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class MediaFile:
    """What `/hls/{path}` serves: `path` up to `limit` bytes (None: all), with `patches`
    (file offset, bytes of the same length) laid over what is read."""

    path: Path
    limit: int | None
    patches: Patches


def wallclock_patches(path: Path, scanned: fmp4.FragmentedFile, moov: bytes) -> Patches:
    """The tfdt values of `scanned`'s fragments moved onto the wall clock (see the module).

    A 4-byte tfdt (version 0; vigil's writer writes version 1) cannot hold wall-clock ticks:
    its value wraps modulo 2**32, which a player meets as one more discontinuity.
    """
    if not scanned.fragments:
        return ()
    anchor = anchor_of(moov, path)
    base = round(anchor * scanned.timescale) - scanned.fragments[0].start
    patches = []
    for fragment in scanned.fragments:
        value = max(0, base + fragment.start) % (1 << (8 * fragment.tfdt_bytes))
        patches.append((fragment.tfdt_at, value.to_bytes(fragment.tfdt_bytes, "big")))
    return tuple(patches)


def _served(path: Path, whole: bool) -> MediaFile | None:
    try:
        scanned, patches, _ = _SCANS.scan(path)
    except (OSError, fmp4.Mp4Error) as err:
        if not isinstance(err, FileNotFoundError):
            logger.warning("segment unreadable for HLS path={} error={}", path, err)
        return None
    return MediaFile(path, None if whole else scanned.length, patches)


def media_file(root: Path, relative: str) -> MediaFile | None:
    """What `/hls/{relative}` serves (see MediaFile); None: no such segment.

    `relative` names a segment by its closed name: the closed file whole, else the segment
    still being written under that name up to its last whole fragment. So a playlist's URI
    stays valid when the segment closes (the same bytes, renamed), and players that accept
    only media extensions (ffmpeg) take it. Nothing else is served (unfragmented merged hours, `.partial`
    names, names vigil does not write, links, `..`): the same refusals as /recordings.
    """
    found = footage_at(root, relative)
    if found is not None:
        # A merged hour is fragmented like a segment (adopted, or joined since write-once):
        # served by its fragments the same way. An older, unfragmented one goes through
        # hls_merged's groups of pictures instead.
        servable = found.kind == "segment" or (found.kind == "merged" and _is_fragmented(found.path))
        return _served(found.path, whole=True) if servable else None
    partial = partial_at(root, relative + PARTIAL_SUFFIX) if not relative.endswith(PARTIAL_SUFFIX) else None
    if partial is None:
        return None
    served = _served(partial, whole=False)
    if served is not None:
        return served
    closed = footage_at(root, relative)  # closed between the two looks
    return _served(closed.path, whole=True) if closed is not None and closed.kind == "segment" else None


_MAP_PREFIX = f'#EXT-X-MAP:URI="{HLS_PREFIX}'


def sign_media_uris(text: str, query_for: Callable[[str], str]) -> str:
    """`text`, a playlist made here, with `?` and `query_for(path)` after each media URI
    (`hls/PATH`): the URI lines and the EXT-X-MAP URIs (RFC 8216 4.1: a line that is not
    blank and does not start with `#` is a URI; vigil writes no other tag with a URI)."""
    queries: dict[str, str] = {}

    def signed(uri: str) -> str:
        path = uri[len(HLS_PREFIX):]
        query = queries.get(path)
        if query is None:
            query = queries[path] = query_for(path)
        return f"{uri}?{query}"

    lines = []
    for line in text.split("\n"):
        if line.startswith(HLS_PREFIX):
            line = signed(line)
        elif line.startswith(_MAP_PREFIX):
            uri, quote, rest = line[len(_MAP_PREFIX) - len(HLS_PREFIX):].partition('"')
            line = f'#EXT-X-MAP:URI="{signed(uri)}{quote}{rest}'
        lines.append(line)
    return "\n".join(lines)
