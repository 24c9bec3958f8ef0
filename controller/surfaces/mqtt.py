"""MQTT: the unit's state, health and alerts on a broker, and commands back from it.

A surface peer like the API: it reads `controller.snapshot`, takes state changes and alerts
from `controller.bus` (its own bounded queue), and sends commands through a CommandDesk. The
paho-mqtt client runs its own network thread (`loop_start`) and reconnects by itself with an
exponential backoff and full jitter; while the broker is away it keeps at most
`mqtt.queue_messages` messages and counts the ones it drops. Nothing here blocks the
controller loop or recording: the worst a broken broker does is fill and drop this
surface's own queues.

Topics (base `<mqtt.base_topic>`, see discovery.Topics): `availability` (retained `online`,
last will and clean stop `offline`), `state`, `health`, `fps`, `disk`, `root`, `alert`
(retained), `alerts` (each alert, not retained), `camera` (a JPEG every `camera_seconds`),
`command/<start|stop|reset|merge|recording>` in and `result` out.

paho-mqtt is imported when the surface starts, so `vigil --help` and a unit with MQTT off
never load it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from controller.core.commands import CommandDesk
from controller.core.events import AlertRaised, StateChanged
from controller.surfaces.discovery import (
    COMMANDS,
    OFFLINE,
    ONLINE,
    SWITCH_COMMAND,
    Topics,
    discovery_messages,
    removal_messages,
)
from hw.errors import EncoderError
from hw.snapshot import encode_jpeg

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from controller.config import MqttConfig, VigilConfig
    from controller.core.controller import Controller
    from controller.core.events import Subscription
    from controller.core.snapshot import StatusSnapshot
    from controller.surfaces.metrics import Exposition

RECONNECT_MIN_SECONDS = 1
RECONNECT_MAX_SECONDS = 30  # the longest wait between two connection attempts
COMMAND_WAIT_SECONDS = 30.0  # a reset reloads the config and restarts the camera
COMMAND_QUEUE = 16
BUS_QUEUE_EVENTS = 256
STOP_PUBLISH_SECONDS = 2.0  # how long a clean stop waits for `offline` to reach the broker
JOIN_SECONDS = 5.0
HOUR_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}")
HOUR_FORMAT = "%Y-%m-%dT%H"


class MqttSetupError(Exception):
    """The MQTT settings name something that cannot be used (a password file, a certificate)."""


def read_password(path: Path) -> str:
    """The password in `path` (its first line); MqttSetupError saying why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MqttSetupError(f"cannot read mqtt.password_file {path}: {err}") from err
    password = text.splitlines()[0] if text else ""
    if not password:
        raise MqttSetupError(f"mqtt.password_file {path} is empty")
    return password


def make_client(config: MqttConfig, client_id: str, *, when_connect_error: Callable[[OSError], None]
                ) -> paho.Client:
    """A paho client with the config's login and TLS settings; MqttSetupError when they are unusable."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

    class Client(paho.Client):
        # paho's network thread swallows why a connection attempt failed (it only calls
        # on_connect_fail); the reason is what the operator needs in the log.
        def reconnect(self) -> MQTTErrorCode:
            try:
                return super().reconnect()
            except OSError as err:
                when_connect_error(err)
                raise

    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if config.username is not None:
        password = read_password(config.password_file) if config.password_file is not None else None
        client.username_pw_set(config.username, password)
    if config.tls:
        try:
            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                           certfile=str(config.certfile) if config.certfile else None,
                           keyfile=str(config.keyfile) if config.keyfile else None)
        except (OSError, ssl.SSLError, ValueError) as err:
            raise MqttSetupError(f"cannot load the TLS files (mqtt.ca_file, certfile, keyfile): "
                                 f"{err}") from err
    return client


def describe_connect_error(err: OSError, where: str) -> str:
    """One sentence for the log: what failed connecting to `where`, and what to check."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return (f"TLS verification of MQTT broker {where} failed: {err.verify_message}; check "
                "mqtt.ca_file and that the broker's certificate names mqtt.host")
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake with MQTT broker {where} failed: {err.reason or err}"
    if isinstance(err, ConnectionRefusedError):
        return f"MQTT broker {where} refused the connection (is it running on that port?)"
    return f"cannot reach MQTT broker {where}: {err}"


