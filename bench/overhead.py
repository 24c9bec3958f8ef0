"""Per-frame cost of vigil's recording path outside the encoder, 1920x1080, in-process.

The pipeline the daemon builds (hw.factory.Hardware: validator -> bounded queue -> encode
thread -> SegmentWriter, fragmented MP4 with a per-fragment fsync) runs with two stand-ins:
- the camera hands over ready-made 1080p YUV420 frames (five distinct images, timestamps
  1/30 s apart, so the frozen-image check samples as often as with a real camera);
- the encoder is a no-op with H264Encoder's interface (`encode(frame) -> [EncodedPacket]`,
  `flush()`) returning a tiny real H.264 packet per frame (an IDR of a flat image every
  second, a skip P-frame otherwise), so the writer still muxes every frame.
What is left is validation, queueing, thread hand-off, bookkeeping and muxing. The figure
is the process's CPU time (all threads) per frame; the benchmark's own back-pressure
(bench.rig.HeldBackCamera) adds a semaphore acquire/release per frame to it.
Reference: the floor of any two-thread design in Python, the same frames handed from one
thread to another through a bare bounded queue.Queue (put/get), nothing else.
Target: vigil <= 0.2 ms per frame.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import Figure, table
from bench.rig import FPS, FRAGMENT_SECONDS, QUEUE_FRAMES, load_note, quiet_logs, record_in_process, workdir
from hw.camera import CameraMode, EncodedPacket, Frame
from hw.encoder import H264Encoder, keyframe_interval
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.validate import FrameValidator
from hw.writer import SegmentWriter

WIDTH, HEIGHT = 1920, 1080
DISTINCT_IMAGES = 5  # not a divisor of the 7 or 8 frames between frozen-image samples


class ReadyMadeCamera:
    """Hands over pre-drawn frames with fresh timestamps: a camera that costs (almost) nothing."""

    name = "ready-made"

    def __init__(self, images: list[np.ndarray], mode: CameraMode) -> None:
        self._images = images
        self._mode = mode
        self._n = 0
        self._origin = time.monotonic()

    @property
    def mode(self) -> CameraMode:
        return self._mode

    def open(self) -> None:
        self._origin = time.monotonic()

    def close(self) -> None:
        pass

    def read(self, timeout: float) -> Frame:
        n = self._n
        self._n += 1
        # Timestamps a real camera would give: a frame every 1/fps seconds.
        return Frame(self._images[n % len(self._images)], self._origin + n / self._mode.fps, time.time(), n)


class NoOpEncoder:
    """H264Encoder's interface, no encoding: a fixed tiny packet per frame, a keyframe every GOP."""

    def __init__(self, keyframe: bytes, delta: bytes, gop: int) -> None:
        self._keyframe, self._delta, self._gop = keyframe, delta, gop
        self.frames_in = 0

    def encode(self, frame: Frame) -> list[EncodedPacket]:
        is_key = self.frames_in % self._gop == 0
        self.frames_in += 1
        return [EncodedPacket(self._keyframe if is_key else self._delta, is_key, frame.timestamp,
                              frame.wallclock)]

    def flush(self) -> list[EncodedPacket]:
        return []


def draw_images(mode: CameraMode) -> list[np.ndarray]:
    camera = SyntheticCamera(mode, paced=False, counter=FrameCounter())
    camera.open()
    images = []
    for _ in range(DISTINCT_IMAGES):
        frame = camera.read(1.0)
        assert frame.data is not None
        images.append(frame.data)
    return images


def tiny_packets(mode: CameraMode) -> tuple[bytes, bytes]:
    """(IDR with SPS/PPS, skip P-frame) of a flat grey image, encoded once with vigil's settings."""
    encoder = H264Encoder(mode, fragment_seconds=FRAGMENT_SECONDS)
    flat = np.full(mode.frame_shape, 128, np.uint8)
    packets = []
    for i in range(2):
        packets += encoder.encode(Frame(flat, i / mode.fps, 0.0, i))
    packets += encoder.flush()
    key, delta = packets[0], packets[1]
    assert key.is_keyframe and not delta.is_keyframe
    return key.data, delta.data


