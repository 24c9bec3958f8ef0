"""H.264 pass-through recording: CPU seconds per recorded minute, vigil next to `ffmpeg -c copy`.

The same pre-encoded H.264 (1280x720 at 30 fps, a keyframe a second, SPS/PPS on every
keyframe, as an H.264 camera sends it) goes through:
- vigil: the V4L2 H.264 path (V4L2Device ioctls on the fake kernel from
  tests/fakes/v4l2_device.py, serving the access units as fast as they are dequeued) ->
  V4L2Camera (keyframe scan) -> the recording pipeline -> SegmentWriter (fragmented MP4, a
  fragment per keyframe, each fsynced);
- the reference: `ffmpeg -f h264 -i source.h264 -c copy` into a fragmented MP4 (no fsync),
  the CPU of the child process as getrusage reports it.
Both run as fast as they can, so the figure is the work per recorded minute; a camera
delivering in real time adds wake-ups per frame on top, for both. ffmpeg's figure includes
its process start-up (a few hundredths of a second), which a short source inflates; vigil's
covers opening the camera through closing the segment. ffmpeg is not installed by default
(`apt-get install -y ffmpeg`); without it the reference column reads nan and vigil's figure
is still printed. The source is 4 Mbit/s at 720p, what an H.264 webcam typically sends.
"""

from __future__ import annotations

import math
import resource
import shutil
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bench.common import Figure, repeat, table
from hw import framecode
from hw.factory import DEFAULT_MAKERS, Hardware
from hw.v4l2.probe import V4L2Maker
from tests.fakes.v4l2_device import FakeV4L2
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 1280, 720, 30
SOURCE_SECONDS = 30
BITRATE = 4_000_000  # what a 720p H.264 webcam typically sends
READ_TIMEOUT_SECONDS = 0.2
DRAIN_DEADLINE_SECONDS = 300.0
MOVFLAGS = "+frag_keyframe+empty_moov+default_base_moof"


def encode_source(width: int, height: int, frames: int) -> list[bytes]:
    """Annex-B access units at a webcam's bit rate: moving noise, frame numbers, a keyframe a second."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, FPS), Fraction(FPS)
    ctx.bit_rate = BITRATE * width * height // (1280 * 720)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency",
                   "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:repeat-headers=1"}
    ctx.open()
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (height * 2, width), dtype=np.uint8)
    units = []
    for n in range(frames):
        image = np.full((height * 3 // 2, width), 128, np.uint8)
        shift = (n * 7) % height
        image[:height] = noise[shift : shift + height]
        framecode.draw(image[:height], n)
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = n
        units.extend(bytes(p) for p in ctx.encode(frame))
    units.extend(bytes(p) for p in ctx.encode(None))
    return units


def vigil_cpu_seconds(units: list[bytes], width: int, height: int, workdir: Path) -> float:
    """CPU seconds this process spends recording `units` through the V4L2 H.264 path."""
    kernel = FakeV4L2()
    kernel.add_device(formats={"h264": [(width, height)]}, rates=(float(FPS),), paced=False, packets=units)
    root = Path(tempfile.mkdtemp(dir=workdir))
    hardware = Hardware(
        camera_spec(backend="v4l2", width=width, height=height, fps=FPS, input_format="h264",
                   read_timeout_seconds=READ_TIMEOUT_SECONDS),
        recording_spec(root=root, segment_seconds=3600, fragment_seconds=1.0, queue_frames=len(units) + 1),
        makers={**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel)})
    errors: list[str] = []  # the camera going quiet after the last packet is expected; others are not
    start = time.process_time()
    camera = hardware.make_camera()
    camera.open()
    pipeline = hardware.make_pipeline(camera, root, lambda category, why: errors.append(f"{category}: {why}")
                                      if category != "camera_timeout" else None)
    pipeline.start()
    deadline = time.monotonic() + DRAIN_DEADLINE_SECONDS
    while pipeline.stats.frames_recorded < len(units) and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    pipeline.stop()
    spent = time.process_time() - start
    if errors or pipeline.stats.frames_recorded < len(units):
        raise RuntimeError(f"vigil recorded {pipeline.stats.frames_recorded} of {len(units)}: {errors}")
    shutil.rmtree(root)
    return spent


def ffmpeg_cpu_seconds(source: Path, workdir: Path) -> float:
    """CPU seconds (user + system) of `ffmpeg -c copy` from the same access units."""
    out = workdir / "ffmpeg.mp4"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "h264", "-framerate",
                    str(FPS), "-i", str(source), "-c", "copy", "-movflags", MOVFLAGS, str(out)],
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink()
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(seconds: int = SOURCE_SECONDS, runs: int = 3, width: int = WIDTH, height: int = HEIGHT) -> str:
    units = encode_source(width, height, seconds * FPS)
    minutes = len(units) / FPS / 60
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source.h264"
        source.write_bytes(b"".join(units))
        ours = repeat(lambda: vigil_cpu_seconds(units, width, height, workdir) / minutes, runs)
        has_ffmpeg = shutil.which("ffmpeg") is not None
        ref = (repeat(lambda: ffmpeg_cpu_seconds(source, workdir) / minutes, runs) if has_ffmpeg
               else Figure((math.nan,)))
    text = table(f"H.264 pass-through recording, {width}x{height}@{FPS}, {seconds} s source",
                 "CPU s/min", [("record one minute (vs ffmpeg -c copy)", ours, ref,
                                "informational: same order as ffmpeg")], fmt=".3f")
    if not has_ffmpeg:
        text += "\nffmpeg is not installed (apt-get install -y ffmpeg): no reference figure"
    return text


def smoke() -> str:
    return run(seconds=1, runs=1, width=320, height=240)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
