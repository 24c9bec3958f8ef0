"""vigil's recording throughput next to a seed-style recorder: a plain single-threaded loop.

The seed's sketch recorded like this, one frame at a time on one thread: decode a frame,
convert it to RGB (`to_ndarray(format="rgb24")`), check the whole image
(`np.isfinite(frame).all()`, `frame.min()`, `frame.max()`), build a frame from the array
again and encode it with libx264 (same preset and settings as vigil; PyAV converts the RGB
back to YUV420 for the encoder), muxing each packet into a fragmented MP4. vigil's figure
is measured the same way as in bench.throughput (the daemon's pipeline, unpaced, no frame
dropped), on the same frames, interleaved run by run. Target: vigil >= 2.0 x the baseline.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bench.common import Figure, table
from bench.rig import (
    CRF,
    FPS,
    FRAGMENT_SECONDS,
    PRESET,
    lavfi_spec,
    load_note,
    quiet_logs,
    record_in_process,
    workdir,
)
from hw.encoder import keyframe_interval
from hw.writer import MOVFLAGS

WIDTH, HEIGHT = 1280, 720


def seed_loop_fps(path: Path, width: int, height: int, frames: int) -> float:
    """Frames per second of the seed-style loop recording `frames` frames into `path`."""
    source = av.open(lavfi_spec(width, height), format="lavfi")
    out = av.open(str(path), "w", format="mp4", options={"movflags": MOVFLAGS})
    gop = keyframe_interval(FPS, FRAGMENT_SECONDS)
    stream = out.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = Fraction(1, FPS)
    stream.codec_context.gop_size = gop
    stream.codec_context.options = {
        "preset": PRESET, "tune": "zerolatency", "crf": str(CRF),
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
    }
    began = time.perf_counter()
    try:
        for n, decoded in enumerate(source.decode(video=0)):
            if n == frames:
                break
            image = decoded.to_ndarray(format="rgb24")
            if not np.isfinite(image).all() or image.min() < 0 or image.max() > 255:
                continue
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = n
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    finally:
        out.close()
        source.close()
    return frames / (time.perf_counter() - began)


def run(*, frames: int = 600, runs: int = 5, width: int = WIDTH, height: int = HEIGHT) -> str:
    ours, ref = [], []
    with quiet_logs(), workdir("vigil-bench-baseline-") as work:
        for i in range(runs):
            result = record_in_process(work / f"vigil-{i}", width, height, frames)
            ours.append(result.frames_recorded / result.seconds)
            ref.append(seed_loop_fps(work / f"seed-{i}.mp4", width, height, frames))
    rows = [(f"{width}x{height}, {frames} frames, unpaced", Figure(tuple(ours)), Figure(tuple(ref)),
             "vigil/seed >= 2.0")]
    return "\n".join([
        table("recording throughput vs a seed-style single-threaded loop", "fps", rows, fmt=".1f"),
        "reference: decode -> to_ndarray(rgb24) -> np.isfinite/min/max -> from_ndarray -> libx264 "
        "(same settings) -> mux, one frame at a time on one thread",
        load_note(),
    ])


def smoke() -> str:
    return run(frames=20, runs=1, width=320, height=240)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