class MqttSurface:
    """Publishes the unit to an MQTT broker and takes commands from it; `start()` then `stop()`."""

    def __init__(self, config: MqttConfig, unit_id: str, controller: Controller, *,
                 version: str = "") -> None:
        self.config = config
        self.unit_id = unit_id
        self.controller = controller
        self.version = version
        self.topics = Topics(config.topic_base(unit_id), config.discovery_prefix)
        self.where = f"{config.host}:{config.port}"
        # counters, read by metrics and tests
        self.published = 0
        self.dropped = 0
        self.connects = 0
        self.subscribed = 0  # SUBACKs: the command topics are heard from here on
        self.reconnect_delays: deque[int] = deque(maxlen=64)  # the latest waits paho was given
        self.connect_failures = 0
        self.login_refusals = 0
        self.births = 0
        self.discovery_published = 0
        self.commands_done = 0
        self.commands_ignored = 0
        self.is_connected = False
        self._client: paho.Client | None = None
        self._desk: CommandDesk | None = None
        self._subscription: Subscription | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._republish = threading.Event()  # everything retained, after a (re)connect
        self._rediscover = threading.Event()  # discovery only: Home Assistant's birth message
        self._commands: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._threads: list[threading.Thread] = []
        self._random = random.Random()
        self._failures = 0
        self._problem: str | None = None
        self._connect_error: OSError | None = None
        self._warned_ignored = False
        self._warned_drop = False
        self._count_lock = threading.Lock()
        self._state_lock = threading.Lock()  # the bus thread and the publisher both publish state
        self._last_state: str | None = None
        self._last_root: str | None = None
        self._last_frame: object = None

    def __repr__(self) -> str:
        return (f"<MqttSurface {self.where} base={self.topics.base} connected={self.is_connected} "
                f"published={self.published} dropped={self.dropped}>")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> bool:
        """Connect in the background and start publishing; False (logged) when the settings are unusable."""
        try:
            client = make_client(self.config, f"vigil-{self.unit_id}", when_connect_error=self._note_error)
        except MqttSetupError as err:
            logger.error("MQTT stays off: {}; recording goes on", err)
            return False
        client.max_queued_messages_set(self.config.queue_messages)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)
        client.will_set(self.topics.availability, OFFLINE, qos=self.config.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._desk = CommandDesk(self.controller, name="mqtt-commands")
        self._subscription = self.controller.bus.subscribe(
            "mqtt", self._on_event, maxsize=BUS_QUEUE_EVENTS, kinds=(StateChanged, AlertRaised))
        logger.info("MQTT publishing to {} under {} (commands {})", self.where, self.topics.base,
                    "on" if self.config.commands else "off")
        client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_seconds)
        client.loop_start()
        for name, target in (("vigil-mqtt", self._publisher), ("vigil-mqtt-commands", self._commander)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return True

    def stop(self) -> None:
        """Say `offline` (retained), disconnect and end the threads; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        # A command in hand is answered first (a reset that changed the mqtt section stops
        # this surface while its own CommandDone is on the way), within the join's bound.
        for thread in self._threads:
            thread.join(JOIN_SECONDS)
        if self._subscription is not None:
            self.controller.bus.unsubscribe(self._subscription)
        if self._desk is not None:
            self._desk.close()
        client = self._client
        if client is None:
            return
        if self.is_connected:
            info = client.publish(self.topics.availability, OFFLINE, qos=self.config.qos, retain=True)
            # RuntimeError: the connection went meanwhile, so the broker publishes the will instead
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(STOP_PUBLISH_SECONDS)
        self.is_connected = False
        client.disconnect()
        client.loop_stop()
        logger.info("MQTT stopped published={} dropped={}", self.published, self.dropped)

    def metrics(self, out: Exposition) -> None:
        """This surface's counters on the metrics page."""
        out.gauge("vigil_mqtt_connected", "1 while the MQTT broker connection is up.",
                  1 if self.is_connected else 0)
        out.counter("vigil_mqtt_published_total", "MQTT messages handed to the client for the broker.",
                    self.published)
        out.counter("vigil_mqtt_dropped_total",
                    "MQTT messages dropped because the broker was away and the queue was full.",
                    self.dropped)
        out.counter("vigil_mqtt_connects_total", "Successful connections to the MQTT broker.", self.connects)

    # -- paho's network thread ---------------------------------------------------------

    def _note_error(self, err: OSError) -> None:
        self._connect_error = err

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.login_refusals += 1
            who = f"as {self.config.username}" if self.config.username else "anonymously"
            self._trouble(f"MQTT broker {self.where} refused the login {who}: {reason}; check "
                          "mqtt.username and mqtt.password_file")
            return
        self._failures = 0
        self.connects += 1
        self.is_connected = True
        if self._problem is not None:
            logger.info("MQTT connected to {} again (was: {})", self.where, self._problem)
        else:
            logger.info("MQTT connected to {}", self.where)
        self._problem = None
        self._warned_drop = False
        client.publish(self.topics.availability, ONLINE, qos=self.config.qos, retain=True)
        client.subscribe([(self.topics.ha_status, self.config.qos), (self.topics.commands, self.config.qos)])
        self._republish.set()
        self._wake.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.subscribed += 1

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.connect_failures += 1
        err, self._connect_error = self._connect_error, None
        reason = describe_connect_error(err, self.where) if err is not None else \
            f"cannot connect to MQTT broker {self.where}"
        self._trouble(reason)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was_connected, self.is_connected = self.is_connected, False
        if self._stop.is_set():
            return
        if was_connected:
            self._trouble(f"MQTT connection to {self.where} lost ({reason}); keeping up to "
                          f"{self.config.queue_messages} messages")
        else:
            self._back_off()

    def _trouble(self, problem: str) -> None:
        """Log a connection problem once (until it changes or the connection works) and back off."""
        if problem != self._problem:
            logger.warning("{}; recording goes on, retrying every {} s at most", problem,
                           RECONNECT_MAX_SECONDS)
            self._problem = problem
        self._back_off()

    def _back_off(self) -> None:
        # Exponential backoff with full jitter: a fleet that lost its broker together does
        # not come back in lockstep.
        self._failures += 1
        ceiling = min(RECONNECT_MAX_SECONDS, RECONNECT_MIN_SECONDS * 2 ** min(self._failures, 10))
        delay = self._random.randint(RECONNECT_MIN_SECONDS, ceiling)
        self.reconnect_delays.append(delay)
        if self._client is not None:
            self._client.reconnect_delay_set(delay, delay)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic == self.topics.ha_status:
            if message.payload == ONLINE.encode():
                self.births += 1
                logger.info("Home Assistant is online; publishing discovery again")
                self._rediscover.set()
                self._wake.set()
            return
        name = topic.removeprefix(self.topics.command(""))
        if not self.config.commands:
            self.commands_ignored += 1
            if not self._warned_ignored:
                self._warned_ignored = True
                logger.warning("MQTT command on {} ignored: mqtt.commands is false (this is "
                               "logged once)", topic)
            return
        payload = message.payload.decode("utf-8", errors="replace")
        try:
            self._commands.put_nowait((name, payload))
        except queue.Full:
            self._publish(self.topics.result, json.dumps(
                {"command": name, "done": False, "detail": "busy: too many commands waiting"}))

    # -- publishing --------------------------------------------------------------------

    def _publish(self, topic: str, payload: str | bytes, *, retain: bool = False,
                 qos: int | None = None) -> None:
        client = self._client
        if client is None:
            return
        from paho.mqtt.enums import MQTTErrorCode

        level = self.config.qos if qos is None else qos
        info = client.publish(topic, payload, qos=level, retain=retain)
        # Not connected: paho keeps a QoS 1/2 message and sends it on reconnect (answering
        # NO_CONN all the same); only a QoS 0 one is lost then. A full queue loses either.
        dropped = info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and level == 0)
        with self._count_lock:  # the bus thread, the publisher and the commander all publish
            if dropped:
                self.dropped += 1
                warn, self._warned_drop = not self._warned_drop, True
            else:
                self.published += 1
                warn = False
        if warn:
            logger.warning("MQTT broker away and {} messages queued: dropping new ones "
                           "(counted in vigil_mqtt_dropped_total)", self.config.queue_messages)

    def publish_discovery(self) -> None:
        """The retained Home Assistant discovery configs (none when `mqtt.discovery` is false)."""
        if not self.config.discovery:
            return
        snap = self.controller.snapshot
        for topic, payload in discovery_messages(self.topics, self.unit_id, commands=self.config.commands,
                                                 model=snap.backend, version=self.version):
            self._publish(topic, payload, retain=True)
        self.discovery_published += 1

    def _publish_state(self, state: str, snap: StatusSnapshot, *, again: bool = False) -> None:
        root = str(snap.root) if snap.root is not None else "none"
        with self._state_lock:
            if again:  # retained again: the broker may have lost them
                self._last_state = self._last_root = None
            if state != self._last_state:
                self._publish(self.topics.state, state, retain=True)
                self._last_state = state
            if root != self._last_root:
                self._publish(self.topics.root, root, retain=True)
                self._last_root = root

    def _publish_measured(self, snap: StatusSnapshot) -> None:
        health = snap.health
        self._publish(self.topics.health, json.dumps(
            {"score": health.score, "reason": health.reason} if health is not None
            else {"score": None, "reason": "not measured yet"}), retain=True)
        if snap.fps_achieved is not None:
            self._publish(self.topics.fps, f"{snap.fps_achieved:.2f}", retain=True)
        disk = snap.disk
        if disk is not None:
            self._publish(self.topics.disk, json.dumps({
                "root": disk.path, "free_bytes": disk.free_bytes, "total_bytes": disk.total_bytes,
                "reserve_bytes": disk.reserve_bytes, "seconds_until_reserve": disk.seconds_until_reserve,
                "is_low": disk.is_low}), retain=True)

    def _publish_everything(self) -> None:
        snap = self.controller.snapshot
        self.publish_discovery()
        self._publish_state(snap.state, snap, again=True)
        self._publish_measured(snap)
        if snap.alerts:
            self._publish(self.topics.last_alert, json.dumps(snap.alerts[-1].as_dict()), retain=True)

    def _publish_camera(self, snap: StatusSnapshot) -> None:
        frame = snap.latest_frame
        if frame is None or frame.data is None or frame is self._last_frame:
            return
        try:
            jpeg = encode_jpeg(frame.data)
        except EncoderError as err:
            logger.debug("no MQTT camera image: {}", err)
            return
        self._last_frame = frame
        self._publish(self.topics.camera, jpeg, qos=0)

    def _on_event(self, event: object) -> None:
        """Bus events (this surface's own queue and thread); queued by paho while the broker is away."""
        if isinstance(event, StateChanged):
            self._publish_state(event.after, self.controller.snapshot)
        elif isinstance(event, AlertRaised):
            data = json.dumps(event.alert.as_dict())
            self._publish(self.topics.alerts, data)
            self._publish(self.topics.last_alert, data, retain=True)

    def _publisher(self) -> None:
        next_stats = next_camera = 0.0
        camera_seconds = self.config.camera_seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if self._republish.is_set():
                self._republish.clear()
                self._rediscover.clear()
                self._publish_everything()
                next_stats = now + self.config.stats_seconds
            if self._rediscover.is_set():
                self._rediscover.clear()
                self.publish_discovery()
            if self.is_connected:
                snap = self.controller.snapshot
                self._publish_state(snap.state, snap)  # in case the bus dropped a change
                if now >= next_stats:
                    next_stats = now + self.config.stats_seconds
                    self._publish_measured(snap)
                if camera_seconds > 0 and now >= next_camera:
                    next_camera = now + camera_seconds
                    self._publish_camera(snap)
            due = min(next_stats, next_camera if camera_seconds > 0 else next_stats)
            self._wake.wait(max(0.1, min(1.0, due - time.monotonic())))
            self._wake.clear()

    # -- commands ----------------------------------------------------------------------

    def _commander(self) -> None:
        while not self._stop.is_set():
            try:
                name, payload = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            result = self._perform(name, payload.strip())
            self.commands_done += 1
            self._publish(self.topics.result, json.dumps(result))

    def _perform(self, name: str, payload: str) -> dict[str, Any]:
        """Carry out one command; what the machine did, as the result topic says it."""
        logger.info("MQTT command {} payload={!r}", name, payload[:64])
        if name == "merge":
            return self._merge(payload)
        trigger = name
        if name == SWITCH_COMMAND:
            if payload not in ("start", "stop"):
                return {"command": name, "done": False,
                        "detail": f"payload {payload[:64]!r} is neither start nor stop"}
            trigger = payload
        elif name not in COMMANDS:
            return {"command": name, "done": False,
                    "detail": f"unknown command; known: {', '.join((*COMMANDS, SWITCH_COMMAND))}"}
        assert self._desk is not None
        done = self._desk.ask(trigger, COMMAND_WAIT_SECONDS)
        if done is None:
            return {"command": name, "trigger": trigger, "done": False,
                    "detail": f"asked; not settled within {COMMAND_WAIT_SECONDS:g} s"}
        return {"command": name, "trigger": trigger, "done": done.is_done, "command_id": done.command_id,
                "before": done.before, "state": done.state, "transitions": list(done.transitions),
                "refused": list(done.refused) if done.refused else None, "possible": done.possible,
                "detail": done.detail}

    def _merge(self, payload: str) -> dict[str, Any]:
        hour = None if payload in ("", "merge") else payload  # the button presses `merge`: every hour
        if hour is not None:
            try:
                if not HOUR_PATTERN.fullmatch(hour):
                    raise ValueError("not YYYY-MM-DDTHH")
                datetime.strptime(hour, HOUR_FORMAT)
            except ValueError as err:
                return {"command": "merge", "hour": hour[:64], "done": False,
                        "detail": f"{hour[:64]!r} is not a UTC hour YYYY-MM-DDTHH: {err}"}
        try:
            future = self.controller.request_merge(hour)
            merged = future.result(timeout=COMMAND_WAIT_SECONDS)
        except TimeoutError:
            return {"command": "merge", "hour": hour, "done": False,
                    "detail": f"merge queued; still running after {COMMAND_WAIT_SECONDS:g} s"}
        except Exception as err:
            return {"command": "merge", "hour": hour, "done": False,
                    "detail": f"nothing merged: {type(err).__name__}: {err}"}
        return {"command": "merge", "hour": hour, "done": True, "detail": f"merged {len(merged)} hour(s)",
                "merged": [str(item.path) for item in merged]}


