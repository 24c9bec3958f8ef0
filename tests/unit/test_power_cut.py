"""A power-cut model of the segment writer: what survives is only what was fsynced.

The evidence for "a power cut loses at most the open fragment" is the real `vigil run` on
durablefs, a FUSE filesystem with these same semantics (tests/e2e/test_power_cut_fs.py). This
model stays beside it for what a handful of random cuts of a live process cannot give: every
cut point of one recording, exhaustively, including a split at midnight that creates new date
and hour folders, in a second of CPU time.

The storage model, as a journalling filesystem gives it after a cut:
- a file's content survives as of its last fsync; bytes written after it may survive as a
  prefix of what was written (a partly written-back page), never anything else;
- a directory entry (a created file, a created directory, a rename) survives only as of
  its directory's last fsync; an entry that never reached a fsynced directory is gone, and
  a file renamed after that fsync survives under its old name.

The writer runs for real (libx264 packets of the synthetic camera, real files, real fsync);
`hw.writer.os` is replaced by a proxy whose `fsync` notes what became durable before doing
the real fsync. Each cut point yields a crash image: the durable state plus the bytes still
in flight. The cut points are every place the power can go that the writer's durability
depends on: after each `write()` (or the final `close()`) returns, and just before each
fsync inside one (a fragment flushed but not yet synced; a segment renamed but its
directory not yet synced; a new folder or segment created but not yet synced).

The bound proven for every image, after `recover_partials`: every file decodes; the frames
kept are exactly 0..K-1; and `acknowledged - K <= G` where `acknowledged` counts packets
whose `write()` returned and G = keyframe_interval(fps, fragment_seconds). Why: a fragment
is flushed into the file when the next keyframe is muxed and fsynced at once, so when
`write()` returns every frame before the newest keyframe is durable; only the open fragment
(at most G frames: the newest keyframe and what followed it) is in the muxer's memory. A cut
inside a `write()` can also lose the packet being written, which was never acknowledged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.camera import CameraMode, EncodedPacket
from hw.encoder import keyframe_interval
from hw.footage import PARTIAL_SUFFIX
from hw.recovery import recover_partials
from hw.writer import SegmentWriter
from tests.helpers import encode_synthetic, frame_numbers, gaps, recorded_numbers, segments

# 160 px: the frame-number code needs cells of 3+ px to be read back (see hw/framecode.py).
MODE = CameraMode(160, 120, 30)
FRAGMENT_SECONDS = 0.2
GOP = keyframe_interval(MODE.fps, FRAGMENT_SECONDS)  # 6 frames: the most a cut may lose
SEGMENT_SECONDS = 1.0
FRAME_COUNT = 150
# 2026-09-21T23:59:57.5Z: the run crosses midnight at frame 75, so the writer also creates a
# new date and hour folder mid-run (split at keyframe 78). Segments start in distinct
# seconds, so their names sort in recording order.
START = 1_790_035_197.5

Inode = tuple[int, int]
Entry = tuple[Inode, bool]  # (inode, is a directory)


@dataclass(frozen=True)
class CrashImage:
    """What the storage holds at one cut point: durable state and the bytes in flight."""

    label: str
    acknowledged: int  # packets whose write() returned before the cut
    started: int  # packets handed to write() before the cut (one more if the cut is inside)
    # Content as of each file's last fsync; entries as of each directory's last fsync;
    # every file's content at the cut. Left out of repr: a failure names the cut, not bytes.
    durable_files: dict[Inode, bytes] = field(repr=False)
    durable_dirs: dict[Inode, dict[str, Entry]] = field(repr=False)
    live_files: dict[Inode, bytes] = field(repr=False)


def inode(st_result: os.stat_result) -> Inode:
    return (st_result.st_dev, st_result.st_ino)


def read_whole(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


class DurableStorage:
    """Stands in for the `os` module inside hw.writer: records what each fsync made durable."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.durable_files: dict[Inode, bytes] = {}
        self.durable_dirs: dict[Inode, dict[str, Entry]] = {}
        self.images: list[CrashImage] = []
        self.acknowledged = 0
        self.started = 0
        self.operation = "start"
        self.fsyncs_in_operation = 0

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        # The power may go just before this fsync: everything it would make durable is lost.
        self.capture(f"{self.operation}, before its fsync #{self.fsyncs_in_operation}")
        self.fsyncs_in_operation += 1
        st_result = os.fstat(fd)
        if stat.S_ISDIR(st_result.st_mode):
            entries = {}
            for name in os.listdir(fd):
                child = os.stat(name, dir_fd=fd, follow_symlinks=False)
                entries[name] = (inode(child), stat.S_ISDIR(child.st_mode))
            self.durable_dirs[inode(st_result)] = entries
        else:
            self.durable_files[inode(st_result)] = read_whole(fd)
        os.fsync(fd)

    def begin(self, operation: str, *, hands_over_packet: bool = True) -> None:
        self.operation = operation
        self.fsyncs_in_operation = 0
        self.started += hands_over_packet

    def end(self) -> None:
        self.acknowledged = self.started
        self.capture(f"after {self.operation}")

    def capture(self, label: str) -> None:
        live = {}
        for folder, _, names in os.walk(self.disk):
            for name in names:
                path = Path(folder) / name
                live[inode(path.stat())] = path.read_bytes()
        self.images.append(CrashImage(label, self.acknowledged, self.started,
                                      dict(self.durable_files), dict(self.durable_dirs), live))


