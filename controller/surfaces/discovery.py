"""Home Assistant MQTT discovery: the configs that make one vigil unit appear as one device.

Follows Home Assistant's MQTT discovery documentation: a retained JSON config on
`<discovery_prefix>/<component>/<node_id>/<object_id>/config` per entity, each with a
`unique_id` that never changes for the unit, the same `device` block (so the entities group
under one device) and the unit's availability topic. An empty retained payload on the same
topic removes the entity again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

ONLINE = "online"
OFFLINE = "offline"
COMMANDS = ("start", "stop", "reset", "merge")
SWITCH_COMMAND = "recording"  # the recording switch: payload `start` or `stop`
PROBLEM_STATES = ("recovering", "critical")


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic one unit publishes on or listens to, from its base topic."""

    base: str
    discovery_prefix: str

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def fps(self) -> str:
        return f"{self.base}/fps"

    @property
    def disk(self) -> str:
        return f"{self.base}/disk"

    @property
    def root(self) -> str:
        return f"{self.base}/root"

    @property
    def last_alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def alerts(self) -> str:
        return f"{self.base}/alerts"

    @property
    def camera(self) -> str:
        return f"{self.base}/camera"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def commands(self) -> str:
        """The filter that matches every command topic."""
        return f"{self.base}/command/+"

    def command(self, name: str) -> str:
        return f"{self.base}/command/{name}"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself (`online`) after it starts."""
        return f"{self.discovery_prefix}/status"


@dataclass(frozen=True, slots=True)
class Entity:
    component: str  # Home Assistant's platform: sensor, binary_sensor, switch, button, camera
    key: str  # this entity's part of the unique id and of the discovery topic
    config: dict[str, Any]
    needs_commands: bool = False


def node_id(unit_id: str) -> str:
    """The unit id as Home Assistant's discovery node id allows it ([a-zA-Z0-9_-])."""
    return "vigil_" + re.sub(r"[^A-Za-z0-9_-]", "_", unit_id)


def device_block(unit_id: str, *, model: str, version: str) -> dict[str, Any]:
    return {"identifiers": [node_id(unit_id)], "name": f"vigil {unit_id}", "manufacturer": "vigil",
            "model": f"recorder ({model} camera)", "sw_version": version}


def entities(topics: Topics) -> list[Entity]:
    """The unit's entities; those with `needs_commands` only do something when commands are on."""
    problem = " or ".join(f"value == '{state}'" for state in PROBLEM_STATES)
    return [
        Entity("binary_sensor", "recording", {
            "name": "Recording", "state_topic": topics.state, "device_class": "running",
            "value_template": "{{ 'ON' if value == 'recording' else 'OFF' }}"}),
        Entity("binary_sensor", "problem", {
            "name": "Problem", "state_topic": topics.state, "device_class": "problem",
            "value_template": f"{{{{ 'ON' if {problem} else 'OFF' }}}}"}),
        Entity("sensor", "state", {
            "name": "State", "state_topic": topics.state, "icon": "mdi:cctv"}),
        Entity("sensor", "health", {
            "name": "Health", "state_topic": topics.health, "unit_of_measurement": "%",
            "state_class": "measurement", "value_template": "{{ value_json.score }}",
            "json_attributes_topic": topics.health, "icon": "mdi:heart-pulse"}),
        Entity("sensor", "fps", {
            "name": "Frames per second", "state_topic": topics.fps, "unit_of_measurement": "fps",
            "state_class": "measurement", "suggested_display_precision": 1}),
        Entity("sensor", "disk_free", {
            "name": "Disk free", "state_topic": topics.disk, "device_class": "data_size",
            "unit_of_measurement": "B", "suggested_unit_of_measurement": "GB",
            "state_class": "measurement", "value_template": "{{ value_json.free_bytes }}",
            "json_attributes_topic": topics.disk, "entity_category": "diagnostic"}),
        Entity("sensor", "time_to_reserve", {
            "name": "Time until disk reserve", "state_topic": topics.disk, "device_class": "duration",
            "unit_of_measurement": "s", "value_template": "{{ value_json.seconds_until_reserve }}",
            "entity_category": "diagnostic"}),
        Entity("sensor", "last_alert", {
            "name": "Last alert", "state_topic": topics.last_alert,
            "value_template": "{{ value_json.message[:255] }}", "json_attributes_topic": topics.last_alert,
            "icon": "mdi:alert"}),
        Entity("camera", "camera", {"name": "Camera", "topic": topics.camera}),
        Entity("switch", "recording_switch", {
            "name": "Recording", "state_topic": topics.state, "command_topic": topics.command(SWITCH_COMMAND),
            "value_template": "{{ 'start' if value == 'recording' else 'stop' }}",
            "state_on": "start", "state_off": "stop", "payload_on": "start", "payload_off": "stop"},
            needs_commands=True),
        Entity("button", "reset", {
            "name": "Reset", "command_topic": topics.command("reset"), "payload_press": "reset",
            "device_class": "restart"}, needs_commands=True),
        Entity("button", "merge", {
            "name": "Merge closed hours", "command_topic": topics.command("merge"), "payload_press": "merge",
            "entity_category": "config"}, needs_commands=True),
    ]


def discovery_topic(topics: Topics, unit_id: str, entity: Entity) -> str:
    return f"{topics.discovery_prefix}/{entity.component}/{node_id(unit_id)}/{entity.key}/config"


def discovery_messages(topics: Topics, unit_id: str, *, commands: bool, model: str,
                       version: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity: its JSON config, or b"" to remove it.

    Entities that send commands are announced only when commands are on, and removed when
    they are off, so Home Assistant never shows a button that does nothing.
    """
    device = device_block(unit_id, model=model, version=version)
    out: list[tuple[str, bytes]] = []
    for entity in entities(topics):
        topic = discovery_topic(topics, unit_id, entity)
        if entity.needs_commands and not commands:
            out.append((topic, b""))
            continue
        config = {**entity.config, "unique_id": f"{node_id(unit_id)}_{entity.key}",
                  "object_id": f"{node_id(unit_id)}_{entity.key}", "device": device,
                  "availability_topic": topics.availability, "payload_available": ONLINE,
                  "payload_not_available": OFFLINE}
        out.append((topic, json.dumps(config, sort_keys=True).encode()))
    return out


def removal_messages(topics: Topics, unit_id: str) -> list[tuple[str, bytes]]:
    """An empty retained payload for every entity's config: Home Assistant drops them all."""
    return [(discovery_topic(topics, unit_id, entity), b"") for entity in entities(topics)]
