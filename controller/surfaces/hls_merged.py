"""HLS media segments made from a merged hour, for the recorded playlist (`/vod.m3u8`).

A merged hour is an ordinary MP4 (index at the front, one `mdat`): it has no fragments to
name by byte range, as segments have. Its recorded playlist names one media segment per
group of pictures instead (a keyframe up to the next), at `/hls/DATE/HH.mp4/NNNNNN.m4s`,
and an init section at `/hls/DATE/HH.mp4/init.mp4`. Each is made when asked: the group's
packets are copied (no re-encode) into a fragmented MP4 in memory with PyAV, and its `tfdt`
is set on the wall clock the same way `/hls/` serves a segment's fragments (hls module), so
a player moves from a merged hour to the next hour's segments on one timeline.

The groups come from the hour's own index (`stss` keyframes, `stts` durations), read once
per file and remembered; a merged hour never changes once written.
"""

from __future__ import annotations

import io
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import av

from controller.surfaces import fmp4
from controller.surfaces.spans import anchor_of
from hw.footage import footage_at

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
INIT_NAME = "init.mp4"
GROUP_NAME = re.compile(r"(\d{6})\.m4s")
INDEXES_REMEMBERED = 16
MAX_GROUP_PACKETS = 100_000  # a group longer than this is not a group vigil writes


@dataclass(frozen=True, slots=True)
class MergedIndex:
    """The groups of pictures of a merged hour: where each starts, in its own ticks."""

    timescale: int
    anchor: float  # UTC seconds of the first frame
    starts: tuple[int, ...]  # decode time of each group's keyframe
    seconds: tuple[float, ...]  # each group's duration


def _stbl(moov: bytes) -> dict[bytes, list[bytes]]:
    return fmp4._children(fmp4._path(moov, b"trak", b"mdia", b"minf", b"stbl"))


def _table(box: bytes, width: int) -> list[tuple[int, ...]]:
    """The entries of a full box `count` + `count` x `width` uint32 (stts, stss)."""
    if len(box) < 8:
        raise fmp4.Mp4Error("a sample table is cut short")
    count = struct.unpack_from(">I", box, 4)[0]
    if 8 + 4 * width * count > len(box):
        raise fmp4.Mp4Error("a sample table is cut short")
    return [struct.unpack_from(">" + "I" * width, box, 8 + 4 * width * i) for i in range(count)]


def merged_index(path: Path) -> MergedIndex:
    """The groups of `path` from its index; fmp4.Mp4Error, OSError as reading raises."""
    moov = fmp4.read_moov(path)
    timescale = fmp4._timescale(moov)
    tables = _stbl(moov)
    if b"stts" not in tables:
        raise fmp4.Mp4Error(f"{path.name} has no stts")
    deltas = [(int(n), int(d)) for n, d in _table(tables[b"stts"][0], 2)]
    total = sum(n for n, _ in deltas)
    # stss numbers sync samples from 1; without one every sample is a keyframe (ISO 14496-12 8.6.2)
    keys = [int(k[0]) - 1 for k in _table(tables[b"stss"][0], 1)] if b"stss" in tables else list(range(total))
    keys = sorted(k for k in set(keys) if 0 <= k < total)
    if not keys or keys[0] != 0:
        keys.insert(0, 0)  # frames before the first keyframe cannot play alone: they join it
    times: list[int] = []
    sample, tick = 0, 0
    pending = iter(keys)
    wanted = next(pending, None)
    for count, delta in deltas:
        while wanted is not None and wanted < sample + count:
            times.append(tick + (wanted - sample) * delta)
            wanted = next(pending, None)
        sample += count
        tick += count * delta
    ends = [*times[1:], tick]
    starts = tuple(times)
    return MergedIndex(timescale, anchor_of(moov, path), starts,
                       tuple((b - a) / timescale for a, b in zip(starts, ends, strict=True)))


class _IndexCache:
    def __init__(self, capacity: int = INDEXES_REMEMBERED) -> None:
        self._items: OrderedDict[tuple[str, int, int, int], MergedIndex] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def index(self, path: Path) -> MergedIndex:
        info = path.stat()
        key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        made = merged_index(path)
        with self._lock:
            self._items[key] = made
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return made


