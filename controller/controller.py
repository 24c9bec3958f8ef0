"""The Controller: one thread that owns the state machine and drains an event queue.

Everything else (pipeline threads, signal handlers, the API, GPIO callbacks) only puts
events on the queue with `post`, `report_error` or `request_shutdown`. The loop also
runs scheduled events (recovery attempts, critical probes) and a health tick that turns
a silent pipeline into a fault.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from controller.alerts import AlertLog
from controller.health import Health, HealthSampler
from controller.housekeeping import StorageHousekeeper, StorageSettings
from controller.ledger import ErrorLedger
from controller.merge import MergedHour
from hw.factory import Hardware
from hw.pipeline import RecordingPipeline
from hw.recovery import recover_partials
from hw.storage import probe_root
from states import recovering
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
# A GPIO short press: decided here, against the state the event meets, not the one seen at press time.
TOGGLE_EVENT = "toggle"
STOPPABLE_STATES = frozenset({"recording", "recovering", "critical"})

Settings = tuple[Hardware, RecoveryPolicy, bool]
# Per-run counters that status() also totals over the daemon's life (for metrics counters).
RUN_COUNTERS = ("frames_captured", "frames_recorded", "frames_dropped", "frames_invalid",
                "segments_closed", "bytes_written")


@dataclass(frozen=True)
class Event:
    kind: str  # "trigger", "error", "shutdown"
    name: str
    detail: str = ""


class Controller:
    """Owns the Unit and its machine; `run()` is the controller loop."""

    def __init__(
        self,
        hardware: Hardware,
        *,
        policy: RecoveryPolicy | None = None,
        autostart: bool = True,
        reload: Callable[[], Settings | None] | None = None,
        ledger: ErrorLedger | None = None,
        max_abandoned: int = DEFAULT_MAX_ABANDONED,
        storage: StorageSettings | None = None,
    ) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
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
        self.transitions: list[tuple[float, str, str, str]] = []
        self.refusals: list[tuple[float, str, str]] = []
        self.state_since = time.time()
        self.alerts = AlertLog()
        self.health: Health | None = None
        self._health_sampler = HealthSampler()
        self._next_health = 0.0
        self._next_root_check = 0.0
        self.root_recheck_seconds = ROOT_RECHECK_SECONDS
        self._next_orphan_fault = 0.0
        self._alerted_root: Path | None = None
        # Lifetime totals: runs that ended are folded in; the counted run is read live.
        self.finished_runs: Counter[str] = Counter()
        self._counted_pipeline: RecordingPipeline | None = None
        self._totals_lock = threading.Lock()
        self.unit = Unit(
            hardware,
            policy=policy or RecoveryPolicy(),
            autostart=autostart,
            post=self.post,
            schedule=self._schedule,
            cancel_scheduled=self._cancel_scheduled,
            report_error=self.report_error,
            reload=self._reload_and_clear(reload),
        )
        # -- storage lifecycle (issue 4): merge, retention, disk watch in their own thread --
        self.housekeeper = StorageHousekeeper(
            storage or StorageSettings(), roots=self._footage_roots, active_root=self._active_root,
            open_segments=self._open_segments, bytes_written=self._bytes_written_now,
            when_disk_low_changed=lambda disk: self.alerts.condition(
                "low_disk", disk.path, disk.is_low,
                f"free space on {disk.path} is below the {disk.reserve_bytes / 2**20:.0f} MiB reserve"),
        )

    def __repr__(self) -> str:
        return f"<Controller state={self.state} queued={self.events.qsize()}>"

    @property
    def state(self) -> str:
        return self.unit.state

    # -- what other threads may call -------------------------------------------------

    def post(self, trigger: str) -> None:
        """Ask the machine to fire `trigger` (start, stop, reset, ...) on the controller thread."""
        self.events.put(Event("trigger", trigger))

    def report_error(self, category: str, reason: str) -> None:
        """An error from anywhere; the ledger decides whether it is a fault."""
        self.events.put(Event("error", category, reason))

    def request_shutdown(self) -> None:
        self.events.put(Event("shutdown", "shutdown"))

    def wait_for_state(self, state: str, timeout: float) -> bool:
        """Block until the machine is in `state` (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.unit.state != state:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

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

    def status(self) -> dict[str, Any]:
        """A snapshot for status pages and metrics; safe to call from any thread."""
        unit = self.unit
        pipeline = unit.pipeline
        stats = pipeline.stats if pipeline is not None else None
        writer = pipeline.writer if pipeline is not None else None
        spec = unit.hardware.camera
        return {
            "state": unit.state,
            "since": self.state_since,
            "backend": unit.hardware.backend,
            "configured_fps": spec.fps,
            "frames_captured": stats.frames_captured if stats else 0,
            "frames_recorded": stats.frames_recorded if stats else 0,
            "frames_dropped": stats.frames_dropped if stats else 0,
            "frames_invalid": stats.frames_invalid if stats else 0,
            "errors": dict(self.ledger.totals),
            "faults": dict(self.ledger.faults),
            "recovery_attempts": unit.recovery_attempts,
            "recoveries_attempted": unit.recoveries_attempted,
            "root": str(unit.root_status.path) if unit.root_status else None,
            "current_segment": str(writer.open_path) if writer and writer.open_path else None,
            "segments_closed": writer.segments_closed if writer else 0,
            "bytes_written": writer.bytes_written if writer else 0,
            "abandoned_calls": len(unit.abandoned),
            "last_refusal": self.refusals[-1][2] if self.refusals else None,
            "totals": self._totals(),
            "health": self.health.as_dict() if self.health else None,
            "disk": self.housekeeper.disk_status(),
            "fps": self._health_sampler.achieved_fps,
        }

    def request_merge(self, hour: str | None = None) -> Future[list[MergedHour]]:
        """Merge `hour` (YYYY-MM-DDTHH) or every closed hour now, in the housekeeping thread.

        ValueError for a malformed hour; the future's exception says why nothing was merged
        (HourStillOpen, NothingToMerge, MergeBusy, MergeError).
        """
        return self.housekeeper.request_merge(hour)

    # -- what the housekeeper asks (from its own thread) ---------------------------------

    def _footage_roots(self) -> list[Path]:
        rec = self.unit.hardware.recording
        return [rec.root, *rec.fallback_roots]

    def _active_root(self) -> Path | None:
        status = self.unit.root_status
        return status.path if status is not None else None

    def _open_segments(self) -> list[Path]:
        pipeline = self.unit.pipeline
        open_path = pipeline.writer.open_path if pipeline is not None else None
        # Segments of abandoned (hung) pipelines may still be written to by their thread.
        return [*([open_path] if open_path is not None else []), *self.unit.abandoned_paths]

    def _bytes_written_now(self) -> int:
        pipeline = self.unit.pipeline
        return pipeline.writer.bytes_written if pipeline is not None else 0

    def _totals(self) -> dict[str, int]:
        with self._totals_lock:
            live = _run_counts(self._counted_pipeline)
            return {key: self.finished_runs[key] + live[key] for key in RUN_COUNTERS}

    def _track_run(self, pipeline: RecordingPipeline | None) -> None:
        """Fold a finished run's counters into the totals once the unit holds another."""
        if pipeline is self._counted_pipeline:
            return
        with self._totals_lock:
            self.finished_runs.update(_run_counts(self._counted_pipeline))
            self._counted_pipeline = pipeline

    # -- scheduling (controller thread only) -----------------------------------------

    def _schedule(self, delay: float, name: str) -> None:
        due = time.monotonic() + delay
        heapq.heappush(self._timers, (due, next(self._timer_seq), self._generation, name))

    def _cancel_scheduled(self) -> None:
        self._generation += 1
        self._timers.clear()

    def _reload_and_clear(
        self, reload: Callable[[], Settings | None] | None
    ) -> Callable[[], Settings | None]:
        def run() -> Settings | None:
            self.ledger.clear()
            return reload() if reload is not None else None

        return run

    # -- the loop --------------------------------------------------------------------

    def start_up(self) -> None:
        """Close out what a crash left behind, then start recording if the config says so."""
        rec = self.unit.hardware.recording
        for root in (rec.root, *rec.fallback_roots):
            recover_partials(root)
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
            self._notify()
        self.housekeeper.stop()
        self._running = False
        self._notify()
        return self.exit_code

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

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
            self._dispatch(event.name)

    def _dispatch(self, name: str) -> None:
        if name == recovering.ATTEMPT_EVENT:
            self._fire(lambda: recovering.attempt(self.unit), name)
        elif name == TOGGLE_EVENT:
            if self.state in STOPPABLE_STATES or self.state == "idle":
                self._dispatch("start" if self.state == "idle" else "stop")
            else:
                logger.info("toggle ignored in state {}", self.state)
        else:
            self._fire(lambda: getattr(self.unit, name)(), name)

    def _fire(self, action: Callable[[], Any], name: str, **kwargs: Any) -> None:
        before = self.unit.state
        self.unit.refusal = ""
        try:
            action()
        except Exception:
            logger.exception("transition {} from {} raised; treating as a fault", name, before)
            self.report_error("encoder_error", f"transition {name} raised")
        self._track_run(self.unit.pipeline)
        self._note_root_change()
        after = self.unit.state
        if after != before:
            self.state_since = time.time()
            self.transitions.append((time.time(), before, after, name))
            del self.transitions[:-100]
            logger.info("state {} -> {} on {}", before, after, name)
            # A give_up carries no reason of its own: the failed attempt's refusal is why.
            self.alerts.record_transition(before, after, name,
                                          kwargs.get("reason") or self.unit.refusal)
        elif self.unit.refusal and name != recovering.ATTEMPT_EVENT:
            self.refusals.append((time.time(), name, self.unit.refusal))
            del self.refusals[:-100]
            logger.warning("{} refused in state {}: {}", name, before, self.unit.refusal)

    def _on_error(self, category: str, reason: str) -> None:
        if category == "storage_full":
            self.housekeeper.request_reclaim()  # retention frees space before recovery retries
        spent = self.ledger.record(category)
        if spent:
            logger.error("fault category={} reason={} state={}", category, reason, self.state)
            if self.state == "recording":
                self._fire(lambda: self.unit.fault(reason=f"{category}: {reason}"), "fault",
                           reason=f"{category}: {reason}")
        else:
            logger.debug("error category={} reason={}", category, reason)

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
        if now >= self._next_health:
            self._next_health = now + HEALTH_SECONDS
            self.health = self._health_sampler.sample(self)
        pipeline = unit.pipeline
        if unit.state == "recording" and pipeline is None and now >= self._next_orphan_fault:
            # A transition out of recording ran its cleanup and was then refused: recording
            # without a pipeline records nothing, so go through recovery to get one back.
            self._next_orphan_fault = now + 1.0
            reason = "recording without a pipeline after a refused transition"
            self._fire(lambda: unit.fault(reason=reason), "fault", reason=reason)
            return
        if unit.state != "recording" or pipeline is None:
            return
        if now >= self._next_root_check:
            self._next_root_check = now + self.root_recheck_seconds
            self._return_to_primary_root()
        if pipeline.is_dead:
            self._fire(lambda: unit.fault(reason="pipeline stopped"), "fault",
                       reason="pipeline stopped")
            return
        silent = time.monotonic() - pipeline.stats.last_frame_monotonic
        if silent > unit.hardware.camera.read_timeout_seconds + STALL_GRACE_SECONDS:
            # The capture thread is stuck inside a camera call that ignores its timeout.
            self.ledger.record("camera_timeout")
            logger.error("no frame for {:.1f}s: camera call hung", silent)
            self._fire(lambda: unit.fault(reason=f"camera_timeout: no frame for {silent:.1f}s"),
                       "fault", reason=f"camera_timeout: no frame for {silent:.1f}s")

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
        logger.info("shutting down from state {}", self.state)
        if self.unit.state in ("recording", "recovering", "critical"):
            self._fire(self.unit.stop, "stop")
        if self.unit.pipeline is not None:
            self.unit.cleanup(None)  # type: ignore[arg-type]
        self._cancel_scheduled()
        self.exit_code = code


def _run_counts(pipeline: RecordingPipeline | None) -> Counter[str]:
    """The counters of one recording run (zeros for none)."""
    if pipeline is None:
        return Counter()
    stats, writer = pipeline.stats, pipeline.writer
    return Counter(frames_captured=stats.frames_captured, frames_recorded=stats.frames_recorded,
                   frames_dropped=stats.frames_dropped, frames_invalid=stats.frames_invalid,
                   segments_closed=writer.segments_closed, bytes_written=writer.bytes_written)
