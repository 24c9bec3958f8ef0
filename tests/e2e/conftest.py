"""A real controller recording the synthetic camera, in a thread, for fault tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.core.controller import Controller
from controller.core.ledger import DEFAULT_BUDGETS, ErrorLedger
from controller.storage.housekeeping import StorageSettings
from controller.storage.retention import RetentionPolicy
from hw.factory import Hardware
from states.recovering import RecoveryPolicy
from tests.specs import camera_spec, recording_spec

# Tests count every frame: no hourly merge and no reserve deleting footage under them,
# unless a test asks for its own storage settings.
HANDS_OFF_STORAGE = StorageSettings(merge="off", retention=RetentionPolicy(retention_days=0, reserve_mb=0,
                                                                          reserve_percent=0))
FAST_POLICY = RecoveryPolicy(max_attempts=3, backoff_seconds=0.2, backoff_max_seconds=0.5,
                             critical_probe_seconds=0.5)


class RunningController:
    """A Controller whose loop runs in a thread named like the daemon's."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.thread = threading.Thread(target=self._run, name="vigil-controller", daemon=True)
        self.exit_code: int | None = None

    def _run(self) -> None:
        self.exit_code = self.controller.run()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.thread.is_alive():
            self.controller.request_shutdown()
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "controller did not shut down"
        return self.exit_code


@pytest.fixture
def start_controller(tmp_path: Path) -> Iterator[Callable[..., RunningController]]:
    started: list[RunningController] = []

    def start(*, root: Path | None = None, fallbacks: tuple[Path, ...] = (), width: int = 160,
              height: int = 120, fps: float = 30, segment_seconds: float = 2.0,
              fragment_seconds: float = 0.5, frozen_seconds: float = 0.0,
              read_timeout_seconds: float = 1.0, policy: RecoveryPolicy = FAST_POLICY,
              max_abandoned: int = 3, budgets: dict | None = None, crf: int = 23,
              storage: StorageSettings | None = None) -> RunningController:
        camera = camera_spec(backend="synthetic", width=width, height=height, fps=fps,
                            frozen_seconds=frozen_seconds, read_timeout_seconds=read_timeout_seconds)
        recording = recording_spec(root=root or tmp_path / "rec", fallback_roots=fallbacks,
                                  segment_seconds=segment_seconds, fragment_seconds=fragment_seconds,
                                  crf=crf)
        ledger = ErrorLedger({**DEFAULT_BUDGETS, **(budgets or {})})
        controller = Controller(Hardware(camera, recording), policy=policy, autostart=True,
                                ledger=ledger, max_abandoned=max_abandoned,
                                storage=storage or HANDS_OFF_STORAGE)
        running = RunningController(controller)
        running.thread.start()
        started.append(running)
        assert controller.wait_for_state("recording", 20), controller.refusals
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()
