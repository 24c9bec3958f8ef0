"""Memory recording 1920x1080 at 30 fps in real time: peak RSS, and RSS growth over the run.

`vigil run` (file backend, paced, testsrc2, the API and housekeeping on) and, beside it,
`ffmpeg -re` with the same source and x264 settings record for `seconds` (default 5
minutes). Each process's RSS is sampled every half second (psutil); growth is the median
RSS over the last 10 s of the run minus the median over the 10 s up to a fifth of the run
(minute 1 to minute 5 of the default 5 minutes). Peak RSS is the kernel's high-water mark
for each process (VmHWM), read until the process has exited, so start-up and almost all of
shutdown are in it.
One 5-minute run per `make bench`: five would take 25 minutes.
Targets (issue 15): vigil peak <= 100 MB, growth under 2 MB.
"""

from __future__ import annotations

import statistics
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
    stop_process,
    wait_for_first_fragment,
    workdir,
)

WIDTH, HEIGHT = 1920, 1080
SAMPLE_SECONDS = 0.5
WINDOW_SECONDS = 10.0
FIRST_FRAGMENT_TIMEOUT_SECONDS = 60.0
MB = 1e6


def sample_rss(recorders: list[Recorder], seconds: float) -> list[list[tuple[float, int]]]:
    """(seconds into the run, RSS bytes) of each recorder, every SAMPLE_SECONDS for `seconds`."""
    samples: list[list[tuple[float, int]]] = [[] for _ in recorders]
    began = time.perf_counter()
    while (now := time.perf_counter() - began) < seconds:
        for i, recorder in enumerate(recorders):
            if recorder.process.poll() is not None:
                raise RuntimeError(f"{recorder.name} exited ({recorder.process.returncode}) while recording")
            samples[i].append((now, recorder.rss_bytes()))
            recorder.note_peak()
        time.sleep(SAMPLE_SECONDS)
    return samples


def growth_bytes(samples: list[tuple[float, int]], seconds: float) -> float:
    """Median RSS over the run's last window minus the median over the window ending at a fifth."""
    window = min(WINDOW_SECONDS, seconds / 10)

    def median_before(end: float) -> float:
        inside = [rss for t, rss in samples if end - window <= t <= end]
        # A short (smoke) run may have no sample inside a window: take the one just before.
        if inside:
            return statistics.median(inside)
        return [rss for t, rss in samples if t <= end or t == samples[0][0]][-1]

    return median_before(seconds) - median_before(seconds / 5)


def run(*, seconds: float = 300.0, width: int = WIDTH, height: int = HEIGHT) -> str:
    ffmpeg = has_ffmpeg()
    with workdir("vigil-bench-memory-") as work:
        recorders = [launch_vigil(work, width, height)]
        if ffmpeg:
            recorders.append(launch_ffmpeg(work, width, height))
        with running(*recorders):
            for recorder in recorders:
                wait_for_first_fragment(recorder.root, recorder.process, FIRST_FRAGMENT_TIMEOUT_SECONDS)
            samples = sample_rss(recorders, seconds)
            for recorder in recorders:
                stop_process(recorder.process, while_stopping=recorder.note_peak)
    peaks = [recorder.peak_rss / MB for recorder in recorders]
    growths = [growth_bytes(s, seconds) / MB for s in samples]
    nan = Figure((float("nan"),))
    rows = [
        ("peak RSS", Figure((peaks[0],)), Figure((peaks[1],)) if ffmpeg else nan, "vigil <= 100 MB"),
        (f"RSS growth, {seconds / 5:g} s -> {seconds:g} s", Figure((growths[0],)),
         Figure((growths[1],)) if ffmpeg else nan, "vigil < 2 MB"),
    ]
    lines = [table(f"memory, {width}x{height}@30 recorded in real time for {seconds:g} s", "MB", rows,
                   fmt=".1f"),
             "one run (min..max are that run); vigil: `vigil run`, file backend, paced, API and "
             "housekeeping on; ffmpeg: -re, same source and x264 settings, side by side",
             load_note()]
    if not ffmpeg:
        lines.append(NO_FFMPEG)
    return "\n".join(lines)


def smoke() -> str:
    return run(seconds=0.5, width=320, height=240)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