def vigil_ms_per_frame(root: Path, images: list[np.ndarray], packets: tuple[bytes, bytes],
                       mode: CameraMode, frames: int) -> tuple[float, float]:
    """(CPU ms per frame, wall ms per frame) of the pipeline with the no-op encoder."""
    encoder = NoOpEncoder(*packets, keyframe_interval(mode.fps, FRAGMENT_SECONDS))
    result = record_in_process(root, mode.width, mode.height, frames, encoder=encoder,
                               camera=ReadyMadeCamera(images, mode))
    return result.cpu_seconds / frames * 1e3, result.seconds / frames * 1e3


def queue_ms_per_frame(images: list[np.ndarray], mode: CameraMode, frames: int) -> float:
    """CPU ms per frame of handing the same frames between two threads through a bounded Queue."""
    camera = ReadyMadeCamera(images, mode)
    handoff: queue.Queue[Frame | None] = queue.Queue(maxsize=QUEUE_FRAMES)

    def consume() -> None:
        while handoff.get() is not None:
            pass

    consumer = threading.Thread(target=consume, name="bench-consumer")
    cpu = time.process_time()
    consumer.start()
    for _ in range(frames):
        handoff.put(camera.read(1.0))
    handoff.put(None)
    consumer.join()
    return (time.process_time() - cpu) / frames * 1e3


def validator_us_per_frame(images: list[np.ndarray], mode: CameraMode, frames: int) -> float:
    camera = ReadyMadeCamera(images, mode)
    batch = [camera.read(1.0) for _ in range(frames)]
    validator = FrameValidator(mode, frozen_seconds=10.0)
    cpu = time.process_time()
    for frame in batch:
        validator.check(frame)
    return (time.process_time() - cpu) / frames * 1e6


def writer_us_per_packet(root: Path, packets: tuple[bytes, bytes], mode: CameraMode, frames: int) -> float:
    """CPU microseconds per tiny packet muxed (and per-fragment fsync) by the segment writer alone."""
    encoder = NoOpEncoder(*packets, keyframe_interval(mode.fps, FRAGMENT_SECONDS))
    camera = ReadyMadeCamera([np.zeros(1, np.uint8)], mode)
    batch = [p for _ in range(frames) for p in encoder.encode(camera.read(1.0))]
    writer = SegmentWriter(root, width=mode.width, height=mode.height, fps=mode.fps, segment_seconds=60.0)
    cpu = time.process_time()
    for packet in batch:
        writer.write(packet)
    writer.close()
    return (time.process_time() - cpu) / frames * 1e6


def run(*, frames: int = 3000, runs: int = 5) -> str:
    mode = CameraMode(WIDTH, HEIGHT, FPS)
    images = draw_images(mode)
    packets = tiny_packets(mode)
    cpu, wall, floor = [], [], []
    with quiet_logs(), workdir("vigil-bench-overhead-") as work:
        for i in range(runs):
            ms_cpu, ms_wall = vigil_ms_per_frame(work / f"vigil-{i}", images, packets, mode, frames)
            cpu.append(ms_cpu)
            wall.append(ms_wall)
            floor.append(queue_ms_per_frame(images, mode, frames))
        validator = validator_us_per_frame(images, mode, frames)
        writer = writer_us_per_packet(work / "writer", packets, mode, frames)
    rows = [(f"CPU per frame, {frames} frames", Figure(tuple(cpu)), Figure(tuple(floor)), "vigil <= 0.2 ms")]
    return "\n".join([
        table(f"per-frame overhead outside the encoder, {WIDTH}x{HEIGHT}, no-op encoder", "ms", rows,
              fmt=".4f"),
        f"vigil wall time per frame (two threads overlapping, fsync waits included): "
        f"{Figure(tuple(wall)).show('.4f')} ms",
        f"parts, measured alone: validator {validator:.1f} us/frame; segment writer (mux of a "
        f"tiny packet, fsync per fragment) {writer:.1f} us/frame",
        "reference: the same frames through a bare bounded queue.Queue between two threads",
        load_note(),
    ])


def smoke() -> str:
    return run(frames=60, runs=1)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
