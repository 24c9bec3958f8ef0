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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from controller.ledger import ErrorLedger
from hw.factory import Hardware
from hw.recovery import recover_partials
from states import recovering
from states.recovering import RecoveryPolicy
from states.unit import Unit

TICK_SECONDS = 0.25
EXIT_OK = 0
EXIT_HUNG_HARDWARE = 70  # EX_SOFTWARE: systemd restarts us with a fresh process
STALL_GRACE_SECONDS = 1.0
DEFAULT_MAX_ABANDONED = 3

Settings = tuple[Hardware, RecoveryPolicy, bool]


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
        self.transitions: list[tuple[float, str, str, str]] = []
        self.refusals: list[tuple[float, str, str]] = []
        self.state_since = time.time()
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
        }

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
        next_tick = time.monotonic()
        while self.exit_code is None:
            now = time.monotonic()
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
        after = self.unit.state
        if after != before:
            self.state_since = time.time()
            self.transitions.append((time.time(), before, after, name))
            del self.transitions[:-100]
            logger.info("state {} -> {} on {}", before, after, name)
        elif self.unit.refusal and name != recovering.ATTEMPT_EVENT:
            self.refusals.append((time.time(), name, self.unit.refusal))
            del self.refusals[:-100]
            logger.warning("{} refused in state {}: {}", name, before, self.unit.refusal)

    def _on_error(self, category: str, reason: str) -> None:
        spent = self.ledger.record(category)
        if spent:
            logger.error("fault category={} reason={} state={}", category, reason, self.state)
            if self.state == "recording":
                self._fire(lambda: self.unit.fault(reason=f"{category}: {reason}"), "fault")
        else:
            logger.debug("error category={} reason={}", category, reason)

    def _tick(self) -> None:
        unit = self.unit
        if len(unit.abandoned) > self.max_abandoned:
            logger.critical("{} hung hardware calls abandoned ({}); exiting so systemd "
                            "restarts us with a fresh process", len(unit.abandoned),
                            ", ".join(unit.abandoned))
            self._shutdown(EXIT_HUNG_HARDWARE)
            return
        pipeline = unit.pipeline
        if unit.state != "recording" or pipeline is None:
            return
        if pipeline.is_dead:
            self._fire(lambda: unit.fault(reason="pipeline stopped"), "fault")
            return
        silent = time.monotonic() - pipeline.stats.last_frame_monotonic
        if silent > unit.hardware.camera.read_timeout_seconds + STALL_GRACE_SECONDS:
            # The capture thread is stuck inside a camera call that ignores its timeout.
            self.ledger.record("camera_timeout")
            logger.error("no frame for {:.1f}s: camera call hung", silent)
            self._fire(lambda: unit.fault(reason=f"camera_timeout: no frame for {silent:.1f}s"),
                       "fault")

    def _shutdown(self, code: int) -> None:
        logger.info("shutting down from state {}", self.state)
        if self.unit.state in ("recording", "recovering", "critical"):
            self._fire(self.unit.stop, "stop")
        if self.unit.pipeline is not None:
            self.unit.cleanup(None)  # type: ignore[arg-type]
        self._cancel_scheduled()
        self.exit_code = code
