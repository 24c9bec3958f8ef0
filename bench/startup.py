"""Start-up: seconds from launching `vigil run` to its first fragment on disk, and `vigil --help`.

- First fragment: the clock starts just before the process is launched and stops when the
  first segment's `.partial` holds a complete moof+mdat pair (hw.recovery.playable_length),
  i.e. the first second of footage would survive a power cut. The camera is testsrc2 at
  1280x720, 30 fps, replayed in real time (file backend, paced), fragment_seconds 1: a
  fragment is written when the next keyframe arrives, so about 1 s of this is the
  fragment's own length, for vigil and for the reference alike. Reference: `ffmpeg -re`
  with the same source and settings, to its first fragment. Target: vigil <= 1.2 s.
- `vigil --help`: wall time of the installed entry point (imports kept lazy), and its CPU
  time (user + system, from the kernel's accounting of the reaped child), which a busy
  machine inflates far less than the wall time. Reference: `python -c pass`, the
  interpreter's own start-up floor. Target: vigil <= 0.1 s.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Figure, table
from bench.rig import (
    NO_FFMPEG,
    has_ffmpeg,
    launch_ffmpeg,
    launch_vigil,
    load_note,
    running,
    stop_process,
    wait_for_first_fragment,
    workdir,
)

WIDTH, HEIGHT = 1280, 720
FIRST_FRAGMENT_TIMEOUT_SECONDS = 60.0


def seconds_to_first_fragment(work: Path, which: str, run: int) -> float:
    launch = launch_vigil if which == "vigil" else launch_ffmpeg
    recorder = launch(work, WIDTH, HEIGHT, f"{which}-{run}")
    with running(recorder):
        seen = wait_for_first_fragment(recorder.root, recorder.process, FIRST_FRAGMENT_TIMEOUT_SECONDS)
        stop_process(recorder.process)
    return seen - recorder.launched


def help_command() -> list[str]:
    script = Path(sys.executable).with_name("vigil")
    return [str(script), "--help"] if script.exists() else [sys.executable, "-m", "controller.cli", "--help"]


def wall_seconds(command: list[str]) -> float:
    return wall_and_cpu_seconds(command)[0]


def wall_and_cpu_seconds(command: list[str]) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of running `command` to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(*, runs: int = 5, help_runs: int = 10) -> str:
    ffmpeg = has_ffmpeg()
    vigil_first: list[float] = []
    ffmpeg_first: list[float] = []
    with workdir("vigil-bench-startup-") as work:
        for i in range(runs):
            vigil_first.append(seconds_to_first_fragment(work, "vigil", i))
            if ffmpeg:
                ffmpeg_first.append(seconds_to_first_fragment(work, "ffmpeg", i))
    wall_seconds(help_command())  # the first run pays for cold caches; measure warm starts
    helps, floors, help_cpu, floor_cpu = [], [], [], []
    for _ in range(help_runs):
        wall, cpu = wall_and_cpu_seconds(help_command())
        helps.append(wall)
        help_cpu.append(cpu)
        wall, cpu = wall_and_cpu_seconds([sys.executable, "-c", "pass"])
        floors.append(wall)
        floor_cpu.append(cpu)
    rows = [
        ("launch -> first fragment, 720p30", Figure(tuple(vigil_first)),
         Figure(tuple(ffmpeg_first) or (float("nan"),)), "vigil <= 1.2 s"),
        ("vigil --help", Figure(tuple(helps)), Figure(tuple(floors)), "vigil <= 0.1 s"),
        ("vigil --help, CPU time", Figure(tuple(help_cpu)), Figure(tuple(floor_cpu)), ""),
    ]
    lines = [table("start-up", "s", rows, fmt=".3f"),
             "references: ffmpeg -re to its first fragment (same source and settings); "
             "python -c pass for --help",
             "a fragment is written when the next keyframe arrives: ~1.0 s of each first-fragment "
             "figure is the fragment's own length (fragment_seconds: 1)",
             load_note()]
    if not ffmpeg:
        lines.append(NO_FFMPEG)
    return "\n".join(lines)


def smoke() -> str:
    return run(runs=1, help_runs=1)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
