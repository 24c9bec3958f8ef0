"""The recording path of `vigil run` (hw.factory.Hardware) with the synthetic camera, in a child.

The adaptive-quality test and bench run this inside a CPU-limited cgroup (tests/cpulimit.py).
It records until a line `stop` (or EOF) arrives on stdin, printing a JSON line of counters
every PRINT_EVERY_SECONDS, then one final JSON line with what the camera delivered, which
frames the ladder decimated and every step it took. Not a test module: run as
`python -m tests.adaptive_harness '{"root": ..., "adaptive": true, ...}'`; `Harness` starts
one and reads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from hw.adaptive import StepChange
from hw.factory import Hardware
from tests.cpulimit import CpuLimit
from tests.specs import camera_spec, recording_spec

REPO = Path(__file__).resolve().parent.parent

PRINT_EVERY_SECONDS = 0.25


class Harness:
    """The recording child, seen from the parent: its counter lines, its CPU time, and a way
    to stop it and read its report."""

    def __init__(self, root: Path, limit: CpuLimit, *, adaptive: bool, width: int, height: int,
                 fps: float, down_after_seconds: float = 1.0, up_after_seconds: float = 3.0,
                 height_floor: int | None = None) -> None:
        args = json.dumps({"root": str(root), "adaptive": adaptive, "width": width, "height": height,
                           "fps": fps, "down_after_seconds": down_after_seconds,
                           "up_after_seconds": up_after_seconds,
                           "height_floor": height_floor if height_floor is not None else height})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.adaptive_harness", args], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=limit.preexec)
        self.ps = psutil.Process(self.process.pid)
        self.last: dict[str, Any] = {}
        self.lines: list[dict[str, Any]] = []
        self._first = threading.Event()
        self._final: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, name="harness-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            data = json.loads(line)
            if data.get("final"):
                self._final = data
            else:
                self.last = data
                self.lines.append(data)
                self._first.set()

    def wait_for_recording(self, timeout: float = 30.0) -> None:
        assert self._first.wait(timeout), "the harness never reported"

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def wait_for(self, check: str, predicate: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last and predicate(self.last):
                return self.last
            assert self.process.poll() is None, "the harness exited"
            time.sleep(0.05)
        raise AssertionError(f"{check} did not happen within {timeout} s; last {self.last}")

    def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self._final is not None, "the harness wrote no report"
        return self._final


def main(argv: list[str]) -> int:
    args: dict[str, Any] = json.loads(argv[0])
    rec = recording_spec(root=Path(args["root"]), segment_seconds=3600.0,
                         encoder_preset=args.get("preset", "ultrafast"), crf=args.get("crf", 23))
    rec = replace(rec, adaptive=replace(
        rec.adaptive, enabled=bool(args["adaptive"]), crf_ceiling=args.get("crf_ceiling", rec.crf),
        height_floor=args.get("height_floor", args["height"]),
        fps_floor=args.get("fps_floor", rec.adaptive.fps_floor),
        down_after_seconds=args.get("down_after_seconds", 1.0),
        up_after_seconds=args.get("up_after_seconds", 3.0)))
    hardware = Hardware(camera_spec(backend="synthetic", width=args["width"], height=args["height"],
                                    fps=args["fps"]), rec)
    delivered: list[int] = []
    hardware.faults.delivered = delivered
    errors: list[str] = []
    steps: list[StepChange] = []
    camera = hardware.make_camera()
    camera.open()
    pipeline = hardware.make_pipeline(camera, rec.root, lambda c, r: errors.append(f"{c}: {r}"),
                                      when_quality_step=steps.append)
    decimated: list[int] = []
    if pipeline.quality is not None:
        pipeline.quality.when_decimated = decimated.append
    pipeline.start()
    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read_stdin, name="harness-stdin", daemon=True).start()
    stats = pipeline.stats
    while not stop.wait(PRINT_EVERY_SECONDS):
        print(json.dumps({"captured": stats.frames_captured, "dropped": stats.frames_dropped,
                          "decimated": stats.frames_decimated, "recorded": stats.frames_recorded,
                          "level": stats.quality_level, "dead": pipeline.is_dead}), flush=True)
    report = pipeline.stop(timeout=10.0)
    print(json.dumps({
        "final": True, "delivered": delivered, "decimated_frames": decimated,
        "captured": stats.frames_captured, "dropped": stats.frames_dropped,
        "decimated": stats.frames_decimated, "recorded": stats.frames_recorded,
        "level": stats.quality_level, "errors": errors, "abandoned": list(report.abandoned),
        "steps": [{"down": s.is_down, "level": s.new.level, "fps": s.new.fps, "at": s.at,
                   "describe": s.describe()} for s in steps],
        "ladder": ([s.describe() for s in pipeline.quality.governor.ladder]
                   if pipeline.quality is not None else []),
    }), flush=True)
    return 0


if __name__ == "__main__":
    time.sleep(0)  # the cgroup is joined before exec (tests/cpulimit.py): nothing to wait for
    sys.exit(main(sys.argv[1:]))