def encoded_packets() -> list[EncodedPacket]:
    """FRAME_COUNT synthetic frames numbered from 0, encoded with a keyframe every GOP."""
    out = encode_synthetic(MODE, FRAME_COUNT, fragment_seconds=FRAGMENT_SECONDS, wall_start=START)
    assert len(out) == FRAME_COUNT  # zerolatency: one packet per frame, none held back
    return out


@dataclass(frozen=True)
class Trace:
    """Every crash image of one recording, and where that recording lived."""

    disk: Path
    disk_inode: Inode
    images: list[CrashImage]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trace]:
    """Record FRAME_COUNT packets once, capturing a crash image at every cut point."""
    disk = tmp_path_factory.mktemp("disk")
    storage = DurableStorage(disk)
    storage.capture("before anything was written")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hw.writer.os", storage)
        writer = SegmentWriter(disk / "rec", width=MODE.width, height=MODE.height, fps=MODE.fps,
                               segment_seconds=SEGMENT_SECONDS)
        for i, packet in enumerate(encoded_packets()):
            storage.begin(f"write of packet {i}")
            writer.write(packet)
            storage.end()
        storage.begin("close", hands_over_packet=False)
        writer.close()
        storage.end()
    yield Trace(disk, inode(disk.stat()), storage.images)


TornTail = Callable[[Path, int], int]  # (file, bytes written after its last fsync) -> bytes kept


def build_survivor(trace: Trace, image: CrashImage, dest: Path, torn_tail: TornTail) -> None:
    """Lay out under `dest` what the disk holds after the power comes back."""

    def build(directory: Inode, into: Path) -> None:
        for name, (node, is_dir) in sorted(image.durable_dirs.get(directory, {}).items()):
            target = into / name
            if is_dir:
                target.mkdir()
                build(node, target)
                continue
            durable = image.durable_files.get(node, b"")  # never fsynced: no content is durable
            live = image.live_files.get(node, durable)
            # The model assumes an append-only writer: what was synced is never rewritten.
            assert live[: len(durable)] == durable, f"{name} was rewritten after its fsync"
            in_flight = live[len(durable):]
            target.write_bytes(durable + in_flight[: torn_tail(target, len(in_flight))])

    build(trace.disk_inode, dest)


