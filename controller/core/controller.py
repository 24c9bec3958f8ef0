"""The Controller: one thread that owns the state machine and drains an event queue.

Everything else (pipeline threads, signal handlers, the API, GPIO callbacks) only puts
events on the queue with `post`, `command`, `report_error` or `request_shutdown`, and sees
the recorder through the status snapshot (`snapshot`) and the event bus (`bus`). The loop
also runs scheduled triggers (recovery attempts, critical probes) and a health tick that
reports a silent or dead pipeline to the error ledger, which decides on a fault.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from controller.core.alerts import AlertLog
from controller.core.events import (
    AlertRaised,
    CommandDone,
    ConfigReloaded,
    EventBus,
    FaultRaised,
    SegmentClosed,
    StateChanged,
    TransitionRefused,
)
from controller.core.health import Health, HealthSampler
from controller.core.ledger import Budget, ErrorLedger
from controller.core.snapshot import QualityStatus, Refusal, RunCounters, StatusSnapshot, UploadBacklog
from controller.storage.housekeeping import StorageHousekeeper, StorageSettings
from controller.storage.merge import MergedHour
from hw.adaptive import StepChange
from hw.factory import Hardware
from hw.pipeline import RecordingPipeline
from hw.recovery import recover_partials
from hw.storage import probe_root
from hw.writer import HOLD_CATEGORY, ClosedSegment
from states import recovering
from states.machine import STATE_NAMES, TRIGGERS, accepts
from states.recovering import RecoveryPolicy
from states.unit import Unit

TICK_SECONDS = 0.25
EXIT_OK = 0
EXIT_HUNG_HARDWARE = 70  # EX_SOFTWARE: systemd restarts us with a fresh process
STALL_GRACE_SECONDS = 1.0
CAMERA_CLOSE_THREAD = "vigil-camera-close"
DEFAULT_MAX_ABANDONED = 3
HEALTH_SECONDS = 1.0
ROOT_RECHECK_SECONDS = 10.0
ALERTS_IN_SNAPSHOT = 20
HISTORY_KEPT = 100
# Losses of recording, each within `stable_seconds` of the recovery before it, that make a
# flapping camera: raised once per episode, cleared once the unit records stably again.
FLAPPING_LOSSES = 3
FLAPPING_KEY = "camera"


@dataclass(frozen=True)
class Parts:
    """What the composition root (daemon.py) builds from one config; a reset swaps in a new set.

    `config` is the validated config itself, handed on in ConfigReloaded so that the parts
    that live outside the controller (API token, GPIO pins) are rebuilt from the same file.
    """

    hardware: Hardware
    policy: RecoveryPolicy
    autostart: bool
    budgets: Mapping[str, Budget]
    max_abandoned: int
    storage: StorageSettings
    config: Any = None
    source: str = ""


@dataclass(frozen=True)
class Event:
    kind: str  # "trigger", "error", "shutdown"
    name: str
    detail: str = ""
    cause: int | None = None  # the command this event belongs to, if any


class Controller:
    """Owns the Unit and its machine; `run()` is the controller loop."""

    def __init__(
        self,
        hardware: Hardware,
        *,
        policy: RecoveryPolicy | None = None,
        autostart: bool = True,
        reload: Callable[[], Parts | None] | None = None,
        ledger: ErrorLedger | None = None,
        max_abandoned: int = DEFAULT_MAX_ABANDONED,
        storage: StorageSettings | None = None,
        bus: EventBus | None = None,
        alerts: AlertLog | None = None,
    ) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.bus = bus or EventBus()
        self.ledger = ledger or ErrorLedger()
        self.max_abandoned = max_abandoned
        self._timers: list[tuple[float, int, int, str]] = []
        self._timer_seq = itertools.count()
        self._generation = 0
        self._changed = threading.Condition()
        self._running = False
        self.exit_code: int | None = None
        # Monotonic time of the loop's latest iteration (None before run()); the systemd
        # watchdog thread stops pinging when it grows old, so a wedged loop gets us restarted.
        self.heartbeat: float | None = None
        # History for tests and logs; nothing outside the controller thread decides by it.
        self.transitions: list[tuple[float, str, str, str]] = []
        self.refusals: list[tuple[float, str, str]] = []
        self.state_since = time.time()
        self.alerts = alerts if alerts is not None else AlertLog()  # tests pass one with a fake clock
        self.alerts.when_alert = lambda alert: self.bus.publish(AlertRaised(alert))
        self.health: Health | None = None
        self._health_sampler = HealthSampler()
        self._next_health = 0.0
        self._next_root_check = 0.0
        self.root_recheck_seconds = ROOT_RECHECK_SECONDS
        self._alerted_root: Path | None = None
        self._flapping = ""  # the episode's latest count, for the alert's clearing line
        # Lifetime totals: runs that ended are folded in; the counted run is read live.
        self._finished_runs = RunCounters()
        self._counted_pipeline: RecordingPipeline | None = None
        # Commands: each posted command's chain of events, until the last one is handled.
        self._command_ids = itertools.count(1)
        self._cause: int | None = None
        self._pending: dict[int, int] = {}
        self._chains: dict[int, _Chain] = {}
        self._reload = reload
        self.unit = Unit(
            hardware,
            policy=policy or RecoveryPolicy(),
            autostart=autostart,
            post=self._post_from_machine,
            schedule=self._schedule,
            cancel_scheduled=self._cancel_scheduled,
            report_error=self.report_error,
            reload=self._reload_parts,
            when_segment_closed=self._segment_closed,
            when_quality_step=self._quality_step,
        )
        # -- storage lifecycle: merge, retention, disk watch in their own thread --
        self.housekeeper = StorageHousekeeper(
            storage or StorageSettings(), roots=lambda: self.snapshot.footage_roots,
            active_root=lambda: self.snapshot.root,
            open_segments=lambda: self.snapshot.open_segments,
            bytes_written=lambda: self.snapshot.run.bytes_written,
            when_disk_low_changed=self._disk_low_changed, publish=self.bus.publish,
            closeouts=self.unit.closeouts,
            # AlertLog is safe from any thread; its alert goes on the bus (AlertRaised).
            when_footage_altered=lambda path, detail: self.alerts.record(
                "footage_altered", f"{path} no longer matches its manifest: {detail}"),
        )
        self.housekeeper.when_footage_lost = self._footage_lost
        # The upload surface's backlog, read into every snapshot; set while an uploader runs
        # (daemon.Surfaces). It must be cheap and safe to call from this thread.
        self.upload_backlog: Callable[[], UploadBacklog] | None = None
        self.snapshot: StatusSnapshot = self._build_snapshot()

    def __repr__(self) -> str:
        return f"<Controller state={self.state} queued={self.events.qsize()}>"

    @property
    def state(self) -> str:
        """The state of the latest snapshot (the controller thread's own view is the Unit's)."""
        return self.snapshot.state

    # -- what other threads may call -------------------------------------------------

    def post(self, trigger: str, reason: str = "") -> None:
        """Ask the machine to fire `trigger` (start, stop, reset, ...) on the controller thread."""
        self.events.put(Event("trigger", trigger, reason))

    def command(self, trigger: str) -> int:
        """Like `post`, and a CommandDone with the returned id is published once it settled.

        The outcome covers the whole chain the trigger starts: a reset is `reset`, then
        `reset_done`, then `start` when the reloaded config says autostart.
        """
        command_id = next(self._command_ids)
        self.events.put(Event("trigger", trigger, cause=command_id))
        return command_id

    def report_error(self, category: str, reason: str) -> None:
        """An error from anywhere; the ledger decides whether it is a fault."""
        self.events.put(Event("error", category, reason))

    def request_shutdown(self) -> None:
        self.events.put(Event("shutdown", "shutdown"))

    def wait_for_state(self, state: str, timeout: float) -> bool:
        """Block until the snapshot shows `state` (True) or `timeout` passes (False)."""
        return self.wait_until(lambda: self.snapshot.state == state, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds after some event or tick, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, TICK_SECONDS))
            return True

    def request_merge(self, hour: str | None = None) -> Future[list[MergedHour]]:
        """Merge `hour` (YYYY-MM-DDTHH) or every closed hour now, in the housekeeping thread.

        ValueError for a malformed hour; the future's exception says why nothing was merged
        (HourStillOpen, NothingToMerge, MergeBusy, MergeError).
        """
        return self.housekeeper.request_merge(hour)

    # -- the snapshot (built on the controller thread) -------------------------------

    def _build_snapshot(self) -> StatusSnapshot:
        unit = self.unit
        pipeline = unit.pipeline
        writer = pipeline.writer if pipeline is not None else None
        run = _run_counts(pipeline)
        rec = unit.hardware.recording
        refusals = [Refusal(name, reason, at) for at, name, reason in self.refusals]
        open_path = writer.open_path if writer is not None else None
        held_path = unit.held_output.open_path if unit.held_output is not None else None
        latest = pipeline.latest_frame if pipeline is not None else None
        return StatusSnapshot(
            state=unit.state,
            since=self.state_since,
            heartbeat=self.heartbeat,
            backend=unit.hardware.backend,
            public_key=unit.hardware.signer.public_key if unit.hardware.signer is not None else None,
            configured_fps=unit.hardware.camera.fps,
            fps_achieved=self._health_sampler.achieved_fps,
            run=run,
            totals=self._finished_runs + _run_counts(self._counted_pipeline),
            errors=dict(self.ledger.totals),
            faults=dict(self.ledger.faults),
            recovery_attempts=unit.recovery_attempts,
            recoveries_attempted=unit.recoveries_attempted,
            root=unit.root_status.path if unit.root_status is not None and unit.root_status.is_usable
            else None,
            primary_root=rec.root,
            footage_roots=(rec.root, *rec.fallback_roots),
            current_segment=open_path,
            open_segments=(*([open_path] if open_path is not None else []),
                           *([held_path] if held_path is not None else []), *unit.abandoned_paths),
            abandoned_calls=tuple(unit.abandoned),
            autostart=unit.autostart,
            last_refusal=refusals[-1] if refusals else None,
            refusals_since_state=tuple(r for r in refusals if r.at >= self.state_since),
            health=self.health,
            disk=self.housekeeper.monitor.latest,
            alerts=tuple(self.alerts.recent(ALERTS_IN_SNAPSHOT)),
            alert_counts=dict(self.alerts.counts),
            merges=dict(self.housekeeper.merge_counts),
            events=self.bus.stats(),
            latest_frame=latest,
            no_frame_reason=_why_no_frame(unit.state, pipeline),
            is_running=self._running,
            quality=_quality_status(pipeline),
            upload=self._upload_backlog(),
        )

    def _upload_backlog(self) -> UploadBacklog | None:
        read = self.upload_backlog
        if read is None:
            return None
        try:
            return read()
        except Exception as err:  # a surface's bug must not stop the loop
            logger.opt(exception=err).error("reading the upload backlog failed; status shows none")
            return None

    def _publish_snapshot(self) -> None:
        self.snapshot = self._build_snapshot()  # one reference swap: readers see old or new
        with self._changed:
            self._changed.notify_all()

    # -- what the machine and the recording threads call -----------------------------

    def _post_from_machine(self, trigger: str, reason: str = "") -> None:
        """A trigger queued by a state's callback: it belongs to the command being handled."""
        cause = self._cause
        if cause is not None:
            self._pending[cause] = self._pending.get(cause, 0) + 1
        self.events.put(Event("trigger", trigger, reason, cause=cause))

    def _quality_step(self, change: StepChange) -> None:
        """A quality step (on the capture thread): an alert; AlertLog is safe from any thread."""
        self.alerts.record("quality", f"quality {'down' if change.is_down else 'up'} to level "
                           f"{change.new.level}: {change.describe()}")

    def _segment_closed(self, closed: ClosedSegment) -> None:
        # The encode thread calls this; publishing never blocks it.
        self.bus.publish(SegmentClosed(closed.path, closed.frames, closed.started_wallclock,
                                       closed.duration_seconds, closed.size_bytes))

    def _footage_lost(self, path: Path, reason: str) -> None:
        """Retention deleted footage that was not in the bucket yet (housekeeping thread)."""
        logger.error("footage lost before upload: {} ({})", path, reason)
        self.alerts.record("footage_lost", f"footage lost before upload: {path} deleted ({reason})")

    def _disk_low_changed(self, disk: object) -> None:
        path = getattr(disk, "path", "")
        reserve = getattr(disk, "reserve_bytes", 0)
        self.alerts.condition("low_disk", str(path), bool(getattr(disk, "is_low", False)),
                              f"free space on {path} is below the {reserve / 2**20:.0f} MiB reserve")

    def _track_run(self, pipeline: RecordingPipeline | None) -> None:
        """Fold a finished run's counters into the totals once the unit holds another."""
        if pipeline is self._counted_pipeline:
            return
        self._finished_runs = self._finished_runs + _run_counts(self._counted_pipeline)
        self._counted_pipeline = pipeline

    # -- scheduling (controller thread only) -----------------------------------------

    def _schedule(self, delay: float, name: str) -> None:
        due = time.monotonic() + delay
        heapq.heappush(self._timers, (due, next(self._timer_seq), self._generation, name))

    def _cancel_scheduled(self) -> None:
        self._generation += 1
        self._timers.clear()

    def _reload_parts(self) -> tuple[Hardware, RecoveryPolicy, bool] | None:
        """A reset: reload the config and swap in every part built from it."""
        self.ledger.clear()
        if self._reload is None:
            return None
        parts = self._reload()
        if parts is None:
            return None
        self.apply(parts)
        return parts.hardware, parts.policy, parts.autostart

    def apply(self, parts: Parts) -> None:
        """Use `parts` from now on: budgets, limits and storage here; the rest via ConfigReloaded."""
        self.ledger.budgets = dict(parts.budgets)
        self.max_abandoned = parts.max_abandoned
        self.housekeeper.reconfigure(parts.storage)
        self.bus.publish(ConfigReloaded(parts.source, parts))

    # -- the loop --------------------------------------------------------------------

    def start_up(self) -> None:
        """Close out what a crash left behind, then start recording if the config says so."""
        rec = self.unit.hardware.recording
        for root in (rec.root, *rec.fallback_roots):
            recover_partials(root, signer=self.unit.hardware.signer)
        if self.unit.autostart:
            self.post("start")

    def run(self) -> int:
        """Drain events until shutdown; returns the process exit code."""
        self._running = True
        self.start_up()
        self.housekeeper.start()
        next_tick = time.monotonic()
        while self.exit_code is None:
            now = time.monotonic()
            self.heartbeat = now
            wait = next_tick - now
            if self._timers:
                wait = min(wait, self._timers[0][0] - now)
            try:
                event = self.events.get(timeout=max(0.0, wait))
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            self._run_due_timers()
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + TICK_SECONDS
            self._publish_snapshot()
        self.housekeeper.stop()
        self._running = False
        self._publish_snapshot()
        return self.exit_code

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, generation, name = heapq.heappop(self._timers)
            if generation == self._generation:
                self._dispatch(name)

    def _handle(self, event: Event) -> None:
        if event.kind == "shutdown":
            self._shutdown(EXIT_OK)
        elif event.kind == "error":
            self._on_error(event.name, event.detail)
        else:
            self._cause = event.cause
            try:
                if event.cause is not None and event.cause not in self._chains:
                    self._chains[event.cause] = _Chain(event.name, self.unit.state)
                    self._pending[event.cause] = self._pending.get(event.cause, 0) + 1
                self._dispatch(event.name, event.detail)
            finally:
                self._cause = None
            if event.cause is not None:
                self._settle(event.cause)

    def _dispatch(self, name: str, reason: str = "") -> None:
        """Fire one of the machine's own triggers; anything else is refused and logged."""
        if name not in TRIGGERS:
            logger.warning("refused event {!r}: not a trigger of the machine (triggers: {})",
                           name, ", ".join(TRIGGERS))
            self._note(None, name, reason="not a trigger", possible=False)
            return
        state = self.unit.state
        if not accepts(name, state):
            logger.info("{} does nothing in state {}", name, state)
            self._note(None, name, reason=f"{name} does nothing in state {state}", possible=False)
            return
        kwargs = {"reason": reason} if reason else {}
        self._fire(name, **kwargs)

    def _fire(self, name: str, **kwargs: Any) -> None:
        unit = self.unit
        before = unit.state
        unit.refusal = ""
        try:
            unit.trigger(name, **kwargs)
        except Exception:
            logger.exception("transition {} from {} raised; treating as a fault", name, before)
            self.report_error("encoder_error", f"transition {name} raised")
        self._track_run(unit.pipeline)
        self._note_root_change()
        after = unit.state
        if after != before:
            self.state_since = time.time()
            self.transitions.append((time.time(), before, after, name))
            del self.transitions[:-HISTORY_KEPT]
            logger.info("state {} -> {} on {}", before, after, name)
            # A give_up carries the failed attempt's refusal as its reason.
            reason = kwargs.get("reason") or unit.refusal
            self.alerts.record_transition(before, after, name, reason)
            # The snapshot first: a subscriber that looks at it on this event sees the new state.
            self._publish_snapshot()
            self.bus.publish(StateChanged(before, after, name, reason))
            self._note(f"{before} -> {after} on {name}", name)
            self._note_flapping()
        elif unit.refusal:
            self.refusals.append((time.time(), name, unit.refusal))
            del self.refusals[:-HISTORY_KEPT]
            logger.warning("{} refused in state {}: {}", name, before, unit.refusal)
            self.bus.publish(TransitionRefused(name, before, unit.refusal))
            self._note(None, name, reason=unit.refusal)

    def _note(self, transition: str | None, trigger: str, *, reason: str = "", possible: bool = True) -> None:
        """Add what `trigger` did to the chain of the command being handled, if any."""
        chain = self._chains.get(self._cause) if self._cause is not None else None
        if chain is None:
            return
        if transition is not None:
            chain.transitions.append(transition)
        elif not possible and not chain.transitions:
            chain.impossible = reason
        elif chain.refused is None:
            chain.refused = (trigger, reason)

    def _settle(self, cause: int) -> None:
        """Once every event of a command's chain is handled, publish what it did."""
        left = self._pending.get(cause, 1) - 1
        if left > 0:
            self._pending[cause] = left
            return
        self._pending.pop(cause, None)
        chain = self._chains.pop(cause, None)
        if chain is None:
            return
        state = self.unit.state
        if chain.impossible:
            possible = ", ".join(s for s in STATE_NAMES if accepts(chain.trigger, s))
            detail = f"{chain.impossible} (possible from: {possible or 'nowhere'})"
        elif chain.refused is not None:
            detail = f"{chain.refused[0]} refused in state {state}: {chain.refused[1]}"
        else:
            detail = f"{chain.trigger} done: {chain.before} -> {state}"
        self._publish_snapshot()  # whoever waited for this outcome then reads the state it names
        self.bus.publish(CommandDone(cause, chain.trigger, chain.before, state, tuple(chain.transitions),
                                     chain.refused, not chain.impossible, detail))

    def _on_error(self, category: str, reason: str) -> None:
        if category in ("storage_full", HOLD_CATEGORY):
            self.housekeeper.request_reclaim()  # retention frees space before recovery retries
        spent = self.ledger.record(category)
        if not spent:
            logger.debug("error category={} reason={}", category, reason)
            return
        state = self.unit.state
        logger.error("fault category={} reason={} state={}", category, reason, state)
        self.bus.publish(FaultRaised(category, reason, state))
        if state == "recording":
            self._fire("fault", reason=f"{category}: {reason}")

    def _tick(self) -> None:
        unit = self.unit
        if CAMERA_CLOSE_THREAD in unit.abandoned:
            # A camera whose close hung stays acquired by this process (picamera2's stop()
            # after "Camera frontend has timed out"): no reopen can work, a new process can.
            logger.critical("a camera close hung and was abandoned; exiting so systemd restarts "
                            "us with a fresh process that can open the camera")
            self._shutdown(EXIT_HUNG_HARDWARE)
            return
        if len(unit.abandoned) > self.max_abandoned:
            logger.critical("{} hung hardware calls abandoned ({}); exiting so systemd "
                            "restarts us with a fresh process", len(unit.abandoned),
                            ", ".join(unit.abandoned))
            self._shutdown(EXIT_HUNG_HARDWARE)
            return
        now = time.monotonic()
        pipeline = unit.pipeline
        if now >= self._next_health:
            self._next_health = now + HEALTH_SECONDS
            self.health = self._health_sampler.sample(
                state=unit.state, configured_fps=_asked_fps(unit.hardware.camera.fps, pipeline),
                stats=pipeline.stats if pipeline is not None else None,
                errors=sum(self.ledger.totals.values()),
                root=unit.root_status.path if unit.root_status is not None else None,
                upload=self.snapshot.upload)
        if unit.state != "recording" or pipeline is None:
            return
        writer = pipeline.writer
        while writer.unclosed:
            unit.closeouts.add(writer.unclosed.pop(0))
        self._follow_writer_root(writer.target_root)
        if recovering.settle(unit):
            self._note_flapping()
        if now >= self._next_root_check:
            self._next_root_check = now + self.root_recheck_seconds
            self._return_to_primary_root()
        if pipeline.is_dead:
            self._on_error("pipeline_stopped", "a recording stage stopped")
            return
        silent = time.monotonic() - pipeline.stats.last_frame_monotonic
        if silent > unit.hardware.camera.read_timeout_seconds + STALL_GRACE_SECONDS:
            # The capture thread is stuck inside a camera call that ignores its timeout.
            logger.error("no frame for {:.1f}s: camera call hung", silent)
            self._on_error("camera_timeout", f"no frame for {silent:.1f}s")

    def _note_flapping(self) -> None:
        """Raise the flapping alert once an episode has FLAPPING_LOSSES losses; clear it once
        the episode ends (the unit recorded stably, or was stopped or reset)."""
        unit = self.unit
        losses = unit.losses
        if len(losses) >= FLAPPING_LOSSES:
            span = losses[-1] - losses[0]
            self._flapping = f"{len(losses)} losses in {span:.0f} s"
            self.alerts.condition("flapping", FLAPPING_KEY, True,
                                  f"camera flapping: {self._flapping} (recording again each time "
                                  f"for less than {unit.policy.stable_seconds:g} s)")
        elif FLAPPING_KEY in self.alerts.active():
            # Fewer losses than that while raised: the episode ended (stable, stop or reset).
            how = (f"recording stable for {unit.policy.stable_seconds:g} s"
                   if unit.state == "recording" else f"the unit is {unit.state}")
            self.alerts.condition("flapping", FLAPPING_KEY, False,
                                  f"camera flapping ({self._flapping}) is over: {how}")

    def _note_root_change(self) -> None:
        """An alert when the guards moved recording to a fallback root or back."""
        status = self.unit.root_status
        if status is None or not status.is_usable or status.path == self._alerted_root:
            return
        primary = self.unit.hardware.recording.root
        if status.path != primary:
            self.alerts.record("fault", f"recording root {primary} unusable; recording to {status.path}")
        elif self._alerted_root is not None:
            self.alerts.record("recovery", f"recording root {primary} works again; recording there")
        self._alerted_root = status.path

    def _follow_writer_root(self, root: Path) -> None:
        """The writer moved to a fallback root itself (its root became unusable mid-segment,
        or stayed full): the unit records there now, alerted, and returns when it heals."""
        unit = self.unit
        if unit.root_status is not None and unit.root_status.path == root:
            return
        logger.warning("the writer moved to root={} from={}", root,
                       unit.root_status.path if unit.root_status is not None else None)
        unit.root_status = probe_root(root)
        self._note_root_change()

    def _return_to_primary_root(self) -> None:
        """Recording on a fallback root: once the primary root works again, go back to it."""
        unit = self.unit
        primary = unit.hardware.recording.root
        if unit.root_status is None or unit.root_status.path == primary or unit.pipeline is None:
            return
        status = probe_root(primary)
        if not status.is_usable:
            return
        logger.warning("recording root healed, switching back root={} from={}", primary,
                       unit.root_status.path)
        self.alerts.record("recovery", f"recording root {primary} works again; recording there")
        unit.root_status = status
        self._alerted_root = primary
        unit.pipeline.writer.retarget(primary)

    def _shutdown(self, code: int) -> None:
        logger.info("shutting down from state {}", self.unit.state)
        if self.unit.state in ("recording", "recovering", "critical"):
            self._fire("stop")
        if self.unit.pipeline is not None:
            self.unit.cleanup(None)  # type: ignore[arg-type]
        self._cancel_scheduled()
        self.exit_code = code


