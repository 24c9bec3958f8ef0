"""Clip export throughput (MB of clip per second): `vigil export` next to `ffmpeg -ss -to -c copy`.

The same footage each run: an hour of real segments (vigil's writer, the synthetic camera)
merged into its hour file as the daemon does, then a span from its middle exported by
- vigil: controller.surfaces.export.export_clip (stream copy, faststart, keyframe at or
  before the start);
- `ffmpeg -ss START -to END -i HH.mp4 -c copy -movflags +faststart` of the same file.
Figures are medians of 5 runs with (min..max). Live-view latency and CPU per viewer are
bench.live's.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from loguru import logger

from bench.common import Figure, table
from bench.merge import make_hour
from bench.rig import NO_FFMPEG
from controller.storage.merge import merge_hour
from controller.surfaces.export import export_clip
from hw.footage import hour_folder_for

TITLE = "clip export throughput, MB of clip per second"


def run(*, width: int = 640, height: int = 480, fps: float = 30.0, seconds: float = 120.0,
        span: float = 60.0, runs: int = 5) -> str:
    for name in ("hw", "controller"):
        logger.disable(name)
    try:
        return _run(width=width, height=height, fps=fps, seconds=seconds, span=span, runs=runs)
    finally:
        for name in ("hw", "controller"):
            logger.enable(name)


def _run(*, width: int, height: int, fps: float, seconds: float, span: float, runs: int) -> str:
    ffmpeg = shutil.which("ffmpeg")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-export-") as tmp:
        work = Path(tmp)
        root = work / "root"
        start, _ = make_hour(root, width=width, height=height, fps=fps, seconds=seconds, segment_seconds=2.0)
        merged = merge_hour(hour_folder_for(root, start), fsync=False)[0].path
        first = start + 60 + (seconds - span) / 2  # make_hour records from 60 s past the hour
        vigil, ref = [], []
        for run_number in range(runs):
            out = work / f"vigil{run_number}.mp4"
            began = time.perf_counter()
            export_clip(root, first, first + span, out, workdir=work)
            vigil.append(out.stat().st_size / 1e6 / (time.perf_counter() - began))
            if ffmpeg is not None:
                theirs = work / f"ffmpeg{run_number}.mp4"
                offset = first - start - 60
                began = time.perf_counter()
                subprocess.run([ffmpeg, "-v", "error", "-ss", f"{offset:.3f}", "-to", f"{offset + span:.3f}",
                                "-i", str(merged), "-c", "copy", "-movflags", "+faststart", "-y",
                                str(theirs)], check=True)
                ref.append(theirs.stat().st_size / 1e6 / (time.perf_counter() - began))
    what = f"{span:g} s from a merged hour of {seconds:g} s, {width}x{height}@{fps:g}"
    block = table(TITLE, "MB/s", [("export_clip vs ffmpeg -ss -to -c copy", Figure(tuple(vigil)),
                                   Figure(tuple(ref) or (float("nan"),)), "stream copy both")])
    return f"{block}\ninput: {what}" + ("" if ref else f"\n{NO_FFMPEG}")


def smoke() -> str:
    return run(width=160, height=120, seconds=6.0, span=2.0, runs=1)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
