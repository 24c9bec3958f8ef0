"""Hourly merge throughput (MB of segments per second): vigil's merge next to ffmpeg's concat.

The same segments (real ones, written by vigil's writer from the synthetic camera) are
merged each run, from a fresh copy, by:
- vigil, whole merge: stream copy + read-back verify (every packet's bytes, and every
  frame decoded, or with `merge_verify: keyframes` only keyframes) + fsync + rename +
  segment removal, as the daemon does it;
- vigil, copy only: the stream copy with faststart, nothing else;
- `ffmpeg -f concat -c copy -movflags +faststart` of the same segments, then an fsync of
  its output (vigil's copy fsyncs too).
Figures are medians of 5 runs with (min..max). ffmpeg is optional: without it only
vigil's figures are printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from loguru import logger

from bench.common import Figure, machine_line, table
from bench.rig import NO_FFMPEG
from controller.storage.merge import VerifyMode, concat_segments, merge_hour
from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.footage import hour_folder_for
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import SegmentWriter

HOUR = 3600
TITLE = "hourly merge throughput, MB of segments per second"


def make_hour(root: Path, *, width: int, height: int, fps: float, seconds: float,
              segment_seconds: float) -> tuple[float, int]:
    """Segments for the hour two hours ago under `root`; (hour start, their total bytes)."""
    start = (time.time() // HOUR - 2) * HOUR
    mode = CameraMode(width, height, fps)
    camera = SyntheticCamera(mode, paced=False, counter=FrameCounter())
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=1.0, crf=18)
    writer = SegmentWriter(root, width=width, height=height, fps=fps, segment_seconds=segment_seconds,
                           fsync=False)
    for i in range(int(seconds * fps)):
        frame = camera.read(1.0)
        frame.timestamp = i / fps
        frame.wallclock = start + 60 + i / fps
        for packet in encoder.encode(frame):
            writer.write(packet)
    for packet in encoder.flush():
        writer.write(packet)
    writer.close()
    folder = hour_folder_for(root, start).path
    return start, sum(p.stat().st_size for p in folder.glob("*.mp4"))


def _fresh_copy(original: Path, work: Path, run: int) -> Path:
    root = work / f"run{run}"
    shutil.copytree(original, root)
    return root


def vigil_whole_merge(original: Path, work: Path, start: float, run: int,
                      verify: VerifyMode = "full") -> float:
    root = _fresh_copy(original, work, run)
    began = time.perf_counter()
    merge_hour(hour_folder_for(root, start), verify=verify)
    return time.perf_counter() - began


def vigil_copy_only(original: Path, work: Path, start: float, run: int) -> float:
    root = _fresh_copy(original, work, run)
    segments = sorted(hour_folder_for(root, start).path.glob("*.mp4"))
    began = time.perf_counter()
    concat_segments(segments, root / "copy.mp4", fsync=True)
    _fsync(root / "copy.mp4")
    return time.perf_counter() - began


def ffmpeg_concat(original: Path, work: Path, start: float, run: int, ffmpeg: str) -> float:
    root = _fresh_copy(original, work, run)
    segments = sorted(hour_folder_for(root, start).path.glob("*.mp4"))
    listing = root / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in segments))
    out = root / "ffmpeg.mp4"
    began = time.perf_counter()
    subprocess.run([ffmpeg, "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    "-movflags", "+faststart", "-y", str(out)], check=True)
    _fsync(out)
    return time.perf_counter() - began


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(*, width: int = 640, height: int = 480, fps: float = 30.0, seconds: float = 120.0,
        segment_seconds: float = 2.0, runs: int = 5) -> str:
    # One log line per segment and per merge would bury the table.
    for name in ("hw", "controller"):
        logger.disable(name)
    try:
        return _run(width=width, height=height, fps=fps, seconds=seconds, segment_seconds=segment_seconds,
                    runs=runs)
    finally:
        for name in ("hw", "controller"):
            logger.enable(name)


def _run(*, width: int, height: int, fps: float, seconds: float, segment_seconds: float, runs: int) -> str:
    ffmpeg = shutil.which("ffmpeg")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-merge-") as tmp:
        work = Path(tmp)
        original = work / "original"
        start, size = make_hour(original, width=width, height=height, fps=fps, seconds=seconds,
                                segment_seconds=segment_seconds)
        mb = size / 1e6
        count = iter(range(10**6))

        def rate(seconds_taken: float) -> float:
            return mb / seconds_taken

        whole = Figure(tuple(rate(vigil_whole_merge(original, work, start, next(count)))
                             for _ in range(runs)))
        keys = Figure(tuple(rate(vigil_whole_merge(original, work, start, next(count), "keyframes"))
                            for _ in range(runs)))
        copy = Figure(tuple(rate(vigil_copy_only(original, work, start, next(count))) for _ in range(runs)))
        ref = None
        if ffmpeg is not None:
            ref = Figure(tuple(rate(ffmpeg_concat(original, work, start, next(count), ffmpeg))
                               for _ in range(runs)))
    what = (f"{int(seconds * fps)} frames {width}x{height}@{fps:g} in {int(seconds / segment_seconds)} "
            f"segments, {mb:.1f} MB")
    if ref is not None:
        block = table(TITLE, "MB/s", [
            ("whole merge, merge_verify: full", whole, ref, "safety costs: decodes every frame"),
            ("whole merge, merge_verify: keyframes", keys, ref, "verify costs little"),
            ("stream copy only", copy, ref, "copy at ffmpeg's pace (~1x)"),
        ])
        return f"{block}\ninput: {what}; reference: ffmpeg -f concat -c copy +faststart, fsynced"
    lines = [f"== {TITLE}", machine_line(), NO_FFMPEG, "figures: median (min..max)",
             f"{'measure':<34} {'vigil MB/s':>28} {'reference MB/s':>28} {'ratio':>7}",
             f"{'whole merge, merge_verify: full':<34} {whole.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'whole merge, merge_verify: keyframes':<34} {keys.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'stream copy only':<34} {copy.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"input: {what}"]
    return "\n".join(lines)


def main() -> None:
    print(run())


def smoke() -> str:
    return run(width=160, height=120, seconds=4.0, segment_seconds=1.0, runs=1)


if __name__ == "__main__":
    main()
