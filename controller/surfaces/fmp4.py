"""Where things are inside vigil's MP4 files, read from the box headers without decoding.

A segment is fragmented MP4: `ftyp`, `moov` (the init section an HLS player needs), then a
`moof`+`mdat` pair per fragment, each starting at a keyframe. The box walk is the one
hw/recovery.py `playable_length` does (whole boxes only: a box cut short is where the file
ends for us), plus the few fields of `mdhd`, `tfhd`, `tfdt` and `trun` that give each
fragment's start, duration and frame count. A merged hour is an ordinary MP4 with its index
at the front: its frame times come from `stts` (a gap kept by the merge is one long delta).

Everything here reads at most the boxes' headers and the small index boxes, with bounded
reads: never the media, and never past `limit` (the whole-fragment length of a segment
still being written).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 8
LARGE_HEADER_BYTES = 16
# moov of a segment is about a kilobyte; of a merged hour at 30 fps, a few hundred KiB
# (stsz). Index boxes bigger than this are not vigil's and are not read.
MAX_INDEX_BOX_BYTES = 64 * 1024 * 1024
MAX_MOOF_BYTES = 4 * 1024 * 1024
_CONTAINERS = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"traf")


class Mp4Error(ValueError):
    """The file is not laid out as vigil writes MP4 files."""


@dataclass(frozen=True, slots=True)
class Fragment:
    """One `moof`+`mdat` pair: bytes [offset, offset + size), frames from `start` ticks on."""

    offset: int
    size: int
    start: int  # decode time of its first frame, in the track's timescale
    duration: int  # in the track's timescale
    frames: int
    tfdt_at: int = 0  # file offset of the tfdt's baseMediaDecodeTime value
    tfdt_bytes: int = 8  # its width: 8 (tfdt version 1) or 4 (version 0)
    last_duration: int = 0  # its last frame's, in the track's timescale (0: no frame)


@dataclass(frozen=True, slots=True)
class FragmentedFile:
    """A segment's init section and its whole fragments."""

    timescale: int
    init_size: int  # ftyp + moov: bytes [0, init_size)
    fragments: tuple[Fragment, ...]

    @property
    def length(self) -> int:
        """Bytes up to the end of the last whole fragment (the init alone when there is none)."""
        return self.fragments[-1].offset + self.fragments[-1].size if self.fragments else self.init_size


