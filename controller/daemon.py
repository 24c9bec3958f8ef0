"""`vigil run`: load the config, build the hardware, run the controller until a signal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from controller.config import ApiConfig, ConfigError, LoadedConfig, VigilConfig, load_config
from controller.controller import Controller, Settings
from controller.housekeeping import storage_settings_from_config
from controller.ledger import DEFAULT_BUDGETS, Budget, ErrorLedger
from controller.logs import setup_logging
from controller.memory import pin_mmap_threshold
from controller.sdnotify import ServiceNotifier
from hw.factory import CameraMaker, CameraSpec, Hardware, RecordingSpec
from hw.gpio import GpioSpec, open_panel
from states.recovering import RecoveryPolicy

API_START_TIMEOUT_SECONDS = 10.0


def settings_from_config(config: VigilConfig, *,
                         makers: Mapping[str, CameraMaker] | None = None) -> Settings:
    """The hardware factory, recovery policy and autostart flag a config describes.

    `makers` replaces the factory's camera makers (tests, `vigil doctor` with fakes).
    """
    cam, rec, recov = config.camera, config.recording, config.recovery
    camera = CameraSpec(
        backend=cam.backend, width=cam.width, height=cam.height, fps=cam.fps,
        source=cam.source, device=cam.device, pace=cam.pace,
        read_timeout_seconds=cam.read_timeout_seconds,
        frozen_seconds=cam.frozen_seconds, input_format=cam.input_format,
    )
    recording = RecordingSpec(
        root=Path(rec.root), fallback_roots=tuple(Path(p) for p in rec.fallback_roots),
        segment_seconds=rec.segment_seconds, fragment_seconds=rec.fragment_seconds,
        encoder_preset=rec.encoder_preset, crf=rec.crf, queue_frames=rec.queue_frames,
    )
    policy = RecoveryPolicy(
        max_attempts=recov.max_attempts, backoff_seconds=recov.backoff_seconds,
        backoff_max_seconds=recov.backoff_max_seconds,
        critical_probe_seconds=recov.critical_probe_seconds,
    )
    if makers is not None:
        return Hardware(camera, recording, makers=makers), policy, rec.autostart
    return Hardware(camera, recording), policy, rec.autostart


def build_controller(loaded: LoadedConfig, config_path: str | None) -> Controller:
    """A controller for `loaded`, whose reset reloads the config from the same place."""

    def reload() -> Settings | None:
        try:
            again = load_config(config_path)
        except ConfigError as err:
            logger.error("config reload failed:\n{}", err)
            return None
        logger.info("config reloaded from {}", again.source)
        return settings_from_config(again.config)

    hardware, policy, autostart = settings_from_config(loaded.config)
    recovery = loaded.config.recovery
    budgets = dict(DEFAULT_BUDGETS)
    for category, budget in recovery.budgets.model_dump(exclude_none=True).items():
        budgets[category] = Budget(**budget)
    for fault in loaded.config.camera.inject_faults:
        if hardware.backend != "synthetic":
            logger.warning("camera.inject_faults ignored: backend is {}, not synthetic", hardware.backend)
            break
        hardware.faults.schedule(fault.after_seconds, fault.kind, fault.seconds, fault.count)
    return Controller(hardware, policy=policy, autostart=autostart, reload=reload,
                      ledger=ErrorLedger(budgets), max_abandoned=recovery.max_abandoned_calls,
                      storage=storage_settings_from_config(loaded.config))


class BackgroundApi:
    """Imports and starts the HTTP API beside the controller, not before it.

    Importing FastAPI and uvicorn takes a few tenths of a second on a Pi: recording must not
    wait for the API, so the first fragment reaches the disk that much sooner.
    """

    def __init__(self, config: ApiConfig, controller: Controller) -> None:
        self._config = config
        self._controller = controller
        self._server: Any = None
        self._thread = threading.Thread(target=self._start, name="vigil-api-start", daemon=True)

    def _start(self) -> None:
        from controller.api import start_api

        self._server = start_api(self._config, self._controller)  # None: disabled or port taken

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = API_START_TIMEOUT_SECONDS) -> None:
        self._thread.join(timeout)
        if self._server is not None:
            self._server.stop()


def run(config_path: str | None) -> int:
    """Record until SIGTERM or SIGINT; returns the exit status."""
    loaded = load_config(config_path)
    setup_logging(loaded.config.logging.level)
    logger.info("vigil starting config={}", loaded.source)
    pin_mmap_threshold()  # frame buffers go back to the system when freed (controller/memory.py)
    controller = build_controller(loaded, config_path)
    notifier = ServiceNotifier(controller)  # a no-op unless systemd set $NOTIFY_SOCKET
    panel = open_panel(GpioSpec(**loaded.config.gpio.model_dump()), post=controller.post,
                       state=lambda: controller.state)
    api = BackgroundApi(loaded.config.api, controller)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received {}: closing the open segment", signal.Signals(signum).name)
        notifier.stopping()
        controller.request_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.current_thread().name = "vigil-controller"
    notifier.start()
    api.start()
    try:
        code = controller.run()
    finally:
        notifier.close()
        if panel is not None:
            panel.close()
        api.stop()
    logger.info("vigil stopped exit={}", code)
    return code
