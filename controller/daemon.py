"""`vigil run`: load the config, build the hardware, run the controller until a signal."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from controller.config import ApiConfig, ConfigError, LoadedConfig, MqttConfig, VigilConfig, load_config
from controller.core.controller import Controller, Parts
from controller.core.events import ConfigReloaded
from controller.core.ledger import DEFAULT_BUDGETS, Budget, ErrorLedger
from controller.logs import setup_logging
from controller.memory import limit_arenas, pin_mmap_threshold
from controller.statedir import state_directory
from controller.storage.housekeeping import StorageSettings
from controller.storage.retention import RetentionPolicy
from controller.storage.scrubstate import SCRUB_STATE_NAME
from controller.surfaces.credentials import api_with_credential_token
from controller.surfaces.history import HistoryRecorder, history_path
from controller.surfaces.metrics import MetricsHook
from controller.surfaces.sdnotify import ServiceNotifier
from hw.adaptive import AdaptiveSpec
from hw.factory import CameraMaker, CameraSpec, Hardware, RecordingSpec
from hw.gpio import GpioSpec, OperatorPanel, open_panel
from hw.integrity import Signer
from states.recovering import RecoveryPolicy

if TYPE_CHECKING:
    from controller.config import UploadConfig
    from controller.surfaces.mqtt import MqttSurface
    from controller.surfaces.upload import Uploader, UploadSettings

API_START_TIMEOUT_SECONDS = 10.0
# The API is imported once the first fragment is on disk, or after this long at the latest
# (a camera that does not record yet must not keep the operator's API away).
API_DEFER_MAX_SECONDS = 3.0
API_DEFER_POLL_SECONDS = 0.05
EXIT_BACKEND_UNAVAILABLE = 78  # EX_CONFIG, as for a bad config: systemd does not restart it


def camera_spec_from_config(config: VigilConfig) -> CameraSpec:
    """What the config's `camera` section asks of the camera (the defaults live in the schema)."""
    cam = config.camera
    return CameraSpec(
        backend=cam.backend, width=cam.width, height=cam.height, fps=cam.fps,
        source=cam.source, device=cam.device, pace=cam.pace,
        read_timeout_seconds=cam.read_timeout_seconds,
        frozen_seconds=cam.frozen_seconds, input_format=cam.input_format,
        fragment_seconds=config.recording.fragment_seconds,
    )


def recording_spec_from_config(config: VigilConfig) -> RecordingSpec:
    """What the config's `recording` section asks of the recording path."""
    rec = config.recording
    return RecordingSpec(
        root=Path(rec.root), fallback_roots=tuple(Path(p) for p in rec.fallback_roots),
        segment_seconds=rec.segment_seconds, fragment_seconds=rec.fragment_seconds,
        encoder_preset=rec.encoder_preset, crf=rec.crf, queue_frames=rec.queue_frames,
        adaptive=adaptive_spec_from_config(config),
    )


def adaptive_spec_from_config(config: VigilConfig) -> AdaptiveSpec:
    """What `recording.adaptive` asks of the quality ladder."""
    ad = config.recording.adaptive
    return AdaptiveSpec(
        enabled=ad.enabled, preset_floor=ad.preset_floor, crf_ceiling=ad.crf_ceiling,
        bitrate_floor_fraction=ad.bitrate_floor_fraction, fps_floor=ad.fps_floor,
        height_floor=ad.height_floor, queue_high_fraction=ad.queue_high_fraction,
        queue_low_fraction=ad.queue_low_fraction, down_after_seconds=ad.down_after_seconds,
        up_after_seconds=ad.up_after_seconds, up_headroom=ad.up_headroom,
        temperature_max_c=ad.temperature_max_c,
    )


def policy_from_config(config: VigilConfig) -> RecoveryPolicy:
    recov = config.recovery
    return RecoveryPolicy(
        max_attempts=recov.max_attempts, backoff_seconds=recov.backoff_seconds,
        backoff_max_seconds=recov.backoff_max_seconds,
        critical_probe_seconds=recov.critical_probe_seconds, stable_seconds=recov.stable_seconds,
    )


