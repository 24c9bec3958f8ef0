"""A camera that encodes itself (V4L2 H.264, picamera2) when the pipeline's queue overflows:
the packets after a dropped one refer to it until the next keyframe, so they are dropped too
and every frame that reaches the file decodes to its own number.

Real H.264 from libx264 (tests/fakes/v4l2_device.py's payload maker, a keyframe every GOP
frames, headers on each), the real SegmentWriter on a real directory, a writer held still
while the camera goes on delivering, as a stalled card would."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import av

from hw.camera import CameraMode, EncodedPacket
from hw.errors import CameraTimeout
from hw.pipeline import RecordingPipeline
from hw.writer import SegmentWriter
from tests.fakes.v4l2_device import _PayloadMaker
from tests.helpers import frame_numbers, segments

WIDTH, HEIGHT, FPS, GOP = 160, 120, 30.0, 10
PACKETS = 60
QUEUE = 4


PAUSE_AT = 25  # a P-frame: the camera waits here until the writer moves again


class PacketCamera:
    """Delivers PACKETS real H.264 access units as fast as asked, then nothing; at PAUSE_AT it
    waits for `go` (what it sent meanwhile overflowed the queue in front of a stalled writer)."""

    name = "packets"

    def __init__(self) -> None:
        maker = _PayloadMaker("h264", WIDTH, HEIGHT, FPS, gop=GOP, repeat_headers=True, packets=None)
        self._units = [maker.make(n) for n in range(PACKETS)]
        self.sent = 0
        self.paused = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()

    @property
    def mode(self) -> CameraMode:
        return CameraMode(WIDTH, HEIGHT, FPS, "packets")

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> EncodedPacket:
        if self.sent >= len(self._units):
            self.done.set()
            time.sleep(timeout)
            raise CameraTimeout("no more packets (test)")
        if self.sent == PAUSE_AT and not self.go.is_set():
            self.paused.set()
            self.go.wait(30)
        data, key = self._units[self.sent]
        t = self.sent / FPS
        self.sent += 1
        return EncodedPacket(data, key, t, 1_700_000_000.0 + t)

    def close(self) -> None:
        pass


class StalledWriter(SegmentWriter):
    """Holds its fourth packet until released: the queue in front of it fills meanwhile."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.written = 0

    def write(self, packet: EncodedPacket) -> None:
        if self.written == 3:
            self.release.wait(30)
        self.written += 1
        super().write(packet)


def test_a_packet_dropped_mid_group_drops_the_rest_of_its_group_and_all_that_is_kept_decodes(
        tmp_path: Path) -> None:
    camera = PacketCamera()
    writer = StalledWriter(tmp_path / "rec", width=WIDTH, height=HEIGHT, fps=FPS, segment_seconds=3600)
    errors: list[str] = []
    pipeline = RecordingPipeline(camera, writer, encoder=None, validator=None,
                                 when_error=lambda category, why: errors.append(f"{category}: {why}"),
                                 queue_frames=QUEUE, read_timeout=0.2)
    pipeline.start()
    try:
        assert camera.paused.wait(30), "the camera did not deliver its packets"
        writer.release.set()
        stats = pipeline.stats
        deadline = time.monotonic() + 30
        while stats.frames_recorded + stats.frames_dropped < camera.sent:  # the queue drained
            assert time.monotonic() < deadline, stats
            time.sleep(0.01)
        camera.go.set()  # frames PAUSE_AT.. refer to frames dropped while the writer stood still
        assert camera.done.wait(30)
        deadline = time.monotonic() + 30
        while pipeline.stats.frames_recorded + pipeline.stats.frames_dropped < PACKETS:
            assert time.monotonic() < deadline, pipeline.stats
            time.sleep(0.05)
    finally:
        pipeline.stop()

    stats = pipeline.stats
    assert stats.frames_dropped > 0, "the queue never overflowed: the test proves nothing"
    numbers = [n for path in segments(tmp_path / "rec") for n in frame_numbers(path)]
    assert len(numbers) == stats.frames_recorded == PACKETS - stats.frames_dropped
    # Every frame kept is one the camera sent, in order, once; after each hole the footage
    # goes on at a keyframe (a multiple of GOP), never at a P-frame whose reference is gone.
    assert numbers == sorted(set(numbers)) and set(numbers) <= set(range(PACKETS))
    resumed = [b for a, b in itertools.pairwise(numbers) if b != a + 1]
    assert resumed and all(n % GOP == 0 for n in resumed), (resumed, numbers)
    assert PAUSE_AT not in numbers and 30 in numbers
    with av.open(str(segments(tmp_path / "rec")[0])) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == len(numbers)
