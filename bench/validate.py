"""Frame validation cost per 1080p frame: vigil's validator next to a seed-style full scan.

The seed's sketch checked `np.isfinite(frame).all()`, `frame.min()` and `frame.max()` on
every frame; vigil checks type, dtype, shape and timestamp order, and samples a coarse
grid for frozen-image detection a few times a second. Target: at most 50 microseconds.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import Figure, repeat, table
from hw.camera import CameraMode, Frame
from hw.validate import FrameValidator

MODE = CameraMode(1920, 1080, 30)


def _frames(count: int) -> list[Frame]:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, MODE.frame_shape, dtype=np.uint8) for _ in range(4)]
    return [Frame(images[i % 4], i / MODE.fps, 0.0, i) for i in range(count)]


def vigil_us_per_frame(frames: list[Frame]) -> float:
    validator = FrameValidator(MODE, frozen_seconds=10.0)
    start = time.perf_counter()
    for frame in frames:
        validator.check(frame)
    return (time.perf_counter() - start) / len(frames) * 1e6


def naive_check(frame: Frame) -> bool:
    data = frame.data
    if data is None or len(data.shape) < 2:
        return False
    if not np.isfinite(data).all():
        return False
    return not (data.min() < 0 or data.max() > 255)


def naive_us_per_frame(frames: list[Frame]) -> float:
    start = time.perf_counter()
    for frame in frames:
        naive_check(frame)
    return (time.perf_counter() - start) / len(frames) * 1e6


def run(frames: int = 300, runs: int = 5) -> str:
    batch = _frames(frames)
    ours: Figure = repeat(lambda: vigil_us_per_frame(batch), runs)
    ref: Figure = repeat(lambda: naive_us_per_frame(batch), runs)
    return table("frame validation, 1920x1080 YUV420", "us/frame",
                 [("validate one frame", ours, ref, "vigil <= 50 us")])


def smoke() -> str:
    return run(frames=10, runs=1)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
