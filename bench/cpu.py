"""CPU per recorded frame, paced in real time: `vigil run` next to `ffmpeg -re`, 720p and 1080p.

Both record testsrc2 at 30 fps in real time with the same libx264 options (ultrafast,
zerolatency, crf 23, a keyframe every 30 frames, SPS/PPS on each: bench.rig.x264_ffmpeg_args;
the table's note checks them in the SEI libx264 writes into each file) into fragmented-MP4
segments:
- vigil: the daemon as a unit runs it (`vigil run`, file backend with `pace: true`, the
  HTTP API and housekeeping on, per-fragment fsync);
- ffmpeg: `ffmpeg -re -f lavfi -i testsrc2=... <the same x264 options> -f segment ...`.
Each run starts both side by side, waits until each has its first fragment on disk and a
warm-up has passed (start-up is left out: bench.startup covers it), then reads each
process's user + system CPU (psutil, all threads) and the frames it has on disk (the
`trun` sample counts of its complete fragments) at the start and end of the same window.
The figure is CPU milliseconds per frame that reached the disk in the window: a recorder
that falls behind and drops frames does not look cheaper for it, as it would per minute.
The ratio is taken within each run (both saw the same machine at the same moment), and
the median of those is the figure; CPU per minute is printed beside it.
Target: vigil <= 1.00 x ffmpeg.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, table
from bench.rig import (
    NO_FFMPEG,
    Recorder,
    encoder_note,
    frames_on_disk,
    has_ffmpeg,
    launch_ffmpeg,
    launch_vigil,
    load_note,
    running,
    wait_for_first_fragment,
    workdir,
)

SIZES = ((1280, 720), (1920, 1080))
WARMUP_SECONDS = 2.0
FIRST_FRAGMENT_TIMEOUT_SECONDS = 60.0
TARGET = 1.00


@dataclass(frozen=True)
class Window:
    """What one recorder did over the measurement window."""

    cpu_seconds: float
    frames: int
    seconds: float

    @property
    def ms_per_frame(self) -> float:
        return self.cpu_seconds / self.frames * 1000 if self.frames else float("nan")

    @property
    def cpu_per_minute(self) -> float:
        return self.cpu_seconds / self.seconds * 60


def measure(recorders: list[Recorder], seconds: float, warmup: float) -> list[Window]:
    """Each recorder's CPU and frames on disk over the same `seconds`-long window."""
    for recorder in recorders:
        wait_for_first_fragment(recorder.root, recorder.process, FIRST_FRAGMENT_TIMEOUT_SECONDS)
    time.sleep(warmup)
    before = [(r.cpu_seconds(), frames_on_disk(r.root)) for r in recorders]
    began = time.perf_counter()
    time.sleep(seconds)  # the measurement window: both record in real time meanwhile
    after = [(r.cpu_seconds(), frames_on_disk(r.root)) for r in recorders]
    elapsed = time.perf_counter() - began
    for recorder in recorders:
        if recorder.process.poll() is not None:
            raise RuntimeError(f"{recorder.name} exited ({recorder.process.returncode}) during the window")
    return [Window(b[0] - a[0], b[1] - a[1], elapsed) for a, b in zip(before, after, strict=True)]


def first_segment(recorder: Recorder) -> Path:
    """The recorder's first segment file (its SEI names the x264 options it ran with)."""
    return min(recorder.root.rglob("*.mp4*"))


def run(*, seconds: float = 60.0, runs: int = 5, warmup: float = WARMUP_SECONDS,
        sizes: tuple[tuple[int, int], ...] = SIZES) -> str:
    ffmpeg = has_ffmpeg()
    nan = Figure((float("nan"),))
    rows, notes, encoders = [], [], ""
    with workdir("vigil-bench-cpu-") as work:
        for width, height in sizes:
            ours: list[Window] = []
            ref: list[Window] = []
            for i in range(runs):
                recorders = [launch_vigil(work, width, height, f"vigil-{height}p-{i}")]
                if ffmpeg:
                    recorders.append(launch_ffmpeg(work, width, height, f"ffmpeg-{height}p-{i}"))
                with running(*recorders):
                    windows = measure(recorders, seconds, warmup)
                    if ffmpeg and not encoders:
                        encoders = encoder_note(first_segment(recorders[0]), first_segment(recorders[1]))
                ours.append(windows[0])
                if ffmpeg:
                    ref.append(windows[1])
            what = f"{width}x{height}@30 paced"
            ours_ms = Figure(tuple(w.ms_per_frame for w in ours))
            ref_ms = Figure(tuple(w.ms_per_frame for w in ref)) if ref else nan
            rows.append((f"{what}, ms CPU/frame", ours_ms, ref_ms, f"vigil/ffmpeg <= {TARGET:.2f}"))
            rows.append((f"{what}, CPU s/min", Figure(tuple(w.cpu_per_minute for w in ours)),
                         Figure(tuple(w.cpu_per_minute for w in ref)) if ref else nan, ""))
            if ref:
                ratios = [o.ms_per_frame / r.ms_per_frame for o, r in zip(ours, ref, strict=True)]
                notes.append(f"{what}: ratio within each run {statistics.median(ratios):.3f} "
                             f"({min(ratios):.3f}..{max(ratios):.3f}); frames on disk per window "
                             f"vigil {[w.frames for w in ours]}, ffmpeg {[w.frames for w in ref]}")
    lines = [table(f"CPU per recorded frame, paced, {seconds:g} s window per run", "", rows, fmt=".2f"),
             *notes,
             "vigil: `vigil run` (file backend, pace: true, API and housekeeping on, per-fragment fsync); "
             "ffmpeg: -re, same source, no fsync; both side by side",
             "x264 options on both sides: preset ultrafast, tune zerolatency, crf 23, keyint=min-keyint=30, "
             "scenecut=0, repeat-headers=1, threads auto",
             encoders or "", load_note()]
    if not ffmpeg:
        lines.append(NO_FFMPEG)
    return "\n".join(line for line in lines if line)


def smoke() -> str:
    return run(seconds=2.5, runs=1, warmup=0.0, sizes=((320, 240),))  # a window that holds a fragment


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
