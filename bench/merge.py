"""Hourly merge throughput (MB of segments per second): vigil's merge next to ffmpeg's concat.

The same segments (real ones, written by vigil's writer from the synthetic camera) are
merged each run, from a fresh copy, by:
- vigil, whole merge of an hour broken into segments: stream copy into a fragmented MP4 +
  read-back verify (every packet's CRC, counts and span; with `merge_verify: keyframes`
  or `full` also a decode of every keyframe or frame) + fsync + rename + segment removal,
  as the daemon does it;
- vigil, copy only: the stream copy, nothing else;
- vigil, an hour in one piece (one segment of the same footage): adopted by a rename
  after its read-back, as the daemon does it with the default segment_seconds;
- `ffmpeg -f concat -c copy` of the same segments (of the one segment for the adopted
  row), then an fsync of its output (vigil's copy fsyncs too).
Figures are medians of 5 runs with (min..max). ffmpeg is optional: without it only
vigil's figures are printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from bench.common import Figure, machine_line, table
from bench.rig import NO_FFMPEG
from controller.storage.merge import DEFAULT_VERIFY, VerifyMode, concat_segments, merge_hour
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
                      verify: VerifyMode = DEFAULT_VERIFY) -> float:
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
                    "-y", str(out)], check=True)
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

        whole_hour = work / "one-piece"
        one_start, one_size = make_hour(whole_hour, width=width, height=height, fps=fps, seconds=seconds,
                                        segment_seconds=HOUR)
        one_mb = one_size / 1e6
        # name -> (MB, one timed run): interleaved run by run, so that a change in the load of
        # a shared machine falls on every figure alike.
        measures: dict[str, tuple[float, Callable[[], float]]] = {
            "whole": (mb, lambda: vigil_whole_merge(original, work, start, next(count))),
            "keys": (mb, lambda: vigil_whole_merge(original, work, start, next(count), "keyframes")),
            "full": (mb, lambda: vigil_whole_merge(original, work, start, next(count), "full")),
            "copy": (mb, lambda: vigil_copy_only(original, work, start, next(count))),
            "adopt": (one_mb, lambda: vigil_whole_merge(whole_hour, work, one_start, next(count))),
        }
        if ffmpeg is not None:
            measures["ref"] = (mb, lambda: ffmpeg_concat(original, work, start, next(count), ffmpeg))
            measures["one_ref"] = (one_mb, lambda: ffmpeg_concat(whole_hour, work, one_start, next(count),
                                                                 ffmpeg))
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(runs):
            for name, (size_mb, timed) in measures.items():
                samples[name].append(size_mb / timed())
        figures = {name: Figure(tuple(values)) for name, values in samples.items()}
        whole, keys, full, copy, adopt = (figures[n] for n in ("whole", "keys", "full", "copy", "adopt"))
        ref, one_ref = figures.get("ref"), figures.get("one_ref")
    what = (f"{int(seconds * fps)} frames {width}x{height}@{fps:g} in {int(seconds / segment_seconds)} "
            f"segments, {mb:.1f} MB")
    if ref is not None and one_ref is not None:
        block = table(TITLE, "MB/s", [
            ("whole merge, merge_verify: packets", whole, ref, ">= 1x (the default)"),
            ("whole merge, merge_verify: keyframes", keys, ref, "decodes keyframes"),
            ("whole merge, merge_verify: full", full, ref, "decodes every frame"),
            ("stream copy only", copy, ref, ">= 1x"),
            ("hour in one piece, adopted", adopt, one_ref, "no copy: >> 1x"),
        ])
        return f"{block}\ninput: {what}; reference: ffmpeg -f concat -c copy, fsynced"
    lines = [f"== {TITLE}", machine_line(), NO_FFMPEG, "figures: median (min..max)",
             f"{'measure':<34} {'vigil MB/s':>28} {'reference MB/s':>28} {'ratio':>7}",
             f"{'whole merge, merge_verify: packets':<34} {whole.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'whole merge, merge_verify: keyframes':<34} {keys.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'whole merge, merge_verify: full':<34} {full.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'stream copy only':<34} {copy.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"{'hour in one piece, adopted':<34} {adopt.show('.2f'):>28} {'-':>28} {'n/a':>7}",
             f"input: {what}"]
    return "\n".join(lines)


def main() -> None:
    print(run())


def smoke() -> str:
    return run(width=160, height=120, seconds=4.0, segment_seconds=1.0, runs=1)


if __name__ == "__main__":
    main()