def _boxes(fd: int, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(kind, offset, header size, box size) of the whole boxes in [start, end)."""
    found = []
    offset = start
    while offset + HEADER_BYTES <= end:
        head = os.pread(fd, LARGE_HEADER_BYTES, offset)
        if len(head) < HEADER_BYTES:
            break
        size, kind = struct.unpack(">I4s", head[:HEADER_BYTES])
        header = HEADER_BYTES
        if size == 1:
            if len(head) < LARGE_HEADER_BYTES:
                break
            size = struct.unpack(">Q", head[HEADER_BYTES:])[0]
            header = LARGE_HEADER_BYTES
        elif size == 0:
            size = end - offset  # to the end of the file
        if size < header or offset + size > end:
            break  # cut short (a fragment still being written): the file ends here for us
        found.append((kind, offset, header, size))
        offset += size
    return found


def _read_box(fd: int, offset: int, header: int, size: int, cap: int) -> bytes:
    if size - header > cap:
        raise Mp4Error(f"a box of {size} bytes is larger than vigil writes")
    return os.pread(fd, size - header, offset + header)


def _children(data: bytes) -> dict[bytes, list[bytes]]:
    """The payloads of the boxes directly inside a container's payload, by kind."""
    out: dict[bytes, list[bytes]] = {}
    offset = 0
    while offset + HEADER_BYTES <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = HEADER_BYTES
        if size == 1 and offset + LARGE_HEADER_BYTES <= len(data):
            size = struct.unpack_from(">Q", data, offset + HEADER_BYTES)[0]
            header = LARGE_HEADER_BYTES
        if size < header or offset + size > len(data):
            break
        out.setdefault(kind, []).append(data[offset + header : offset + size])
        offset += size
    return out


def _payload_at(data: bytes, kind: bytes) -> int:
    """Where the payload of the first `kind` box directly inside `data` starts; -1: none."""
    offset = 0
    while offset + HEADER_BYTES <= len(data):
        size, found = struct.unpack_from(">I4s", data, offset)
        header = HEADER_BYTES
        if size == 1 and offset + LARGE_HEADER_BYTES <= len(data):
            size = struct.unpack_from(">Q", data, offset + HEADER_BYTES)[0]
            header = LARGE_HEADER_BYTES
        if size < header or offset + size > len(data):
            break
        if found == kind:
            return offset + header
        offset += size
    return -1


def _path(data: bytes, *kinds: bytes) -> bytes:
    for kind in kinds:
        found = _children(data).get(kind)
        if not found:
            raise Mp4Error(f"no {kind.decode()} box")
        data = found[0]
    return data


def _timescale(moov: bytes) -> int:
    mdhd = _path(moov, b"trak", b"mdia", b"mdhd")
    version = mdhd[0]
    timescale = struct.unpack_from(">I", mdhd, 20 if version == 1 else 12)[0]
    if timescale <= 0:
        raise Mp4Error("track timescale is 0")
    return int(timescale)


# Boxes in a sample entry that no decoder reads: the bit-rate hint (ISO/IEC 14496-12 8.5.2.2),
# which a merge's muxer adds and the segment writer's does not.
INFORMATIVE_ENTRY_BOXES = frozenset({b"btrt"})
VISUAL_ENTRY_FIELDS_BYTES = 78  # VisualSampleEntry's fields before its boxes (14496-12 12.1.3)

DecoderSetup = tuple[int, bytes, int, int, tuple[tuple[bytes, bytes], ...], bytes]


def decoder_setup(moov: bytes) -> DecoderSetup:
    """What a decoder takes from an init section, without what differs from file to file
    (creation times, vigil's tags, the muxer's name and bit-rate hint): the track's
    timescale; its sample entry's codec, width, height and configuration boxes (`avcC`:
    profile, SPS and PPS); its fragment defaults (`mvex`: track ID, default durations).
    Fragments of two files with the same setup decode as one stream."""
    stsd = _path(moov, b"trak", b"mdia", b"minf", b"stbl", b"stsd")
    # A full box (version, flags), the entry count, then the first sample entry's box.
    if len(stsd) < 16 + VISUAL_ENTRY_FIELDS_BYTES:
        raise Mp4Error("stsd holds no visual sample entry")
    size, codec = struct.unpack_from(">I4s", stsd, 8)
    entry = stsd[16 : 8 + size]
    if len(entry) < VISUAL_ENTRY_FIELDS_BYTES:
        raise Mp4Error("the sample entry is cut short")
    width, height = struct.unpack_from(">HH", entry, 24)
    inside = _children(entry[VISUAL_ENTRY_FIELDS_BYTES:])
    boxes = tuple(sorted((kind, payload) for kind, payloads in inside.items()
                         if kind not in INFORMATIVE_ENTRY_BOXES for payload in payloads))
    return (_timescale(moov), codec, width, height, boxes, _path(moov, b"mvex"))


def _default_duration(moov: bytes) -> int:
    try:
        trex = _path(moov, b"mvex", b"trex")
    except Mp4Error:
        return 0
    return int(struct.unpack_from(">I", trex, 12)[0])


def _fragment(moof: bytes, offset: int, size: int, default_duration: int, payload_at: int) -> Fragment:
    """The fragment whose moof payload `moof` starts at file offset `payload_at`."""
    traf = _path(moof, b"traf")
    boxes = _children(traf)
    tfhd = boxes.get(b"tfhd", [b""])[0]
    if len(tfhd) < 8:
        raise Mp4Error("moof without tfhd")
    flags = int.from_bytes(tfhd[1:4], "big")
    pos = 8
    if flags & 0x01:
        pos += 8  # base data offset
    if flags & 0x02:
        pos += 4  # sample description index
    duration_each = default_duration
    if flags & 0x08:
        duration_each = struct.unpack_from(">I", tfhd, pos)[0]
    tfdt = boxes.get(b"tfdt", [b""])[0]
    if len(tfdt) < 8:
        raise Mp4Error("moof without tfdt")
    start = struct.unpack_from(">Q", tfdt, 4)[0] if tfdt[0] == 1 else struct.unpack_from(">I", tfdt, 4)[0]
    traf_at = _payload_at(moof, b"traf")
    tfdt_at = payload_at + traf_at + _payload_at(traf, b"tfdt") + 4  # after version and flags
    frames = total = last = 0
    for trun in boxes.get(b"trun", []):
        tflags = int.from_bytes(trun[1:4], "big")
        count = struct.unpack_from(">I", trun, 4)[0]
        pos = 8 + (4 if tflags & 0x01 else 0) + (4 if tflags & 0x04 else 0)
        per_sample = sum(4 for bit in (0x100, 0x200, 0x400, 0x800) if tflags & bit)
        if tflags & 0x100:
            for i in range(count):
                last = struct.unpack_from(">I", trun, pos + i * per_sample)[0]
                total += last
        elif count:
            total += count * duration_each
            last = duration_each
        frames += count
    return Fragment(offset, size, int(start), int(total), int(frames), tfdt_at, 8 if tfdt[0] == 1 else 4,
                    int(last))


def scan_fragmented(path: Path, *, limit: int | None = None) -> FragmentedFile:
    """The init section and whole fragments of a vigil segment (closed or `.partial`).

    `limit` caps how far the file is read (defaults to its size now). Raises Mp4Error when
    the file is not a fragmented MP4 as vigil writes it, OSError when it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        end = size if limit is None else min(size, limit)
        boxes = _boxes(fd, 0, end)
        if not boxes or boxes[0][0] != b"ftyp":
            raise Mp4Error(f"{path.name} does not start with ftyp")
        moov = None
        init_size = 0
        fragments: list[Fragment] = []
        pending: tuple[bytes, int, int] | None = None
        timescale = default_duration = 0
        for kind, offset, header, box_size in boxes[1:]:
            if kind == b"moov" and moov is None:
                moov = _read_box(fd, offset, header, box_size, MAX_INDEX_BOX_BYTES)
                timescale, default_duration = _timescale(moov), _default_duration(moov)
                init_size = offset + box_size
            elif kind == b"moof" and moov is not None:
                pending = (_read_box(fd, offset, header, box_size, MAX_MOOF_BYTES), offset, header)
            elif kind == b"mdat" and pending is not None:
                moof, moof_offset, moof_header = pending
                pending = None
                fragments.append(_fragment(moof, moof_offset, offset + box_size - moof_offset,
                                           default_duration, moof_offset + moof_header))
        if moov is None:
            raise Mp4Error(f"{path.name} has no whole moov yet")
        if b"mvex" not in _children(moov):
            raise Mp4Error(f"{path.name} is not fragmented")
        return FragmentedFile(timescale, init_size, tuple(fragments))
    finally:
        os.close(fd)


def is_fragmented(path: Path) -> bool:
    """Whether the file's moov announces fragments (`mvex`); Mp4Error when it has no moov."""
    return b"mvex" in _children(read_moov(path))


def sample_deltas(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(timescale, stts runs of (count, delta)) of an ordinary MP4 such as a merged hour."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for kind, offset, header, box_size in _boxes(fd, 0, size):
            if kind == b"moov":
                moov = _read_box(fd, offset, header, box_size, MAX_INDEX_BOX_BYTES)
                stts = _path(moov, b"trak", b"mdia", b"minf", b"stbl", b"stts")
                count = struct.unpack_from(">I", stts, 4)[0]
                if 8 + 8 * count > len(stts):
                    raise Mp4Error("stts is cut short")
                runs = [struct.unpack_from(">II", stts, 8 + 8 * i) for i in range(count)]
                return _timescale(moov), [(int(n), int(d)) for n, d in runs]
            if kind == b"mdat":
                break
        raise Mp4Error(f"{path.name} has no index before its media")
    finally:
        os.close(fd)


def metadata_tags(moov: bytes) -> dict[str, str]:
    """The `use_metadata_tags` tags in a moov's udta/meta (keys + ilst), such as vigil_start."""
    try:
        meta = _path(moov, b"udta", b"meta")
    except Mp4Error:
        return {}
    children = _children(meta[4:])  # meta is a full box: version and flags first
    keys_box, ilst = children.get(b"keys", [b""])[0], children.get(b"ilst", [b""])[0]
    names: list[str] = []
    if len(keys_box) >= 8:
        count = struct.unpack_from(">I", keys_box, 4)[0]
        pos = 8
        for _ in range(count):
            if pos + 8 > len(keys_box):
                break
            size = struct.unpack_from(">I", keys_box, pos)[0]
            if size < 8:
                break
            names.append(keys_box[pos + 8 : pos + size].decode("utf-8", errors="replace"))
            pos += size
    tags: dict[str, str] = {}
    pos = 0
    while pos + 8 <= len(ilst):
        size, index = struct.unpack_from(">II", ilst, pos)
        if size < 8 or pos + size > len(ilst):
            break
        data = _children(ilst[pos + 8 : pos + size]).get(b"data", [b""])[0]
        if 1 <= index <= len(names) and len(data) >= 8:
            tags[names[index - 1]] = data[8:].decode("utf-8", errors="replace")
        pos += size
    return tags


def read_moov(path: Path, *, limit: int | None = None) -> bytes:
    """The payload of the file's moov box (before any media); Mp4Error when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for kind, offset, header, box_size in _boxes(fd, 0, size if limit is None else min(size, limit)):
            if kind == b"moov":
                return _read_box(fd, offset, header, box_size, MAX_INDEX_BOX_BYTES)
            if kind in (b"mdat", b"moof"):
                break
        raise Mp4Error(f"{path.name} has no index before its media")
    finally:
        os.close(fd)
