"""CPU seconds per recorded minute, paced in real time: `vigil run` next to `ffmpeg -re`.

Both record testsrc2 at 1280x720, 30 fps, in real time with the same libx264 settings into
fragmented-MP4 segments (bench.rig):
- vigil: the daemon as a unit runs it (`vigil run`, file backend with `pace: true`, the
  HTTP API and housekeeping on, per-fragment fsync);
- ffmpeg: `ffmpeg -re -f lavfi -i testsrc2=... <the same x264 options> -f segment ...`.
Each run starts both, waits until each has its first fragment on disk and a warm-up has
passed, then reads each process's user + system CPU (psutil, all threads) at the start
and end of the same window. Start-up is left out (bench.startup covers it). The two run
side by side, which keeps `make bench` short: together they need well under one core of
the machine's two, so neither waits for the other.
Target: vigil <= 1.15 x ffmpeg.
"""

from __future__ import annotations

import time

from bench.common import Figure, table
from bench.rig import (
    NO_FFMPEG,
    Recorder,
    has_ffmpeg,
    launch_ffmpeg,
    launch_vigil,
    load_note,
    running,
    wait_for_first_fragment,
    workdir,
)

WIDTH, HEIGHT = 1280, 720
WARMUP_SECONDS = 2.0
FIRST_FRAGMENT_TIMEOUT_SECONDS = 60.0


def cpu_per_minute(recorders: list[Recorder], seconds: float, warmup: float) -> list[float]:
    """CPU seconds per minute of each recorder over the same `seconds`-long window."""
    for recorder in recorders:
        wait_for_first_fragment(recorder.root, recorder.process, FIRST_FRAGMENT_TIMEOUT_SECONDS)
    time.sleep(warmup)
    before = [r.cpu_seconds() for r in recorders]
    began = time.perf_counter()
    time.sleep(seconds)  # the measurement window: both record in real time meanwhile
    after = [r.cpu_seconds() for r in recorders]
    elapsed = time.perf_counter() - began
    for recorder in recorders:
        if recorder.process.poll() is not None:
            raise RuntimeError(f"{recorder.name} exited ({recorder.process.returncode}) during the window")
    return [(b - a) / elapsed * 60 for a, b in zip(before, after, strict=True)]


def run(*, seconds: float = 60.0, runs: int = 5, warmup: float = WARMUP_SECONDS) -> str:
    ffmpeg = has_ffmpeg()
    ours: list[float] = []
    ref: list[float] = []
    with workdir("vigil-bench-cpu-") as work:
        for i in range(runs):
            recorders = [launch_vigil(work, WIDTH, HEIGHT, f"vigil-{i}")]
            if ffmpeg:
                recorders.append(launch_ffmpeg(work, WIDTH, HEIGHT, f"ffmpeg-{i}"))
            with running(*recorders):
                figures = cpu_per_minute(recorders, seconds, warmup)
            ours.append(figures[0])
            if ffmpeg:
                ref.append(figures[1])
    rows = [(f"record {WIDTH}x{HEIGHT}@30 in real time", Figure(tuple(ours)),
             Figure(tuple(ref) or (float("nan"),)), "vigil/ffmpeg <= 1.15")]
    lines = [table(f"CPU per recorded minute, paced, {seconds:g} s window per run", "CPU s/min", rows,
                   fmt=".2f"),
             "vigil: `vigil run` (file backend, pace: true, API and housekeeping on, per-fragment fsync); "
             "ffmpeg: -re, same source and x264 settings, no fsync; both side by side",
             load_note()]
    if not ffmpeg:
        lines.append(NO_FFMPEG)
    return "\n".join(lines)


def smoke() -> str:
    return run(seconds=0.5, runs=1, warmup=0.0)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
