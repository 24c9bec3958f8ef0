"""500 fault/recover cycles on a real controller: nothing leaks, no frame is lost.

Each cycle posts `fault` (fired straight into the machine, as the ledger does when a budget
is spent), which closes the pipeline (threads joined, queue drained, segment closed), and
waits until the recovery attempt has the unit recording again from a fresh camera and
writer. After 500 cycles the open file descriptors and threads are what they were before
the first, RSS has grown by a few MB at most, and the frame numbers decoded from every
segment are contiguous: a clean fault loses nothing, because stopping the pipeline lets
the capture thread hand its last frame over and the encode thread drain the queue before
the segment closes, and the camera reads no frame while the unit is not recording.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

from controller.core.controller import Controller
from controller.storage.housekeeping import StorageSettings
from controller.storage.merge import segment_order
from controller.storage.retention import RetentionPolicy
from hw.factory import Hardware
from hw.footage import PARTIAL_SUFFIX
from states.recovering import RecoveryPolicy
from tests.helpers import frame_numbers, gaps
from tests.specs import camera_spec, recording_spec

CYCLES = 500
RSS_GROWTH_LIMIT_MB = 50.0
SETTLE_SECONDS = 5.0
Transition = tuple[float, str, str, str]


def open_fds() -> Counter[str]:
    """What this process holds open, by target; every `.partial` counts as one kind."""
    held: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listdir itself used, already closed
        held["<open segment>" if PARTIAL_SUFFIX in target else target] += 1
    return held


def python_threads() -> Counter[str]:
    return Counter(t.name for t in threading.enumerate())


def os_threads() -> int:
    """Native threads too (libx264's encoder threads are not Python threads)."""
    return len(os.listdir("/proc/self/task"))


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def poll(predicate: Callable[[], bool], timeout: float = SETTLE_SECONDS) -> bool:
    """True once `predicate()` holds; False if `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def recording_with_a_frame(c: Controller) -> bool:
    """Recording, and the writer has its segment open (so the held fds are comparable)."""
    pipeline = c.unit.pipeline
    return (c.state == "recording" and pipeline is not None and pipeline.is_running
            and pipeline.stats.frames_recorded > 0 and pipeline.writer.open_path is not None)


def back_in_recording(c: Controller, marker: Transition) -> bool:
    """A transition into `recording` was logged after `marker`."""
    latest = c.transitions[-1]
    return latest is not marker and latest[2] == "recording"


def transitions_since(c: Controller, marker: Transition) -> list[tuple[str, str, str]]:
    """(before, after, trigger) of every transition after `marker` (the list keeps 100)."""
    log = list(c.transitions)
    index = next(i for i in range(len(log) - 1, -1, -1) if log[i] is marker)
    return [(before, after, trigger) for _, before, after, trigger in log[index + 1 :]]


def test_500_fault_recover_cycles_leak_nothing_and_lose_no_frame(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    # 160x120, not 64x48: the frame-number code needs 3+ px per cell to be read back.
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=30, frozen_seconds=0),
                        recording_spec(root=root, segment_seconds=2, fragment_seconds=0.5))
    # Housekeeping that neither merges nor deletes: every frame recorded stays where it was
    # written, whatever the hour or the free space of the machine running the test.
    keep_everything = StorageSettings(merge="off", retention=RetentionPolicy(
        retention_days=0, reserve_mb=0, reserve_percent=0))
    # stable_seconds=0: every cycle is a recovery at once. (These faults come faster than any
    # stable time; the flapping rule they would meet is tests/e2e/test_flapping.py's.)
    controller = Controller(hardware, policy=RecoveryPolicy(max_attempts=3, backoff_seconds=0.2,
                                                            stable_seconds=0.0),
                            autostart=True, storage=keep_everything)
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    try:
        assert controller.wait_for_state("recording", 20), controller.refusals
        assert poll(lambda: recording_with_a_frame(controller))
        fds, threads, tasks = open_fds(), python_threads(), os_threads()
        rss_before = rss_mb()

        started = time.monotonic()
        for cycle in range(CYCLES):
            marker = controller.transitions[-1]
            controller.post("fault")
            # The transition is logged after the state changes: wait for the log, not the state.
            assert controller.wait_until(
                lambda m=marker: back_in_recording(controller, m), 10
            ), f"cycle {cycle}: not recording again; refusals {controller.refusals[-3:]}"
            assert transitions_since(controller, marker) == [
                ("recording", "recovering", "fault"), ("recovering", "recording", "recovered")]
            # Every run records before the next fault, so each boundary is checked for loss.
            assert poll(lambda: recording_with_a_frame(controller)), f"cycle {cycle}: no frame"
        per_cycle_ms = (time.monotonic() - started) / CYCLES * 1000

        growth = rss_mb() - rss_before
        print(f"RSS growth after {CYCLES} cycles: {growth:.1f} MB")
        print(f"fault/recover cycle: {per_cycle_ms:.0f} ms on average")
        # No growth: nothing held now that was not held before the first cycle. (The baseline
        # may include something short-lived, such as the housekeeping pass's lock file.)
        assert poll(lambda: python_threads() <= threads), python_threads() - threads
        assert poll(lambda: os_threads() <= tasks), (os_threads(), tasks)
        assert poll(lambda: open_fds() <= fds), open_fds() - fds
        assert growth < RSS_GROWTH_LIMIT_MB
        assert controller.unit.abandoned == []
        assert controller.refusals == []
        assert controller.ledger.totals == Counter()  # no error was reported, only faults posted
    finally:
        controller.request_shutdown()
        loop.join(20)
    assert not loop.is_alive(), "controller did not shut down"
    assert controller.exit_code == 0

    assert not list(root.rglob("*" + PARTIAL_SUFFIX))
    closed = sorted(root.rglob("*.mp4"), key=segment_order)
    # A fault keeps the writer: each recovery continues the open segment, so the files are
    # those of the segment length, not one (at least) per recording run.
    elapsed = time.monotonic() - started
    assert 1 <= len(closed) <= elapsed / hardware.recording.segment_seconds + 2, len(closed)
    numbers = [n for path in closed for n in frame_numbers(path)]
    totals = controller.snapshot.totals
    assert totals.frames_dropped == 0 and totals.frames_invalid == 0
    # Every frame the camera produced was recorded, and every frame recorded is on disk,
    # in order: 0 frames lost per fault.
    assert totals.frames_captured == totals.frames_recorded == len(numbers)
    assert gaps(numbers) == []
    print(f"{len(closed)} segments, {len(numbers)} frames, 0 lost over {CYCLES} faults")
