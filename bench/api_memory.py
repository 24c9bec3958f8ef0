"""Memory of a recording daemon under API load and under a fault soak (issue 19, class 6).

`vigil run` records the synthetic camera (1280x720 at 30 fps, real uvicorn on loopback).
Bursts: `rounds` times, 600 requests are started at once (a mix of /health, /status,
/metrics, /recordings, /snapshot.jpg, /openapi.json and a 64 KiB range of a closed
segment; a 503 from the connection cap is retried, bounded), then the daemon idles for
`settle` seconds. RSS is sampled every 0.1 s (psutil). Fault soak: a second daemon whose
camera has a fault injected every few seconds (disconnect, stall, freeze, corrupt frames,
backward timestamps) for `soak` seconds, RSS sampled throughout.

A leak shows as RSS after each burst (or late in the soak) still climbing; a high-water
mark that stays (malloc keeps freed memory for reuse) shows as the same figure round
after round. Reference column: RSS before the first burst (before the soak's first fault).
Targets: RSS after the last burst within 8 MB of after the first; soak's last tenth
within 8 MB of its first. Before controller/memory.py pinned malloc's mmap threshold, the
bursts took RSS from 120 to 325 MB and it stayed there (glibc arenas keeping freed frames).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

from bench.common import Figure, table
from bench.rig import (
    compile_sources,
    free_port,
    load_note,
    stop_process,
    unit_environment,
    vigil_command,
    workdir,
)

BURST_REQUESTS = 600
SAMPLE_SECONDS = 0.1
RETRY_503 = 200
REQUEST_TIMEOUT_SECONDS = 30.0
ATTEMPT_TIMEOUT_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
FAULT_EVERY_SECONDS = 6.0
FAULTS = [
    {"kind": "disconnect", "seconds": 2},
    {"kind": "corrupt", "count": 40},
    {"kind": "stall", "seconds": 3},
    {"kind": "freeze", "seconds": 2},
    {"kind": "backward_timestamps", "count": 40},
]
MB = 1e6


def write_config(path: Path, root: Path, port: int, width: int, height: int,
                 faults: list[dict[str, object]] | None = None) -> Path:
    lines = ["camera:", "  backend: synthetic", f"  width: {width}", f"  height: {height}", "  fps: 30",
             "  frozen_seconds: 1"]
    if faults:
        lines.append("  inject_faults:")
        lines += [f"    - {json.dumps(fault)}" for fault in faults]
    lines += ["recording:", f"  root: {root}", "  segment_seconds: 10", "  merge: 'off'",
              "storage:", "  retention_days: 0", "  reserve_mb: 0", "  reserve_percent: 0",
              "recovery:", "  backoff_seconds: 0.5", "  backoff_max_seconds: 1", "  max_attempts: 20",
              "api:", f"  listen: 127.0.0.1:{port}", f"  token_file: {path.parent / 'no-token'}",
              "  public_footage: true",
              "gpio:", "  enabled: false", ""]
    path.write_text("\n".join(lines))
    return path


class Daemon:
    def __init__(self, work: Path, name: str, width: int, height: int,
                 faults: list[dict[str, object]] | None = None) -> None:
        self.port = free_port()
        self.root = work / name
        config = write_config(work / f"{name}.yaml", self.root, self.port, width, height, faults)
        self.log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the child writes to it
        compile_sources()  # as bench/rig.py's launch_vigil: compiled, the unit's environment
        self.process = subprocess.Popen(vigil_command(config), stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=unit_environment())
        self.usage = psutil.Process(self.process.pid)

    def rss(self) -> int:
        return int(self.usage.memory_info().rss)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as reply:
            return bytes(reply.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vigil exited ({self.process.returncode}) before it answered")
            try:
                pages = json.loads(self.get("/recordings"))
                if any(h["segments"] for h in pages["hours"]):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("vigil did not record a closed segment in time")

    def segment_path(self) -> str:
        pages = json.loads(self.get("/recordings"))
        return str(next(s["path"] for h in pages["hours"] for s in h["segments"]))

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class Sampler:
    """RSS of a process every SAMPLE_SECONDS on a thread, as (monotonic time, bytes)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.daemon.rss()))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]


