"""Shared test helpers: decode recordings back into frame numbers."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import av

from controller.surfaces.fmp4 import read_moov
from controller.surfaces.spans import anchor_of
from hw import framecode
from hw.camera import CameraMode, EncodedPacket
from hw.encoder import H264Encoder
from hw.synthetic import FrameCounter, SyntheticCamera


class Pacer:
    """Holds each caller of `wait()` so that at most `rate` pass a second (a token bucket on
    the monotonic clock, as a starved thread or a slow card would); `rate` None: no limit."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._next = 0.0

    def wait(self) -> None:
        rate = self.rate
        if rate is not None:
            now = time.monotonic()
            self._next = max(self._next + 1.0 / rate, now)
            time.sleep(max(0.0, self._next - now))


def _segment_key(path: Path) -> tuple[Path, str, int]:
    """Start time from the name, then the collision suffix as a number (X, X-1, X-2, X-10)."""
    stem, _, n = path.stem.partition("-")
    return (path.parent, stem, int(n) if n.isdigit() else 0)


def segments(root: Path) -> list[Path]:
    """Closed segment files under `root`, oldest first (names sort by start time)."""
    return sorted(root.rglob("*.mp4"), key=_segment_key)


def frame_numbers(path: Path) -> list[int]:
    """Decode every frame of `path` and read its frame-number code."""
    with av.open(str(path)) as container:
        return [framecode.read_video_frame(f) for f in container.decode(video=0)]


def recorded_numbers(root: Path) -> list[int]:
    """Frame numbers of every segment under `root`, in recording order."""
    numbers: list[int] = []
    for path in segments(root):
        numbers.extend(frame_numbers(path))
    return numbers


def gaps(numbers: list[int]) -> list[tuple[int, int]]:
    """(last before, first after) for every place the numbers do not go up by one."""
    return [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1]


def recorded_span(root: Path, first: int, last: int) -> list[int]:
    """The frame numbers the closed segments under `root` hold from frame `first` to frame
    `last`, in recording order: what a player of that span must show, each once. On a CPU-starved
    machine the recorder itself may drop frames (counted as dropped); no player can show those."""
    return [n for n in recorded_numbers(root) if first <= n <= last]


def segment_first_frames(root: Path) -> set[int]:
    """The number of the first frame of every closed segment: where a segment boundary is."""
    return {frame_numbers(path)[0] for path in segments(root) if not path.is_symlink()}


@dataclass(frozen=True)
class Frame:
    wallclock: float
    number: int
    is_keyframe: bool


def recorded_frames(path: Path) -> list[Frame]:
    """Every frame of a closed segment: its wall clock (vigil_start + its pts), number, keyframe."""
    anchor = anchor_of(read_moov(path), path)
    out: list[Frame] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        first: int | None = None
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            first = packet.pts if first is None else first
            (frame,) = packet.decode()
            out.append(Frame(anchor + float((packet.pts - first) * stream.time_base),
                             framecode.read_video_frame(frame), packet.is_keyframe))
    return out


def hls_span_numbers(frames: list[Frame], start: float, end: float) -> list[int]:
    """What a recorded playlist of [start, end) over `frames` plays: whole fragments (each
    from a keyframe), from the keyframe at or before `start` to the end of the fragment that
    holds the last frame before `end`."""
    first = max(i for i, f in enumerate(frames) if f.is_keyframe and f.wallclock <= start)
    after = min((i for i, f in enumerate(frames) if f.is_keyframe and f.wallclock >= end),
                default=len(frames))
    return [f.number for f in frames[first:after]]


def encode_synthetic(mode: CameraMode, count: int, *, fragment_seconds: float, wall_start: float,
                     wall_jump_at: int | None = None, jump_seconds: float = 0.0) -> list[EncodedPacket]:
    """`count` synthetic frames numbered from 0, 1/fps apart, encoded with libx264.

    Wall clocks start at `wall_start` (so segment names are predictable) and jump by
    `jump_seconds` from frame `wall_jump_at` on, as an NTP sync would make them.
    """
    camera = SyntheticCamera(mode, counter=FrameCounter(), paced=False)
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=fragment_seconds)
    out: list[EncodedPacket] = []
    for i in range(count):
        frame = camera.read(1.0)
        frame.timestamp = i / mode.fps
        frame.wallclock = wall_start + i / mode.fps
        if wall_jump_at is not None and i >= wall_jump_at:
            frame.wallclock += jump_seconds
        out.extend(encoder.encode(frame))
    out.extend(encoder.flush())
    return out
