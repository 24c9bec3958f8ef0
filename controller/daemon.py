"""`vigil run`: load the config, build the hardware, run the controller until a signal."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from loguru import logger

from controller.config import ConfigError, LoadedConfig, VigilConfig, load_config
from controller.controller import Controller, Settings
from controller.logs import setup_logging
from hw.factory import CameraSpec, Hardware, RecordingSpec
from states.recovering import RecoveryPolicy


def settings_from_config(config: VigilConfig) -> Settings:
    """The hardware factory, recovery policy and autostart flag a config describes."""
    cam, rec, recov = config.camera, config.recording, config.recovery
    camera = CameraSpec(
        backend=cam.backend, width=cam.width, height=cam.height, fps=cam.fps,
        source=cam.source, device=cam.device, pace=cam.pace,
        read_timeout_seconds=cam.read_timeout_seconds,
        frozen_seconds=cam.frozen_seconds,
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
    return Controller(hardware, policy=policy, autostart=autostart, reload=reload)


def run(config_path: str | None) -> int:
    """Record until SIGTERM or SIGINT; returns the exit status."""
    loaded = load_config(config_path)
    setup_logging(loaded.config.logging.level)
    logger.info("vigil starting config={}", loaded.source)
    controller = build_controller(loaded, config_path)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received {}: closing the open segment", signal.Signals(signum).name)
        controller.request_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.current_thread().name = "vigil-controller"
    code = controller.run()
    logger.info("vigil stopped exit={}", code)
    return code