def retention_from_config(config: VigilConfig) -> RetentionPolicy:
    storage = config.storage
    return RetentionPolicy(retention_days=storage.retention_days, reserve_mb=storage.reserve_mb,
                           reserve_percent=storage.reserve_percent)


def hardware_from_config(config: VigilConfig, *, makers: Mapping[str, CameraMaker] | None = None) -> Hardware:
    """The hardware factory the config's `camera` and `recording` sections describe.

    `makers` replaces the factory's camera makers (tests, `vigil doctor` with fakes).
    """
    camera, recording = camera_spec_from_config(config), recording_spec_from_config(config)
    hardware = Hardware(camera, recording) if makers is None else Hardware(camera, recording, makers=makers)
    for fault in config.camera.inject_faults:
        if hardware.backend != "synthetic":
            logger.warning("camera.inject_faults ignored: backend is {}, not synthetic", hardware.backend)
            break
        hardware.faults.schedule(fault.after_seconds, fault.kind, fault.seconds, fault.count)
    return hardware


def storage_from_config(config: VigilConfig) -> StorageSettings:
    """The housekeeper's settings from a config's `recording.merge*` and `storage` keys."""
    rec, storage = config.recording, config.storage
    scrub = config.integrity.scrub_hours * 3600 if config.integrity.enabled else 0.0
    return StorageSettings(merge=rec.merge, merge_verify=rec.merge_verify,
                           check_seconds=storage.check_seconds, retention=retention_from_config(config),
                           scrub_seconds=scrub,
                           scrub_state=state_directory() / SCRUB_STATE_NAME if scrub else None)


def budgets_from_config(config: VigilConfig) -> dict[str, Budget]:
    """The ledger's budgets: its defaults, with the categories the config sets replaced."""
    budgets = dict(DEFAULT_BUDGETS)
    for category, budget in config.recovery.budgets.model_dump(exclude_none=True).items():
        budgets[category] = Budget(**budget)
    return budgets


def gpio_from_config(config: VigilConfig) -> GpioSpec:
    return GpioSpec(**config.gpio.model_dump())


def signer_from_config(config: VigilConfig) -> Signer | None:
    """The manifests' signer: the key in `integrity.key_file`, made there when missing.

    A key that cannot be read or made is logged and footage is recorded unsigned: the
    recording matters more than its proof.
    """
    if not config.integrity.enabled:
        return None
    # Here, not at the top: a unit with integrity off never loads cryptography (20 MB of RSS).
    from controller.keys import KeyError_, key_path, load_or_create_key, signer_for

    try:
        key = load_or_create_key(key_path(config.integrity.key_file))
    except KeyError_ as err:
        logger.error("footage is recorded without signed manifests: {}", err)
        return None
    return signer_for(key, config.unit.id)


def parts_from_config(config: VigilConfig, *, source: str = "",
                      makers: Mapping[str, CameraMaker] | None = None) -> Parts:
    """Every part the controller runs with, built from one validated config."""
    recov = config.recovery
    hardware = hardware_from_config(config, makers=makers)
    hardware.signer = signer_from_config(config)
    storage = replace(storage_from_config(config), signer=hardware.signer)
    return Parts(hardware=hardware, policy=policy_from_config(config),
                 autostart=config.recording.autostart, budgets=budgets_from_config(config),
                 max_abandoned=recov.max_abandoned_calls, storage=storage,
                 config=config, source=source)


def build_controller(loaded: LoadedConfig, config_path: str | None, *,
                     makers: Mapping[str, CameraMaker] | None = None) -> Controller:
    """A controller for `loaded`, whose reset reloads the config from the same place."""

    def reload() -> Parts | None:
        try:
            again = load_config(config_path)
        except ConfigError as err:
            logger.error("config reload failed:\n{}", err)
            return None
        logger.info("config reloaded from {}", again.source)
        return parts_from_config(again.config, source=str(again.source), makers=makers)

    parts = parts_from_config(loaded.config, source=str(loaded.source), makers=makers)
    return Controller(parts.hardware, policy=parts.policy, autostart=parts.autostart, reload=reload,
                      ledger=ErrorLedger(parts.budgets), max_abandoned=parts.max_abandoned,
                      storage=parts.storage)


class BackgroundApi:
    """Imports and starts the HTTP API beside the controller, once recording has begun.

    Importing FastAPI and uvicorn takes a few tenths of a second of CPU on a Pi: recording
    must not wait for the API, nor share the CPU with its import while the camera opens and
    the first fragment is encoded. So the import waits until the first fragment is on disk,
    or until the controller is not simply starting to record (autostart off, a fault), or
    API_DEFER_MAX_SECONDS, whichever comes first.
    """

    def __init__(self, config: ApiConfig, controller: Controller, *,
                 metric_hooks: list[MetricsHook] | None = None, signer: Signer | None = None,
                 history: HistoryRecorder | None = None,
                 uploader: Callable[[], Uploader | None] | None = None,
                 fragment_seconds: float = 0.0) -> None:
        self._config = config
        self._fragment_seconds = fragment_seconds
        self._controller = controller
        self._history = history
        self._uploader = uploader
        self._signer = signer  # signs exported clips' manifests
        self._metric_hooks = metric_hooks if metric_hooks is not None else []
        self._server: Any = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._start, name="vigil-api-start", daemon=True)

    def _recording_is_starting(self) -> bool:
        """True while the controller is on its way to its first fragment on disk: that one is
        written when the frame after the fragment's last, a keyframe, is recorded."""
        snapshot = self._controller.snapshot
        fragment_frames = snapshot.configured_fps * self._fragment_seconds
        return snapshot.autostart and snapshot.state in ("idle", "recording") and \
            snapshot.run.frames_recorded <= fragment_frames

    def _start(self) -> None:
        deadline = time.monotonic() + API_DEFER_MAX_SECONDS
        while self._recording_is_starting() and time.monotonic() < deadline:
            if self._stopping.wait(API_DEFER_POLL_SECONDS):
                return  # stopped before it started: nothing to serve
        from controller.surfaces.api import start_api

        # None: disabled or port taken. The uploader provider is in before the first request.
        self._server = start_api(self._config, self._controller, self._signer, history=self._history,
                                 uploader=self._uploader)
        if self._server is not None:
            self._server.app.state.metric_hooks = self._metric_hooks  # shared: MQTT comes and goes
        if self._server is not None and self._config.token_file != self._server.app.state.tokens.token_file:
            self._server.app.state.tokens.reload(self._config.token_file)  # a reset came first
        if self._server is not None and (
                self._config.viewer_token_file != self._server.app.state.footage.viewer_token_file
                or self._config.public_footage != self._server.app.state.footage.is_public):
            self._server.app.state.footage.reload(self._config.viewer_token_file,
                                                  public=self._config.public_footage)

    def start(self) -> None:
        self._thread.start()

    def reload(self, config: ApiConfig) -> None:
        """Use the action token `config` names from now on (a reset reloaded the config)."""
        self._config = config
        server = self._server
        if server is not None:
            server.app.state.tokens.reload(config.token_file)
            server.app.state.footage.reload(config.viewer_token_file, public=config.public_footage)

    def stop(self, timeout: float = API_START_TIMEOUT_SECONDS) -> None:
        self._stopping.set()
        self._thread.join(timeout)
        if self._server is not None:
            self._server.stop()


def history_from_config(config: VigilConfig, controller: Controller) -> HistoryRecorder | None:
    """The 24-hour history the config asks for, not started; None when `api.history` is off."""
    if not config.api.history:
        return None
    return HistoryRecorder(controller, history_path(config.api.history_file))


def mqtt_from_config(config: VigilConfig, controller: Controller) -> MqttSurface | None:
    """The MQTT surface the config describes, not started; None when MQTT is off.

    The module (and paho-mqtt with it, at start) is imported only for a unit that uses MQTT.
    """
    if not config.mqtt.enabled:
        return None
    from importlib import metadata

    from controller.surfaces.mqtt import MqttSurface

    try:
        version = metadata.version("vigil")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return MqttSurface(config.mqtt, config.unit.id, controller, version=version)