async def _exchange(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def _one(port: int, path: str, outcomes: Counter[str]) -> None:
    head = (f"GET {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n"
            + ("Range: bytes=0-65535\r\n" if path.startswith("/recordings/") else "") + "\r\n").encode()
    for _ in range(RETRY_503):
        try:
            answer = await asyncio.wait_for(_exchange(port, head), ATTEMPT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError):
            outcomes["connection reset or timed out, retried"] += 1
            await asyncio.sleep(0.05)
            continue
        if not answer:  # an idle connection dropped at the cap before our request got in
            outcomes["closed unanswered, retried"] += 1
            await asyncio.sleep(0.05)
            continue
        status = answer[9:12].decode(errors="replace")
        if status == "503" and (b"too many connections" in answer or b"Service Unavailable" in answer[-40:]):
            outcomes["503 at the cap, retried"] += 1
            await asyncio.sleep(0.05)
            continue
        outcomes[status] += 1
        return
    outcomes["gave up"] += 1


async def _burst(port: int, paths: list[str]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    await asyncio.wait_for(asyncio.gather(*(_one(port, paths[i % len(paths)], outcomes)
                                            for i in range(BURST_REQUESTS))),
                           REQUEST_TIMEOUT_SECONDS * 10)
    return outcomes


def bursts(*, rounds: int = 5, settle: float = 20.0, width: int = 1280, height: int = 720
           ) -> tuple[list[tuple[float, float, float]], float, Counter[str]]:
    """[(peak during, right after, after settling) per round] in MB, RSS before, outcomes."""
    with workdir("vigil-bench-api-memory-") as work:
        daemon = Daemon(work, "bursts", width, height)
        try:
            daemon.wait_ready()
            paths = ["/health", "/status", "/metrics", "/recordings", "/snapshot.jpg", "/openapi.json",
                     f"/recordings/{daemon.segment_path()}"]
            time.sleep(min(settle, 5.0))  # recording settles in before the reference figure
            results: list[tuple[float, float, float]] = []
            outcomes: Counter[str] = Counter()
            with Sampler(daemon) as sampler:
                before = daemon.rss() / MB
                for _ in range(rounds):
                    began = time.monotonic()
                    outcomes += asyncio.run(_burst(daemon.port, paths))
                    ended = time.monotonic()
                    right_after = daemon.rss() / MB
                    time.sleep(settle)
                    settled = statistics.median(sampler.between(time.monotonic() - 2.0, time.monotonic()))
                    peak = max(sampler.between(began, ended) or [daemon.rss()]) / MB
                    results.append((peak, right_after, settled / MB))
            if daemon.process.poll() is not None:
                raise RuntimeError(f"vigil exited ({daemon.process.returncode}) during the bursts")
        finally:
            daemon.stop()
    return results, before, outcomes


def soak(*, seconds: float = 180.0, width: int = 1280, height: int = 720) -> tuple[list[int], float]:
    """RSS samples (bytes) over a fault soak of `seconds`, and the RSS before its first fault."""
    count = max(1, int(seconds // FAULT_EVERY_SECONDS))
    with workdir("vigil-bench-soak-memory-") as work:
        # The schedule counts from the daemon's start: the first fault after its first segment.
        lead = 15.0
        faults = [{**FAULTS[i % len(FAULTS)], "after_seconds": lead + i * FAULT_EVERY_SECONDS}
                  for i in range(count)]
        daemon = Daemon(work, "soak", width, height, faults=faults)
        try:
            started = time.monotonic()
            daemon.wait_ready()
            with Sampler(daemon) as sampler:
                time.sleep(max(0.0, started + lead - time.monotonic()))
                before = daemon.rss() / MB
                time.sleep(seconds)
            if daemon.process.poll() is not None:
                raise RuntimeError(f"vigil exited ({daemon.process.returncode}) during the soak")
        finally:
            daemon.stop()
    return [rss for _, rss in sampler.samples], before


def run(*, rounds: int = 5, settle: float = 20.0, soak_seconds: float = 180.0,
        width: int = 1280, height: int = 720) -> str:
    results, before, outcomes = bursts(rounds=rounds, settle=settle, width=width, height=height)
    reference = Figure((before,))
    rows = []
    for i, (peak, _right_after, settled) in enumerate(results, 1):
        rows.append((f"burst {i}: peak RSS", Figure((peak,)), reference, ""))
        rows.append((f"burst {i}: RSS {settle:g} s after", Figure((settled,)), reference, ""))
    growth = results[-1][2] - results[0][2]
    rows.append((f"RSS growth, burst 1 -> {len(results)}", Figure((growth,)), Figure((0.0,)), "<= 8 MB"))
    samples, soak_before = soak(seconds=soak_seconds, width=width, height=height)
    tenth = max(1, len(samples) // 10)
    first, last = statistics.median(samples[:tenth]) / MB, statistics.median(samples[-tenth:]) / MB
    soak_ref = Figure((soak_before,))
    rows += [
        (f"soak {soak_seconds:g} s: first tenth RSS", Figure((first,)), soak_ref, ""),
        (f"soak {soak_seconds:g} s: last tenth RSS", Figure((last,)), soak_ref, ""),
        ("soak: peak RSS", Figure((max(samples) / MB,)), soak_ref, ""),
        ("soak: growth, first -> last tenth", Figure((last - first,)), Figure((0.0,)), "<= 8 MB"),
    ]
    answered = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    return "\n".join([
        table(f"API memory, {width}x{height}@30 synthetic, {BURST_REQUESTS} concurrent requests x "
              f"{len(results)}, fault soak", "MB", rows, fmt=".1f"),
        f"reference: RSS before the first burst / before the soak's first fault; answers: {answered}",
        load_note(),
    ])


def smoke() -> str:
    return run(rounds=1, settle=1.0, soak_seconds=2.0, width=160, height=120)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