def remove_discovery(config: VigilConfig, *, timeout: float = 10.0) -> tuple[bool, str]:
    """Publish an empty retained config for every entity of this unit: Home Assistant forgets it.

    Returns (done, what happened). Run it with the daemon stopped or `mqtt.discovery: false`,
    or the daemon announces the unit again when Home Assistant restarts.
    """
    mqtt = config.mqtt
    unit_id = config.unit.id
    topics = Topics(mqtt.topic_base(unit_id), mqtt.discovery_prefix)
    errors: list[OSError] = []
    connected = threading.Event()
    refused: list[str] = []
    try:
        client = make_client(mqtt, f"vigil-{unit_id}-remove-discovery", when_connect_error=errors.append)
    except MqttSetupError as err:
        return False, str(err)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_seconds)
    except OSError as err:
        return False, describe_connect_error(err, where)
    client.loop_start()
    try:
        if not connected.wait(timeout) or refused:
            return False, f"MQTT broker {where}: {refused[0] if refused else 'no answer'}"
        infos = [client.publish(topic, payload, qos=1, retain=True)
                 for topic, payload in removal_messages(topics, unit_id)]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        if not all(info.is_published() for info in infos):
            return False, f"MQTT broker {where} did not take every removal within {timeout:g} s"
        return True, (f"removed {len(infos)} discovery configs of unit {unit_id} under "
                      f"{topics.discovery_prefix}/")
    finally:
        client.disconnect()
        client.loop_stop()