INDEXES = _IndexCache()


def _fragmented(path: Path, group: int) -> bytes:
    """An fMP4 (ftyp, moov, moof, mdat) of group `group` of `path`."""
    index = INDEXES.index(path)
    out = io.BytesIO()
    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        first = stream.start_time or 0
        output = av.open(out, "w", format="mp4", options={"movflags": MOVFLAGS})
        with output:
            target = output.add_stream_from_template(stream)
            start = first + index.starts[group]
            end = first + index.starts[group + 1] if group + 1 < len(index.starts) else None
            source.seek(start, stream=stream, backward=True, any_frame=False)
            copied = 0
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue
                if packet.dts < start:
                    continue  # the seek landed on an earlier keyframe
                if (end is not None and packet.dts >= end) or copied >= MAX_GROUP_PACKETS:
                    break
                packet.stream = target
                output.mux(packet)
                copied += 1
    return out.getvalue()


def _boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(kind, offset, size) of the top-level boxes of `data`."""
    found = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
        if size < 8 or offset + size > len(data):
            break
        found.append((kind, offset, size))
        offset += size
    return found


def init_section(path: Path) -> bytes:
    """The ftyp + moov every group of `path` plays with (the muxer writes them with the first
    group: a muxer given no packet writes nothing)."""
    data = _fragmented(path, 0)
    return b"".join(data[o : o + s] for kind, o, s in _boxes(data) if kind in (b"ftyp", b"moov"))


def group_segment(path: Path, group: int) -> bytes:
    """Group `group` of `path` as moof + mdat, its tfdt on the wall clock; IndexError: no such group."""
    index = INDEXES.index(path)
    if not 0 <= group < len(index.starts):
        raise IndexError(group)
    data = _fragmented(path, group)
    boxes = _boxes(data)
    moov = next((data[o + 8 : o + s] for kind, o, s in boxes if kind == b"moov"), None)
    if moov is None:
        raise fmp4.Mp4Error("the remuxed group has no moov")
    timescale = fmp4._timescale(moov)
    wall = round(index.anchor * timescale) + round(index.starts[group] * timescale / index.timescale)
    body = bytearray()
    for kind, offset, size in boxes:
        if kind == b"moof":
            body += _with_tfdt(data[offset : offset + size], wall)
        elif kind == b"mdat":
            body += data[offset : offset + size]
    if not body:
        raise fmp4.Mp4Error("the remuxed group has no fragment")
    return bytes(body)


def _with_tfdt(moof: bytes, value: int) -> bytes:
    """`moof` (a whole box) with its tfdt's baseMediaDecodeTime set to `value`, at its width."""
    traf = fmp4._payload_at(moof[8:], b"traf")
    tfdt = fmp4._payload_at(moof[8 + traf :], b"tfdt") if traf >= 0 else -1
    if tfdt < 0:
        raise fmp4.Mp4Error("a fragment without tfdt")
    at = 8 + traf + tfdt  # the tfdt's payload: version, flags, then the value
    width = 8 if moof[at] == 1 else 4
    out = bytearray(moof)
    out[at + 4 : at + 4 + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes(out)


def split_uri(relative: str) -> tuple[str, int | None] | None:
    """(the merged hour below the root, the group number or None for the init section) that a
    generated URI names; None when `relative` is no such URI."""
    hour, _, leaf = relative.rpartition("/")
    if not hour.endswith(".mp4"):
        return None
    if leaf == INIT_NAME:
        return hour, None
    match = GROUP_NAME.fullmatch(leaf)
    return (hour, int(match[1])) if match is not None else None


def generated_media(root: Path, relative: str) -> bytes | None:
    """The init section or group that `relative` names in a merged hour below `root`; None
    when it names nothing (no such hour, not a merged hour, no such group, unreadable)."""
    split = split_uri(relative)
    if split is None:
        return None
    found = footage_at(root, split[0])
    if found is None or found.kind != "merged":
        return None
    try:
        return init_section(found.path) if split[1] is None else group_segment(found.path, split[1])
    except (OSError, IndexError, fmp4.Mp4Error, av.FFmpegError):
        return None
