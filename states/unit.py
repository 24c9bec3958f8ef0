"""The machine's model: what a recording unit holds, and the hooks the controller gives it.

The controller thread is the only caller: it fires triggers, and these objects never start
threads of their own except through the hardware layer. `post` and `schedule` put events
on the controller's queue; `report_error` is handed to the pipeline threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from hw.camera import Camera
from hw.factory import Hardware
from hw.pipeline import RecordingOutput, RecordingPipeline, StepSink
from hw.recovery import CloseOuts
from hw.storage import RootStatus
from hw.writer import ClosedSegment
from states import recovering
from states.guards import GuardWork
from states.hooks import ErrorSink, Post, Schedule
from states.machine import build_machine
from states.recovering import RecoveryPolicy

if TYPE_CHECKING:
    from transitions import EventData

Reload = Callable[[], "tuple[Hardware, RecoveryPolicy, bool] | None"]


class Unit(GuardWork):
    """A camera unit under the state machine: `state`, triggers, and what each state holds."""

    state: str
    # Triggers, bound by transitions.Machine from the table in states/machine.py (declared
    # here, without a value, so that type checkers see them and the machine still binds them).
    start: Callable[..., bool]
    stop: Callable[..., bool]
    fault: Callable[..., bool]
    recovered: Callable[..., bool]
    give_up: Callable[..., bool]
    probe: Callable[..., bool]
    reset: Callable[..., bool]
    reset_done: Callable[..., bool]
    toggle: Callable[..., bool]
    trigger: Callable[..., bool]  # trigger(name, **kwargs): any of the above by name

    def __init__(
        self,
        hardware: Hardware,
        *,
        policy: RecoveryPolicy,
        autostart: bool,
        post: Post,
        schedule: Schedule,
        cancel_scheduled: Callable[[], None],
        report_error: ErrorSink,
        reload: Reload | None = None,
        when_segment_closed: Callable[[ClosedSegment], None] | None = None,
        when_quality_step: StepSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hardware = hardware
        self.policy = policy
        self.autostart = autostart
        self.post = post
        self.schedule = schedule
        self.cancel_scheduled = cancel_scheduled
        self.report_error = report_error
        self._reload = reload
        self.when_segment_closed = when_segment_closed
        self.when_quality_step = when_quality_step
        self.pipeline: RecordingPipeline | None = None
        self.held_output: RecordingOutput | None = None
        self.pending_camera: Camera | None = None
        self.root_status: RootStatus | None = None
        self.config_error: str | None = None
        self.refusal = ""
        self.abandoned: list[str] = []
        self.abandoned_threads: list[threading.Thread] = []
        self.owned_threads: list[threading.Thread] = []
        self.abandoned_paths: list[Path] = []
        # Segments whose close-out the storage refused; the housekeeper retries them.
        self.closeouts = CloseOuts(hardware.signer)
        self.recovery_attempts = 0
        self.recoveries_attempted = 0
        # The stable-time rule (states/recovering.py): when the current recording began, and
        # the losses since the unit last recorded stably.
        self.clock = clock
        self.recording_since: float | None = None
        self.frames_until: float | None = None  # the last frame of the recording that ended
        self.losses: list[float] = []
        self.machine = build_machine(self)

    def __repr__(self) -> str:
        return f"<Unit state={self.state} pipeline={self.pipeline!r}>"

    def finish_event(self, event: EventData) -> None:
        """After every event: a camera opened for a refused transition is closed, and a
        recovery attempt that failed schedules the next one (or gives up)."""
        if self.pending_camera is not None and self.state != "recording":
            self._release_pending_camera()
        if event.event.name == recovering.ATTEMPT_EVENT and event.transition is not None:
            recovering.after_attempt(self)

    def begin_recovery_attempt(self, event: EventData) -> None:
        recovering.begin_attempt(self)

    def reload(self) -> None:
        """Reload the config from disk; keep the last good one if the new one is bad."""
        if self._reload is None:
            return
        loaded = self._reload()
        if loaded is None:
            logger.error("reset: the config on disk is invalid; keeping the last good config")
            return
        self.hardware, self.policy, self.autostart = loaded
        self.config_error = None
