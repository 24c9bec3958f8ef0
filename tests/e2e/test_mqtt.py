"""MQTT against a real mosquitto: discovery, availability, state, commands, and a broker that misbehaves.

Each test starts its own mosquitto (Debian's package) on a loopback port (tests/e2e/mqtt_broker.py).
The unit is a real controller recording the synthetic camera with the daemon's own Surfaces,
in this process, or a real `vigil run` where a process has to die (kill -9).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loguru import logger

from controller.config import load_config
from controller.core.alerts import Alert
from controller.core.events import AlertRaised
from controller.daemon import Surfaces, build_controller
from controller.surfaces.discovery import Topics, node_id
from controller.surfaces.metrics import render_metrics
from controller.surfaces.mqtt import RECONNECT_MAX_SECONDS, MqttSurface
from tests.conftest import REPO
from tests.e2e.conftest import RunningController
from tests.e2e.mqtt_broker import Broker, Watcher, free_port, make_ca, make_server_tls
from tests.helpers import gaps, recorded_numbers

UNIT = "cam-test.1"
BASE = f"vigil/{UNIT}"
TOPICS = Topics(BASE, "homeassistant")
WAIT_SECONDS = 20.0
KEEPALIVE_SECONDS = 5


@dataclass
class Unit:
    running: RunningController
    surfaces: Surfaces
    root: Path

    @property
    def mqtt(self) -> MqttSurface:
        assert self.surfaces.mqtt is not None
        return self.surfaces.mqtt

    def frames_recorded(self) -> int:
        return self.running.controller.snapshot.totals.frames_recorded


def config_text(root: Path, port: int, *, mqtt: dict[str, object] | None = None,
                faults: str = "", api: str = "api:\n  enabled: false") -> str:
    settings = {"enabled": "true", "host": "127.0.0.1", "port": port, "keepalive_seconds": KEEPALIVE_SECONDS,
                "stats_seconds": 1, "camera_seconds": 1, **(mqtt or {})}
    lines = [f"unit:\n  id: {UNIT}", "camera:", "  backend: synthetic", "  width: 160", "  height: 120",
             "  fps: 15", faults, "recording:", f"  root: {root}", "  segment_seconds: 2",
             "  fragment_seconds: 0.5", "  merge: 'off'", "storage:", "  retention_days: 0",
             "  reserve_mb: 0", "  reserve_percent: 0", "recovery:", "  backoff_seconds: 0.2",
             "  backoff_max_seconds: 0.5",
             api, "gpio:\n  enabled: false", "mqtt:"]
    lines += [f"  {key}: {value}" for key, value in settings.items()]
    return "\n".join(line for line in lines if line) + "\n"


@pytest.fixture
def start_unit(tmp_path: Path) -> Iterator[Callable[..., Unit]]:
    started: list[Unit] = []

    def start(port: int, **kwargs: object) -> Unit:
        root = tmp_path / f"rec{len(started)}"
        path = tmp_path / f"vigil{len(started)}.yaml"
        path.write_text(config_text(root, port, **kwargs))  # type: ignore[arg-type]
        loaded = load_config(str(path))
        controller = build_controller(loaded, str(path))
        running = RunningController(controller)
        running.thread.start()
        surfaces = Surfaces(loaded.config, controller)
        surfaces.start()
        unit = Unit(running, surfaces, root)
        started.append(unit)
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        return unit

    yield start
    for unit in started:
        unit.surfaces.stop()
        if unit.running.thread.is_alive():
            unit.running.stop()
        unit.running.controller.bus.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    mosquitto = Broker(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def watcher(broker: Broker) -> Iterator[Watcher]:
    watching = Watcher(broker)
    yield watching
    watching.close()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def results(watcher: Watcher, since: int = 0) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in watcher.messages[since:] if m.topic == TOPICS.result]


def wait_result(watcher: Watcher, command: str, since: int, timeout: float = 45.0) -> dict[str, object]:
    message = watcher.wait_for(
        lambda m: m.topic == TOPICS.result and json.loads(m.payload)["command"] == command, timeout,
        since=since)
    assert message is not None, f"no result for {command}: {results(watcher, since)}"
    return dict(json.loads(message.payload))


def discovery_configs(watcher: Watcher) -> dict[str, dict[str, object]]:
    """The discovery configs this unit has retained on the broker, by topic."""
    latest = watcher.latest()
    prefix = "homeassistant/"
    return {topic: json.loads(m.payload) for topic, m in latest.items()
            if topic.startswith(prefix) and topic.endswith("/config") and node_id(UNIT) in topic
            and m.payload}


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_configs_are_json_with_stable_ids_one_device_and_live_topics(
        broker: Broker, watcher: Watcher, start_unit: Callable[..., Unit]) -> None:
    unit = start_unit(broker.port, mqtt={"commands": "true"})
    assert watcher.on(TOPICS.camera, WAIT_SECONDS) is not None, "no camera image"
    assert watcher.on(TOPICS.fps, WAIT_SECONDS) is not None and watcher.on(TOPICS.disk, WAIT_SECONDS)

    # A client that comes later gets what is retained: that is what Home Assistant reads.
    late = Watcher(broker)
    try:
        assert late.on(TOPICS.availability, WAIT_SECONDS, payload=b"online") is not None
        assert wait_until(lambda: len(discovery_configs(late)) == 12, WAIT_SECONDS), discovery_configs(late)
        configs = discovery_configs(late)
        retained = {m.topic for m in late.messages if m.retain}
    finally:
        late.close()
    unique_ids = [str(c["unique_id"]) for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids) == 12
    assert all(uid.startswith(node_id(UNIT) + "_") for uid in unique_ids)
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1, devices
    device = json.loads(devices.pop())
    assert device["identifiers"] == [node_id(UNIT)] and device["name"] == f"vigil {UNIT}"
    components = sorted(topic.split("/")[1] for topic in configs)
    assert components.count("binary_sensor") == 2
    assert {"switch", "button", "camera", "sensor"} <= set(components)

    for topic, config in configs.items():
        assert config["availability_topic"] == TOPICS.availability, topic
        for key in ("state_topic", "json_attributes_topic"):
            if key in config:
                assert config[key] in retained, f"{topic}: {key} {config[key]} holds no retained message"
        if "topic" in config:  # the camera: fed every camera_seconds, not retained
            image = watcher.on(str(config["topic"]), WAIT_SECONDS)
            assert image is not None and image.payload[:2] == b"\xff\xd8", "camera topic carries no JPEG"

    # Every command topic is listened to: pressing each gets an answer on the result topic.
    for config in configs.values():
        if "command_topic" not in config:
            continue
        press = config.get("payload_press", config.get("payload_on", ""))
        since = watcher.mark()
        watcher.publish(str(config["command_topic"]), str(press))
        answer = wait_result(watcher, str(config["command_topic"]).rsplit("/", 1)[1], since)
        assert "detail" in answer, answer
    assert unit.running.controller.wait_for_state("recording", WAIT_SECONDS)

    # Stable: the unit announces the same ids when it comes back.
    unit.surfaces.stop()
    assert watcher.on(TOPICS.availability, WAIT_SECONDS, payload=b"offline") is not None, "no offline on stop"
    again = MqttSurface(unit.surfaces.mqtt_settings[0], UNIT, unit.running.controller)
    since = watcher.mark()
    assert again.start()
    try:
        assert watcher.wait_for(lambda m: m.topic.endswith("/recording/config"), WAIT_SECONDS, since=since)
        assert wait_until(lambda: again.discovery_published >= 1 and again.published >= 12, WAIT_SECONDS)
        assert wait_until(lambda: len([m for m in watcher.messages[since:] if m.topic in configs]) >= 12,
                          WAIT_SECONDS)
        second = {m.topic: json.loads(m.payload)["unique_id"] for m in watcher.messages[since:]
                  if m.topic in configs}
        assert second == {topic: c["unique_id"] for topic, c in configs.items()}
    finally:
        again.stop()


def test_home_assistant_birth_message_republishes_discovery(
        broker: Broker, watcher: Watcher, start_unit: Callable[..., Unit]) -> None:
    unit = start_unit(broker.port)
    assert wait_until(lambda: unit.mqtt.discovery_published >= 1, WAIT_SECONDS)
    assert watcher.wait_for(lambda m: m.topic.endswith("/health/config"), WAIT_SECONDS) is not None
    since = watcher.mark()
    published = unit.mqtt.discovery_published

    watcher.publish("homeassistant/status", "online")

    again = watcher.wait_for(lambda m: m.topic.endswith("/health/config") and not m.retain, WAIT_SECONDS,
                             since=since)
    assert again is not None, "discovery was not published again after Home Assistant's birth message"
    assert json.loads(again.payload)["unique_id"] == f"{node_id(UNIT)}_health"
    assert unit.mqtt.births == 1 and unit.mqtt.discovery_published == published + 1
    # Home Assistant going offline is not a reason to announce anything.
    watcher.publish("homeassistant/status", "offline")
    assert unit.mqtt.births == 1


def test_the_api_metrics_page_carries_the_mqtt_counters(broker: Broker,
                                                        start_unit: Callable[..., Unit]) -> None:
    api_port = free_port()
    unit = start_unit(broker.port, api=f"api:\n  listen: 127.0.0.1:{api_port}")
    assert wait_until(lambda: unit.mqtt.connects == 1, WAIT_SECONDS)

    def page() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            return ""

    assert wait_until(lambda: "vigil_mqtt_connected 1" in page(), WAIT_SECONDS), page()
    assert "vigil_mqtt_dropped_total 0" in page()


# --- availability ------------------------------------------------------------------------------


def test_online_is_retained_and_the_last_will_says_offline_after_kill_9(broker: Broker, watcher: Watcher,
                                                                       tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(config_text(tmp_path / "rec", broker.port))
    log = (tmp_path / "vigil.log").open("wb")  # a file, not a pipe nobody reads: it cannot fill up
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        online = watcher.on(TOPICS.availability, 60, payload=b"online")
        assert online is not None, f"vigil never said online: {(tmp_path / 'vigil.log').read_text()[-3000:]}"
        late = Watcher(broker)
        try:
            retained = late.on(TOPICS.availability, WAIT_SECONDS)
            assert retained is not None and retained.payload == b"online" and retained.retain
        finally:
            late.close()
        assert watcher.on(TOPICS.state, WAIT_SECONDS, payload=b"recording") is not None
        since = watcher.mark()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        offline = watcher.on(TOPICS.availability, KEEPALIVE_SECONDS * 1.5, payload=b"offline", since=since)
        assert offline is not None, f"no offline within keepalive x 1.5 = {KEEPALIVE_SECONDS * 1.5} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    later = Watcher(broker)
    try:
        kept = later.on(TOPICS.availability, WAIT_SECONDS)
        assert kept is not None and kept.payload == b"offline" and kept.retain
    finally:
        later.close()


# --- state and commands ------------------------------------------------------------------------


def test_a_camera_disconnect_shows_on_the_state_topic(broker: Broker, watcher: Watcher,
                                                     start_unit: Callable[..., Unit]) -> None:
    faults = "  inject_faults:\n    - {kind: disconnect, after_seconds: 3, seconds: 2}"
    unit = start_unit(broker.port, faults=faults)
    assert watcher.on(TOPICS.state, WAIT_SECONDS, payload=b"recording") is not None
    recovering = watcher.on(TOPICS.state, WAIT_SECONDS, payload=b"recovering")
    assert recovering is not None, [m.payload for m in watcher.messages if m.topic == TOPICS.state]
    back = watcher.wait_for(lambda m: m.topic == TOPICS.state and m.payload == b"recording"
                            and m.at > recovering.at, WAIT_SECONDS)
    assert back is not None, "recording again after the camera came back was not published"
    alert = watcher.wait_for(lambda m: m.topic == TOPICS.alerts and json.loads(m.payload)["kind"] == "fault",
                             WAIT_SECONDS)
    assert alert is not None and not alert.retain
    assert unit.running.controller.snapshot.state == "recording"


def test_a_reset_command_passes_through_reset_and_is_answered(broker: Broker, watcher: Watcher,
                                                             start_unit: Callable[..., Unit]) -> None:
    unit = start_unit(broker.port, mqtt={"commands": "true"})
    assert watcher.on(TOPICS.availability, WAIT_SECONDS, payload=b"online") is not None
    assert wait_until(lambda: unit.mqtt.subscribed >= 1, WAIT_SECONDS)  # a command sent sooner is lost
    since = watcher.mark()

    watcher.publish(TOPICS.command("reset"), "")

    answer = wait_result(watcher, "reset", since)
    assert answer["done"] is True, answer
    transitions = [str(t) for t in answer["transitions"]]  # type: ignore[attr-defined]
    assert any(t.endswith("-> reset on reset") for t in transitions), transitions
    assert answer["state"] == "recording" and answer["before"] == "recording"
    states = [m.payload for m in watcher.messages[since:] if m.topic == TOPICS.state]
    assert b"reset" in states, states

    since = watcher.mark()
    watcher.publish(TOPICS.command("merge"), "not-an-hour")
    assert "is not a UTC hour" in str(wait_result(watcher, "merge", since)["detail"])


def test_a_reset_that_changed_the_mqtt_section_answers_then_reconnects_with_it(
        broker: Broker, watcher: Watcher, start_unit: Callable[..., Unit], tmp_path: Path) -> None:
    unit = start_unit(broker.port, mqtt={"commands": "true"})
    assert wait_until(lambda: unit.mqtt.subscribed >= 1, WAIT_SECONDS)  # a command sent sooner is lost
    renamed = Topics("site/renamed", "homeassistant")
    (tmp_path / "vigil0.yaml").write_text(config_text(
        unit.root, broker.port, mqtt={"commands": "true", "base_topic": renamed.base}))
    since = watcher.mark()

    watcher.publish(TOPICS.command("reset"), "")

    answer = wait_result(watcher, "reset", since)  # answered by the surface that took it
    assert answer["done"] is True and answer["state"] == "recording", answer
    assert watcher.on(renamed.availability, WAIT_SECONDS, payload=b"online", since=since) is not None
    assert watcher.on(TOPICS.availability, WAIT_SECONDS, payload=b"offline", since=since) is not None
    assert unit.mqtt.topics == renamed
    since = watcher.mark()
    watcher.publish(renamed.command("stop"), "")
    message = watcher.on(renamed.result, WAIT_SECONDS, since=since)
    assert message is not None and json.loads(message.payload)["state"] == "idle"


def test_with_commands_off_the_command_topic_is_ignored_and_logged_once(
        broker: Broker, watcher: Watcher, start_unit: Callable[..., Unit], log_lines: list[str]) -> None:
    unit = start_unit(broker.port)  # commands default to off
    assert wait_until(lambda: unit.mqtt.subscribed >= 1, WAIT_SECONDS)  # a command sent sooner is lost
    since = watcher.mark()

    for _ in range(3):
        watcher.publish(TOPICS.command("reset"), "")

    assert wait_until(lambda: unit.mqtt.commands_ignored == 3, WAIT_SECONDS)
    ignored = [line for line in log_lines if "ignored: mqtt.commands is false" in line]
    assert len(ignored) == 1, ignored
    assert results(watcher, since) == []
    controller = unit.running.controller
    assert not [t for t in controller.transitions if t[3] == "reset"], controller.transitions
    assert controller.snapshot.state == "recording"
    # The switch and buttons are not announced while they would do nothing.
    late = Watcher(broker)
    try:
        assert late.wait_for(lambda m: m.topic.endswith("/health/config"), WAIT_SECONDS)
        assert not [t for t in discovery_configs(late) if "/switch/" in t or "/button/" in t]
    finally:
        late.close()


def test_an_unreadable_password_file_leaves_mqtt_off_and_recording_on(
        broker: Broker, start_unit: Callable[..., Unit], tmp_path: Path, log_lines: list[str]) -> None:
    missing = tmp_path / "no-such-password"
    unit = start_unit(broker.port, mqtt={"username": "vigil", "password_file": str(missing)})
    frames = unit.frames_recorded()

    off = [line for line in log_lines if line.startswith("MQTT stays off")]
    assert len(off) == 1 and f"cannot read mqtt.password_file {missing}" in off[0], off
    assert unit.surfaces.metric_hooks == []
    assert wait_until(lambda: unit.frames_recorded() > frames, WAIT_SECONDS), "recording stopped"


# --- a broker that goes away or refuses -------------------------------------------------------


def test_broker_down_20_s_while_recording_loses_no_frame_and_everything_comes_back(
        broker: Broker, start_unit: Callable[..., Unit], log_lines: list[str]) -> None:
    unit = start_unit(broker.port)
    assert wait_until(lambda: unit.mqtt.connects == 1 and unit.mqtt.discovery_published >= 1, WAIT_SECONDS)
    frames_before = unit.frames_recorded()

    broker.stop()
    assert wait_until(lambda: not unit.mqtt.is_connected, WAIT_SECONDS)
    outage_end = time.monotonic() + 20
    while time.monotonic() < outage_end:  # the outage is the point of this test
        assert unit.running.controller.snapshot.state == "recording"
        time.sleep(0.5)
    assert unit.frames_recorded() > frames_before + 15 * 15, "recording stalled while the broker was away"
    broker.start()

    # Reconnected, and never told to wait longer than the backoff bound between tries (the
    # waits paho was given, not the wall clock: a busy machine stretches those).
    # (A hang guard: a try just before the broker was back fails, and the next may be
    # RECONNECT_MAX_SECONDS later.)
    assert wait_until(lambda: unit.mqtt.connects == 2,
                      2 * RECONNECT_MAX_SECONDS + WAIT_SECONDS), unit.mqtt
    delays = list(unit.mqtt.reconnect_delays)
    assert delays and max(delays) <= RECONNECT_MAX_SECONDS, delays
    # The broker kept nothing (persistence false): what it has now, vigil published again.
    late = Watcher(broker)
    try:
        assert late.on(TOPICS.availability, WAIT_SECONDS, payload=b"online") is not None
        state = late.on(TOPICS.state, WAIT_SECONDS)
        assert state is not None and state.retain and state.payload == b"recording"
        assert wait_until(lambda: len(discovery_configs(late)) == 9, WAIT_SECONDS), discovery_configs(late)
    finally:
        late.close()
    lost = [line for line in log_lines if "lost" in line and "MQTT connection" in line]
    assert len(lost) == 1, lost

    unit.surfaces.stop()
    unit.running.stop()
    numbers = recorded_numbers(unit.root)  # numbered per process: earlier tests took the first ones
    assert gaps(numbers) == []
    assert len(numbers) >= 20 * 15


def test_messages_queue_while_the_broker_is_away_and_the_excess_is_dropped_and_counted(
        tmp_path: Path, start_unit: Callable[..., Unit]) -> None:
    # A persistent broker and a persistent watcher session: whichever of vigil and the watcher
    # reconnects first after the outage, the broker keeps what vigil sends for the watcher.
    broker = Broker(tmp_path / "persistent-broker", persistent=True)
    broker.start()
    watcher = Watcher(broker, session="test-watcher-persistent")
    unit = start_unit(broker.port, mqtt={"queue_messages": 4, "stats_seconds": 3600, "camera_seconds": 0})
    assert wait_until(lambda: unit.mqtt.connects == 1, WAIT_SECONDS)
    # The burst sent on connect (discovery, state, ...) must be acknowledged first: messages
    # still waiting for their PUBACK when the broker goes would take the queue's 4 places.
    # (paho has no public count of them; _out_messages is what max_queued_messages limits.)
    assert wait_until(lambda: unit.mqtt._client is not None and not unit.mqtt._client._out_messages,
                      WAIT_SECONDS)
    broker.stop()
    assert wait_until(lambda: not unit.mqtt.is_connected, WAIT_SECONDS)
    dropped_before = unit.mqtt.dropped

    bus = unit.running.controller.bus
    for n in range(5):  # each alert is two messages: the event, and the retained last alert
        bus.publish(AlertRaised(Alert(time.time(), "low_disk", f"test alert {n}")))

    assert wait_until(lambda: unit.mqtt.dropped - dropped_before >= 6, WAIT_SECONDS), unit.mqtt
    page = render_metrics(unit.running.controller.snapshot, hooks=unit.surfaces.metric_hooks)
    dropped_line = next(line for line in page.splitlines() if line.startswith("vigil_mqtt_dropped_total "))
    assert int(dropped_line.split()[1]) == unit.mqtt.dropped
    assert "vigil_mqtt_connected 0" in page

    broker.start()
    try:
        assert wait_until(lambda: unit.mqtt.connects == 2,
                          2 * RECONNECT_MAX_SECONDS + WAIT_SECONDS)  # a hang guard, as above
        # What was kept is delivered after the reconnect.
        kept = watcher.wait_for(lambda m: m.topic == TOPICS.alerts
                                and json.loads(m.payload)["message"].startswith("test alert"),
                                2 * RECONNECT_MAX_SECONDS + WAIT_SECONDS)  # a hang guard too
        assert kept is not None, [m.payload for m in watcher.messages if m.topic == TOPICS.alerts]
    finally:
        watcher.close()
        broker.stop()


def test_a_wrong_password_is_one_clear_log_line_and_recording_goes_on(
        tmp_path: Path, start_unit: Callable[..., Unit], log_lines: list[str]) -> None:
    broker = Broker(tmp_path / "broker", users={"vigil": "right-password"})
    broker.start()
    try:
        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password\n")
        unit = start_unit(broker.port, mqtt={"username": "vigil", "password_file": str(wrong)})
        frames = unit.frames_recorded()
        assert wait_until(lambda: unit.mqtt.login_refusals >= 3, 60), unit.mqtt
        refused = [line for line in log_lines if "refused the login" in line]
        assert len(refused) == 1, refused
        assert "as vigil" in refused[0] and "mqtt.password_file" in refused[0]
        assert unit.running.controller.snapshot.state == "recording"
        assert unit.frames_recorded() > frames, "recording stopped"
        assert unit.mqtt.connects == 0

        right = tmp_path / "right-password"
        right.write_text("right-password\n")
        good = start_unit(broker.port, mqtt={"username": "vigil", "password_file": str(right),
                                              "base_topic": "vigil/good"})
        assert wait_until(lambda: good.mqtt.connects == 1, WAIT_SECONDS), "the right password was refused"
    finally:
        broker.stop()


def test_a_wrong_ca_is_one_clear_log_line_and_recording_goes_on(
        tmp_path: Path, start_unit: Callable[..., Unit], log_lines: list[str]) -> None:
    tls = make_server_tls(tmp_path / "tls")
    other_ca, _ = make_ca(tmp_path / "other", "not-the-broker-ca")
    broker = Broker(tmp_path / "broker", tls=tls)
    broker.start()
    try:
        unit = start_unit(broker.port, mqtt={"tls": "true", "ca_file": str(other_ca)})
        frames = unit.frames_recorded()
        assert wait_until(lambda: unit.mqtt.connect_failures >= 3, 60), unit.mqtt
        failed = [line for line in log_lines if "TLS verification" in line]
        assert len(failed) == 1, failed
        # OpenSSL's own verdict on the chain, then what to check.
        assert "self-signed certificate in certificate chain" in failed[0], failed
        assert "mqtt.ca_file" in failed[0]
        assert unit.running.controller.snapshot.state == "recording"
        assert unit.frames_recorded() > frames, "recording stopped"
        assert unit.mqtt.connects == 0

        good = start_unit(broker.port, mqtt={"tls": "true", "ca_file": str(tls.ca_file),
                                              "base_topic": "vigil/good"})
        assert wait_until(lambda: good.mqtt.connects == 1, WAIT_SECONDS), "the right CA was refused"
        watcher = Watcher(broker)
        try:
            assert watcher.on("vigil/good/availability", WAIT_SECONDS, payload=b"online") is not None
        finally:
            watcher.close()
    finally:
        broker.stop()


def test_remove_discovery_empties_every_retained_config(
        broker: Broker, watcher: Watcher, start_unit: Callable[..., Unit], tmp_path: Path) -> None:
    unit = start_unit(broker.port, mqtt={"commands": "true"})
    assert wait_until(lambda: len(discovery_configs(watcher)) == 12, WAIT_SECONDS)
    unit.surfaces.stop()
    config = tmp_path / "vigil0.yaml"  # the unit's own config file

    done = subprocess.run([sys.executable, "-m", "controller.cli", "mqtt", "remove-discovery", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "removed 12 discovery configs" in done.stdout
    assert wait_until(lambda: discovery_configs(watcher) == {}, WAIT_SECONDS)
    late = Watcher(broker)
    try:
        assert late.on(TOPICS.availability, WAIT_SECONDS) is not None  # retained messages have arrived
        assert discovery_configs(late) == {}
    finally:
        late.close()


def test_a_unit_with_mqtt_off_never_imports_paho(tmp_path: Path) -> None:
    code = ("import sys; from controller.cli import main; from controller.daemon import Surfaces; "
            "assert 'paho' not in sys.modules, 'paho imported'; "
            "main(['check-config', sys.argv[1]]); assert 'paho' not in sys.modules")
    config = tmp_path / "vigil.yaml"
    config.write_text("mqtt:\n  enabled: false\n")
    done = subprocess.run([sys.executable, "-c", code, str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr

