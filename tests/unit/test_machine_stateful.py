"""Random event sequences on a real Unit; after every step the machine's invariants hold.

A real Unit with real hardware (the synthetic camera, libx264, segment files). The test
plays the controller: it fires triggers, delivers what the unit posts (reset_done, start)
at once and what it schedules (recovery attempts, critical probes) when a virtual clock
reaches them, and turns a dead pipeline into a `fault` as the controller's tick does.
Hypothesis mixes triggers (valid or not in the current state), camera disconnects, the
recording root vanishing, and time passing.

Invariants after every step:
- the machine is in one of the five states, and has settled (nothing due is left undone);
- a pipeline is held, with its threads running, exactly in `recording`;
- no `.partial` exists under the root other than the open writer's (or, after a camera loss,
  the one held for the camera to come back), and none other is held open outside `recording`;
- no capture or encode thread is alive outside `recording`; no camera is left pending.
"""

from __future__ import annotations

import heapq
import itertools
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hw.factory import Hardware
from hw.footage import PARTIAL_SUFFIX
from states.guards import open_partial_files
from states.machine import STATE_NAMES
from states.recovering import RecoveryPolicy
from states.unit import Unit
from tests.specs import camera_spec, recording_spec

CAMERA = camera_spec(backend="synthetic", width=64, height=48, fps=30, frozen_seconds=0,
                    read_timeout_seconds=1.0)
POLICY = RecoveryPolicy(max_attempts=3, backoff_seconds=1.0, backoff_max_seconds=4.0,
                        critical_probe_seconds=5.0)
# Far more than any window needs (30 s of probing a dead camera is ~20 events); more is a livelock.
MAX_DELIVERIES = 60
# Every poll waits for something that must happen (none asks "did nothing happen?"), so its
# bound is a hang guard only: 3 s, the old bound, ran out beside two busy loops (issue 19).
SETTLE_SECONDS = 60.0
DISCONNECTED_SECONDS = 3600.0  # until the test clears it: the test, not the clock, decides
PIPELINE_THREADS = ("vigil-capture", "vigil-encode")


def poll(predicate: Callable[[], bool], timeout: float = SETTLE_SECONDS) -> bool:
    """True once `predicate()` holds; False if `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class PlayedController:
    """The controller's queue and timers, run synchronously by the test on a virtual clock."""

    def __init__(self) -> None:
        self.posted: deque[str] = deque()
        self.timers: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.errors: list[tuple[str, str]] = []
        self.delivered: list[str] = []

    def post(self, name: str, reason: str = "") -> None:
        self.posted.append(name)

    def schedule(self, delay: float, name: str) -> None:
        heapq.heappush(self.timers, (self.now + delay, next(self._seq), name))

    def cancel(self) -> None:
        self.timers.clear()

    def report(self, category: str, reason: str) -> None:
        self.errors.append((category, reason))  # called from pipeline threads; list.append is atomic

    def fire(self, unit: Unit, name: str) -> None:
        """What the controller's _dispatch does with one event."""
        self.delivered.append(name)
        unit.trigger(name)

    def settle(self, unit: Unit, seconds: float = 0.0) -> None:
        """Let `seconds` of virtual time pass, delivering every event in order as it comes due.

        Posted triggers and the tick run at once; a timer runs at its due time, and what it
        schedules runs too if it falls within the window (a discrete-event simulation).
        """
        until = self.now + seconds
        for _ in range(MAX_DELIVERIES):
            if unit.state == "recording" and unit.pipeline is not None and unit.pipeline.is_dead:
                self.fire(unit, "fault")  # the controller's tick: a dead pipeline is a fault
            elif self.posted:
                self.fire(unit, self.posted.popleft())
            elif self.timers and self.timers[0][0] <= until:
                due, _, name = heapq.heappop(self.timers)
                self.now = max(self.now, due)
                self.fire(unit, name)
            else:
                self.now = until
                return
        raise AssertionError(f"events still due after {MAX_DELIVERIES} deliveries: "
                             f"{self.delivered[-MAX_DELIVERIES:]}")


class UnitUnderRandomEvents(RuleBasedStateMachine):
    """Hypothesis drives one Unit through random triggers, faults and time."""

    def __init__(self) -> None:
        super().__init__()
        self.scratch = Path(tempfile.mkdtemp(prefix="vigil-stateful-"))
        self.root = self.scratch / "rec"
        self.played = PlayedController()
        hardware = Hardware(CAMERA, recording_spec(root=self.root, segment_seconds=2,
                                                  fragment_seconds=0.1))
        self.unit = Unit(hardware, policy=POLICY, autostart=True, post=self.played.post,
                         schedule=self.played.schedule, cancel_scheduled=self.played.cancel,
                         report_error=self.played.report, clock=lambda: self.played.now)

    def teardown(self) -> None:
        self.unit.cleanup(None)  # type: ignore[arg-type]
        self.unit.hardware.faults.disconnected_until = 0
        assert poll(lambda: not self.pipeline_threads()), self.pipeline_threads()
        assert not open_partial_files()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------

    def trigger(self, name: str, deliver: bool = True) -> None:
        """Fire `name` (ignored if invalid in this state); then, unless another event is
        already queued behind it (`deliver` False), deliver what it posted."""
        getattr(self.unit, name)()
        if deliver:
            self.settle()
        else:
            self.let_recording_land()

    def settle(self, seconds: float = 0.0) -> None:
        self.played.settle(self.unit, seconds)
        self.let_recording_land()

    def let_recording_land(self) -> None:
        """A pipeline just started records its first frame before the next event comes.

        Without this, whether a segment exists when the next event closes the pipeline would
        depend on thread timing, and a failing sequence would not replay the same way.
        """
        pipeline = self.unit.pipeline
        if self.unit.state == "recording" and pipeline is not None:
            assert poll(lambda: pipeline.is_dead or pipeline.stats.frames_recorded > 0), pipeline

    def pipeline_threads(self) -> list[str]:
        return [t.name for t in threading.enumerate() if t.name in PIPELINE_THREADS and t.is_alive()]

    def open_path(self) -> Path | None:
        pipeline = self.unit.pipeline
        return pipeline.writer.open_path if pipeline is not None else None

    def held_path(self) -> Path | None:
        """The segment kept open across a camera loss (outside `recording` only)."""
        held = self.unit.held_output
        return held.open_path if held is not None else None

    # -- rules: the triggers ---------------------------------------------------------

    @initialize()
    def begin_recording(self) -> None:
        """Most sequences are interesting from `recording` on; `idle` is one `stop` away."""
        self.trigger("start")
        assert self.unit.state == "recording", self.unit.refusal

    @rule(deliver=st.booleans())
    def start(self, deliver: bool) -> None:
        self.trigger("start", deliver)

    @rule(deliver=st.booleans())
    def stop(self, deliver: bool) -> None:
        self.trigger("stop", deliver)

    @rule(deliver=st.booleans())
    def fault(self, deliver: bool) -> None:
        self.trigger("fault", deliver)

    @rule(deliver=st.booleans())
    def reset(self, deliver: bool) -> None:
        self.trigger("reset", deliver)

    @rule(deliver=st.booleans())
    def recovered(self, deliver: bool) -> None:
        self.trigger("recovered", deliver)

    @rule(deliver=st.booleans())
    def give_up(self, deliver: bool) -> None:
        self.trigger("give_up", deliver)

    @rule(deliver=st.booleans())
    def probe(self, deliver: bool) -> None:
        self.trigger("probe", deliver)

    # -- rules: the world ------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0]))
    def time_passes(self, seconds: float) -> None:
        """Virtual time: recovery attempts come due after their backoff."""
        self.settle(seconds)

    @rule(seconds=st.sampled_from([5.0, 30.0]))
    def a_long_time_passes(self, seconds: float) -> None:
        """Virtual time: attempts run out, critical probes come due."""
        self.settle(seconds)

    def is_camera_plugged(self) -> bool:
        return not self.unit.hardware.faults.is_disconnected(time.monotonic())

    @precondition(is_camera_plugged)
    @rule()
    def unplug_camera(self) -> None:
        self.unit.hardware.faults.inject_disconnect(DISCONNECTED_SECONDS)
        pipeline = self.unit.pipeline
        if pipeline is not None:
            # The capture thread meets the disconnect at its next read and the pipeline dies.
            assert poll(lambda: pipeline.is_dead), "pipeline kept running without a camera"
        self.settle()

    @precondition(lambda self: not self.is_camera_plugged())
    @rule()
    def plug_camera_back(self) -> None:
        self.unit.hardware.faults.disconnected_until = 0
        self.settle()

    @rule()
    def delete_recording_root(self) -> None:
        pipeline = self.unit.pipeline
        before = self.open_path()
        shutil.rmtree(self.root, ignore_errors=True)
        if pipeline is not None:
            # The writer notices at its next keyframe: it saves the segment into a recreated
            # folder and goes on in a new one, or (when the folder vanished mid-split) dies.
            def handled() -> bool:
                now = pipeline.writer.open_path
                return pipeline.is_dead or (now is not None and now != before and now.exists())

            assert poll(handled), "the writer never noticed its folder was deleted"
        self.settle()

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def is_in_one_of_the_five_states(self) -> None:
        assert self.unit.state in STATE_NAMES

    @invariant()
    def holds_a_running_pipeline_exactly_when_recording(self) -> None:
        pipeline = self.unit.pipeline
        if self.unit.state == "recording":
            assert pipeline is not None and pipeline.is_running, pipeline
        else:
            assert pipeline is None, f"{self.unit.state} holds {pipeline!r}"
        assert self.unit.pending_camera is None

    @invariant()
    def no_partial_but_the_open_one(self) -> None:
        def only_the_open_one() -> bool:
            found = set(self.root.rglob("*" + PARTIAL_SUFFIX))
            now = self.open_path()  # read after the walk: a split in between shows, and is retried
            allowed = {now} if self.unit.state == "recording" and now is not None else set()
            held = self.held_path()
            if self.unit.state != "recording" and held is not None:
                allowed.add(held)
            return found <= allowed

        assert poll(only_the_open_one), (self.unit.state, list(self.root.rglob("*" + PARTIAL_SUFFIX)),
                                         self.open_path())

    @invariant()
    def nothing_of_recording_outlives_it(self) -> None:
        if self.unit.state == "recording":
            def held_is_the_open_one() -> bool:
                held = {Path(str(p).removesuffix(" (deleted)")) for p in open_partial_files()}
                return held <= {self.open_path()}

            assert poll(held_is_the_open_one), (open_partial_files(), self.open_path())
            return
        assert poll(lambda: not self.pipeline_threads()), self.pipeline_threads()
        held = self.held_path()
        open_now = {Path(str(p).removesuffix(" (deleted)")) for p in open_partial_files()}
        assert open_now <= ({held} if held is not None else set()), (open_now, held)

    @invariant()
    def holds_an_output_only_between_a_loss_and_the_recovery(self) -> None:
        if self.unit.state not in ("recovering", "critical"):
            assert self.unit.held_output is None, (self.unit.state, self.unit.held_output)


UnitUnderRandomEvents.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestUnitUnderRandomEvents = UnitUnderRandomEvents.TestCase