_DECODED: dict[bytes, list[int]] = {}


def decoded_numbers(path: Path) -> list[int]:
    """Frame numbers of `path`, decoded with PyAV; files with the same bytes decode once.

    Most crash images share their closed segments, and a recovered partial is always cut at
    a fragment boundary, so a few dozen distinct files cover hundreds of images.
    """
    key = hashlib.sha256(path.read_bytes()).digest()
    if key not in _DECODED:
        with av.open(str(path)) as container:
            first = next(container.demux(video=0))
            assert first.is_keyframe, f"{path.name} does not start with a keyframe"
        _DECODED[key] = frame_numbers(path)  # raises if the file does not decode
    return _DECODED[key]


def check_recovered(root: Path, image: CrashImage) -> int:
    """Recover `root` and check the promise; returns K, the frames kept."""
    recover_partials(root)
    assert not list(root.rglob("*" + PARTIAL_SUFFIX)), f"{image.label}: a .partial is left"
    kept: list[int] = []
    for path in segments(root):  # names sort in recording order (distinct start seconds)
        numbers = decoded_numbers(path)
        assert numbers, f"{image.label}: {path.name} holds no frame"
        kept.extend(numbers)
    assert kept == list(range(len(kept))), f"{image.label}: kept frames break at {gaps(kept)}"
    k = len(kept)
    assert k <= image.started, f"{image.label}: {k} frames kept, {image.started} handed over"
    assert image.acknowledged - k <= GOP, (
        f"{image.label}: lost {image.acknowledged - k} acknowledged frames, bound {GOP}")
    assert k % GOP == 0 or k == FRAME_COUNT, f"{image.label}: kept {k}, not a fragment boundary"
    return k


def test_the_trace_covers_every_kind_of_cut(trace: Trace) -> None:
    labels = [image.label for image in trace.images]
    assert len([x for x in labels if x.startswith("after write")]) == FRAME_COUNT
    assert "after close" in labels
    # A split is four fsyncs (old segment, its folder after the rename, the new segment's
    # folder twice); the midnight split also syncs the two folders it creates.
    assert "write of packet 30, before its fsync #2" in labels
    assert "write of packet 78, before its fsync #4" in labels
    final = trace.images[-1]
    assert final.acknowledged == FRAME_COUNT


def test_every_cut_point_without_torn_tail_and_with_all_of_it(trace: Trace, tmp_path: Path) -> None:
    """Exhaustive over cut points, at both extremes of what an unsynced tail leaves."""
    worst = 0
    for n, image in enumerate(trace.images):
        for keep_in_flight in (False, True):
            dest = tmp_path / f"{n}-{int(keep_in_flight)}"
            dest.mkdir()
            build_survivor(trace, image, dest,
                           lambda _path, extra, keep=keep_in_flight: extra if keep else 0)
            k = check_recovered(dest / "rec", image)
            worst = max(worst, image.acknowledged - k)
            shutil.rmtree(dest)
    assert worst == GOP  # the bound is reached: a cut just before a keyframe loses a fragment
    # A clean close keeps everything.
    dest = tmp_path / "closed"
    dest.mkdir()
    build_survivor(trace, trace.images[-1], dest, lambda _path, _extra: 0)
    assert recorded_numbers(dest / "rec") == list(range(FRAME_COUNT))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_power_cut_anywhere_keeps_a_decodable_prefix_losing_at_most_one_fragment(
    trace: Trace, data: st.DataObject
) -> None:
    image = data.draw(st.sampled_from(trace.images), label="cut")

    def torn_tail(path: Path, extra: int) -> int:
        return data.draw(st.integers(0, extra), label=f"torn bytes of {path.name}") if extra else 0

    with tempfile.TemporaryDirectory(prefix="vigil-powercut-") as scratch:
        dest = Path(scratch)
        build_survivor(trace, image, dest, torn_tail)
        check_recovered(dest / "rec", image)