def upload_settings_from_config(config: VigilConfig) -> UploadSettings | None:
    """What the config's `upload` section asks of the uploader; None when upload is off."""
    up: UploadConfig = config.upload
    if not up.enabled or up.bucket is None:
        return None
    from controller.surfaces.upload import UploadSettings

    return UploadSettings(
        bucket=up.bucket, key_prefix=up.key_prefix(config.unit.id), endpoint_url=up.endpoint_url,
        region=up.region, credentials_file=up.credentials_file, profile=up.profile,
        bandwidth_bytes_per_second=up.bandwidth_bytes_per_second, hours=up.hours, order=up.order,
        delete_after_upload=up.delete_after_upload, part_bytes=up.part_bytes,
        timeout_seconds=up.timeout_seconds, retry_max_seconds=up.retry_max_seconds, verify=up.verify,
    )


def uploader_from_config(config: VigilConfig, controller: Controller) -> Uploader | None:
    """The uploader the config describes, not started; None when upload is off (boto3 unloaded)."""
    settings = upload_settings_from_config(config)
    if settings is None:
        return None
    from controller.surfaces.upload import Uploader

    alerts = controller.alerts

    def alert(is_failing: bool, message: str) -> None:
        alerts.condition("upload", "endpoint", is_failing, message)

    return Uploader(settings, roots=lambda: controller.snapshot.footage_roots,
                    open_segments=lambda: controller.snapshot.open_segments, alert=alert)