@dataclass
class _Chain:
    """What one command's events did so far."""

    trigger: str
    before: str
    transitions: list[str] = field(default_factory=list)
    refused: tuple[str, str] | None = None
    impossible: str = ""


def _run_counts(pipeline: RecordingPipeline | None) -> RunCounters:
    """The counters of one recording run (zeros for none)."""
    if pipeline is None:
        return RunCounters()
    stats = pipeline.stats
    return RunCounters(frames_captured=stats.frames_captured, frames_recorded=stats.frames_recorded,
                       frames_dropped=stats.frames_dropped, frames_invalid=stats.frames_invalid,
                       frames_decimated=stats.frames_decimated,
                       segments_closed=pipeline.segments_closed, bytes_written=pipeline.bytes_written)


def _quality_status(pipeline: RecordingPipeline | None) -> QualityStatus | None:
    """Where the pipeline's quality ladder stands, if it has one."""
    if pipeline is None or pipeline.quality is None:
        return None
    governor = pipeline.quality.governor
    step = governor.step
    last = governor.changes[-1].describe() if governor.changes else ""
    return QualityStatus(level=step.level, levels=len(governor.ladder), fps=step.fps,
                         width=step.width, height=step.height, describe=step.describe(),
                         steps=pipeline.stats.quality_steps, last_change=last)


def _asked_fps(configured: float, pipeline: RecordingPipeline | None) -> float:
    """The rate the camera is asked for now: a camera that encodes itself (picamera2, V4L2
    H.264) lowers its sensor's rate on a quality step, and frames it never makes are not missing."""
    quality = pipeline.quality if pipeline is not None else None
    if quality is not None and quality.governor.step.packets:
        return quality.governor.step.fps
    return configured


def _why_no_frame(state: str, pipeline: RecordingPipeline | None) -> str:
    if pipeline is None:
        return f"not recording (state {state})"
    if pipeline.encoder is None:
        return "the camera hands over encoded video only, no raw frames"
    return "no frame has passed validation since recording started"
