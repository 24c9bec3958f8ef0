"""Frames dropped per minute with and without adaptive quality, under the same CPU quota, same run.

The recording path (hw.factory's pipeline, libx264, the synthetic camera at 640x480 30 fps)
runs in a child process inside a cgroup of our own (tests/cpulimit.py: v1 cpu.cfs_quota_us or
v2 cpu.max). The quota is set from what the child used unlimited just before: QUOTA_SHARE of
it, so the encoder falls behind at the full rate on any machine. Each run records the same
number of seconds under that quota, first with adaptation off (the reference), then on.
Without a writable cgroup cpu controller (not root) the block says so and measures nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import Figure, machine_line, table
from tests import cpulimit
from tests.adaptive_harness import Harness

WIDTH, HEIGHT, FPS = 640, 480, 30.0
QUOTA_SHARE = 0.55
CALIBRATE_SECONDS = 2.0
TITLE = f"adaptive quality under a CPU quota, {WIDTH}x{HEIGHT} {FPS:g} fps libx264"


def _limited_run(root: Path, limit: cpulimit.CpuLimit, *, adaptive: bool, share: float | None,
                 seconds: float) -> tuple[dict[str, float], float]:
    """Counters per minute of one run under the quota, and the quota (in cores) it ran under."""
    harness = Harness(root, limit, adaptive=adaptive, width=WIDTH, height=HEIGHT, fps=FPS,
                      up_after_seconds=60.0)
    harness.wait_for_recording()
    if share is None:
        used = harness.cpu_seconds()
        time.sleep(CALIBRATE_SECONDS)  # measuring what the recording needs unlimited
        share = (harness.cpu_seconds() - used) / CALIBRATE_SECONDS * QUOTA_SHARE
    limit.set(share)
    before = dict(harness.last)
    started = time.monotonic()
    time.sleep(seconds)  # the measured period
    after = dict(harness.last)
    elapsed = time.monotonic() - started
    limit.set(None)
    report = harness.stop()
    per_minute = {key: (after[key] - before[key]) * 60.0 / elapsed
                  for key in ("captured", "dropped", "decimated", "recorded")}
    per_minute["lowest_fps"] = min((s["fps"] for s in report["steps"]), default=FPS)
    return per_minute, share


def run(seconds: float = 30.0, runs: int = 1) -> str:
    why_not = cpulimit.unavailable()
    if why_not:
        return "\n".join([f"== {TITLE}", machine_line(),
                          f"not measured, ratio n/a: {why_not}"])
    plain_rows: list[dict[str, float]] = []
    adaptive_rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-adaptive-") as tmp, \
            cpulimit.CpuLimit(f"vigil-bench-adaptive-{time.monotonic_ns()}", None) as limit:
        share: float | None = None
        for index in range(runs):
            row, share = _limited_run(Path(tmp) / f"plain{index}", limit, adaptive=False,
                                      share=share, seconds=seconds)
            plain_rows.append(row)
            row, share = _limited_run(Path(tmp) / f"adaptive{index}", limit, adaptive=True,
                                      share=share, seconds=seconds)
            adaptive_rows.append(row)
    assert share is not None

    def fig(rows: list[dict[str, float]], key: str) -> Figure:
        return Figure(tuple(r[key] for r in rows))

    block = table(f"{TITLE}, {seconds:g} s each under {limit.kind} = {share:.3f} cores", "/min", [
        ("frames dropped per minute", fig(adaptive_rows, "dropped"), fig(plain_rows, "dropped"),
         "adaptive: 0; reference: adaptation off"),
        ("frames decimated per minute", fig(adaptive_rows, "decimated"), fig(plain_rows, "decimated"),
         "skipped on purpose, counted apart"),
        ("frames recorded per minute", fig(adaptive_rows, "recorded"), fig(plain_rows, "recorded"),
         "every second covered"),
        ("lowest frame rate taken (fps)", fig(adaptive_rows, "lowest_fps"), fig(plain_rows, "lowest_fps"),
         "ladder's floor 10 fps"),
    ], fmt=".1f")
    return block


def smoke() -> str:
    return run(seconds=2.0)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