class Surfaces:
    """The parts that live beside the controller: API, GPIO panel, systemd notifier, MQTT.

    A reset that reloaded the config (ConfigReloaded) rebuilds the GPIO panel from the new
    pins, swaps in the API token the new config names, and restarts MQTT when its settings
    (or the unit id) changed, without a restart. The API's listen address is bound once;
    changing it needs a restart.
    """

    def __init__(self, config: VigilConfig, controller: Controller) -> None:
        self.controller = controller
        self.notifier = ServiceNotifier(controller)  # a no-op unless systemd set $NOTIFY_SOCKET
        self.gpio_spec = gpio_from_config(config)
        self.panel: OperatorPanel | None = self._open_panel(self.gpio_spec)
        self.metric_hooks: list[MetricsHook] = []
        # Built once: the history runs across resets (changing api.history needs a restart).
        self.history: HistoryRecorder | None = history_from_config(config, controller)
        # The same key the recording signs with (loaded again: the unit is the controller's).
        self.api = BackgroundApi(api_with_credential_token(config.api), controller,
                                 metric_hooks=self.metric_hooks, signer=signer_from_config(config),
                                 history=self.history, uploader=lambda: self.uploader,
                                 fragment_seconds=config.recording.fragment_seconds)
        self.mqtt_settings: tuple[MqttConfig, str] = (config.mqtt, config.unit.id)
        self.mqtt: MqttSurface | None = mqtt_from_config(config, controller)
        self.upload_settings = upload_settings_from_config(config)
        self.uploader: Uploader | None = uploader_from_config(config, controller)
        self._uploads: Any = None
        self._started = False
        self._reloads = controller.bus.subscribe("reload-surfaces", self._on_reload, kinds=(ConfigReloaded,))

    def _open_panel(self, spec: GpioSpec) -> OperatorPanel | None:
        controller = self.controller
        return open_panel(spec, post=controller.post, state=lambda: controller.state)

    def _on_reload(self, event: ConfigReloaded) -> None:
        config = getattr(event.parts, "config", None)
        if not isinstance(config, VigilConfig):
            return
        spec = gpio_from_config(config)
        if spec != self.gpio_spec:
            logger.info("reset: GPIO settings changed; reopening the panel")
            if self.panel is not None:
                self.panel.close()
            self.panel = self._open_panel(spec)
            self.gpio_spec = spec
        self.api.reload(api_with_credential_token(config.api))
        settings = (config.mqtt, config.unit.id)
        if settings != self.mqtt_settings:
            logger.info("reset: MQTT settings changed; reconnecting")
            self._stop_mqtt()
            self.mqtt_settings = settings
            self.mqtt = mqtt_from_config(config, self.controller)
            if self._started:
                self._start_mqtt()
        upload = upload_settings_from_config(config)
        if upload != self.upload_settings:
            logger.info("reset: upload settings changed; restarting the uploader")
            self._stop_uploader()
            self.upload_settings = upload
            self.uploader = uploader_from_config(config, self.controller)
            if self._started:
                self._start_uploader()
        elif self.uploader is not None:
            # The same settings, reloaded: what was fixed outside vigil (the bucket created,
            # a policy granted) is tried at once, past a permanent error's hold.
            self.uploader.retry_now()

    def _start_uploader(self) -> None:
        uploader = self.uploader
        if uploader is None:
            return
        from controller.core.events import HourMerged, SegmentClosed

        housekeeper = self.controller.housekeeper
        housekeeper.is_uploaded = uploader.queue.is_uploaded
        self._uploads = self.controller.bus.subscribe("upload", uploader.when_event,
                                                      kinds=(SegmentClosed, HourMerged), maxsize=1024)
        uploader.start()
        self.metric_hooks.append(uploader.metrics)
        self.controller.upload_backlog = uploader.summary

    def _stop_uploader(self) -> None:
        uploader = self.uploader
        if uploader is None:
            return
        if self._uploads is not None:
            self.controller.bus.unsubscribe(self._uploads)
            self._uploads = None
        self.controller.housekeeper.is_uploaded = None
        self.controller.upload_backlog = None
        if uploader.metrics in self.metric_hooks:
            self.metric_hooks.remove(uploader.metrics)
        uploader.stop()
        self.uploader = None

    def _start_mqtt(self) -> None:
        if self.mqtt is not None and self.mqtt.start():
            self.metric_hooks.append(self.mqtt.metrics)

    def _stop_mqtt(self) -> None:
        if self.mqtt is not None:
            if self.mqtt.metrics in self.metric_hooks:
                self.metric_hooks.remove(self.mqtt.metrics)
            self.mqtt.stop()
            self.mqtt = None

    def start(self) -> None:
        self._started = True
        self.notifier.start()
        if self.history is not None:
            self.history.start()
        self.api.start()
        self._start_mqtt()
        self._start_uploader()

    def stop(self) -> None:
        self.controller.bus.unsubscribe(self._reloads)
        self.notifier.close()
        if self.panel is not None:
            self.panel.close()
        self._stop_mqtt()
        self._stop_uploader()
        self.api.stop()
        if self.history is not None:
            self.history.stop()  # after the controller stopped: the last minute is written whole


def run(config_path: str | None) -> int:
    """Record until SIGTERM or SIGINT; returns the exit status."""
    loaded = load_config(config_path)
    setup_logging(loaded.config.logging.level)
    logger.info("vigil starting config={}", loaded.source)
    pin_mmap_threshold()  # frame buffers go back to the system when freed (controller/memory.py)
    limit_arenas()  # before any thread of ours starts: threads share two malloc arenas
    controller = build_controller(loaded, config_path)
    if controller.unit.hardware.unavailable:
        # The configured camera library cannot load (not installed, or broken such as a
        # shadowed numpy): a restart cannot fix that, so say it once and exit EX_CONFIG,
        # which the unit's RestartPreventExitStatus= does not restart.
        logger.error("camera.backend {} cannot be used: {}; exiting with status {} (fix the "
                     "installation or set camera.backend: auto)", controller.unit.hardware.backend,
                     controller.unit.hardware.unavailable, EXIT_BACKEND_UNAVAILABLE)
        return EXIT_BACKEND_UNAVAILABLE
    surfaces = Surfaces(loaded.config, controller)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received {}: closing the open segment", signal.Signals(signum).name)
        surfaces.notifier.stopping()
        controller.request_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.current_thread().name = "vigil-controller"
    surfaces.start()
    try:
        code = controller.run()
    finally:
        surfaces.stop()
        controller.bus.close()
    logger.info("vigil stopped exit={}", code)
    return code
