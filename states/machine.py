"""The state machine as data: states, transitions and the guard work each runs.

Every transition prepares with cleanup and directory repair (and, into `recording`, a
fresh camera). Only transitions into `recording` ask conditions and can be refused: one
that leaves a state always happens, so the cleanup its callbacks did (the pipeline closed)
never leaves the machine in `recording` without a pipeline. A recovery attempt is the
`recovered` trigger itself, scheduled by `recovering`; a GPIO short press is `toggle`.
`vigil diagram` prints this table as mermaid; the README embeds it.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine

from states import critical, idle, recording, recovering, reset

STATES: list[dict[str, Any]] = [
    {"name": "idle", "on_enter": [idle.enter]},
    {"name": "recording", "on_enter": [recording.enter]},
    {"name": "recovering", "on_enter": [recovering.enter]},
    {"name": "critical", "on_enter": [critical.enter]},
    {"name": "reset", "on_enter": [reset.enter]},
]
STATE_NAMES = [s["name"] for s in STATES]

# Guard work, in the order ARCHITECTURE.md gives: validation, cleanup, directory repair.
# Leaving a state is never refused: its cleanup is verified afterwards and what could not be
# closed is reported (and abandoned), not held against the transition.
LEAVE = {"prepare": ["cleanup", "repair_directories"], "after": ["verify_cleanup"]}
INTO_RECORDING = {
    "prepare": ["cleanup", "repair_directories", "open_camera"],
    "conditions": ["is_config_valid", "is_cleanup_verified", "is_storage_ready", "is_camera_ready"],
}
RECOVERY_ATTEMPT = {**INTO_RECORDING, "prepare": ["begin_recovery_attempt", *INTO_RECORDING["prepare"]]}

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": "idle", "dest": "recording", **INTO_RECORDING},
    {"trigger": "stop", "source": ["recording", "recovering", "critical"], "dest": "idle", **LEAVE},
    {"trigger": "fault", "source": "recording", "dest": "recovering", **LEAVE},
    {"trigger": "recovered", "source": "recovering", "dest": "recording", **RECOVERY_ATTEMPT},
    {"trigger": "give_up", "source": "recovering", "dest": "critical", **LEAVE},
    {"trigger": "probe", "source": "critical", "dest": "recovering", **LEAVE},
    {"trigger": "reset", "source": "*", "dest": "reset", **LEAVE},
    {"trigger": "reset_done", "source": "reset", "dest": "idle", **LEAVE},
    {"trigger": "toggle", "source": "idle", "dest": "recording", **INTO_RECORDING},
    {"trigger": "toggle", "source": ["recording", "recovering", "critical"], "dest": "idle", **LEAVE},
]
TRIGGERS = sorted({t["trigger"] for t in TRANSITIONS})


def accepts(trigger: str, state: str) -> bool:
    """Whether the table has `trigger` leaving `state`."""
    for transition in TRANSITIONS:
        if transition["trigger"] != trigger:
            continue
        source = transition["source"]
        if source == "*" or source == state or (isinstance(source, list) and state in source):
            return True
    return False


def build_machine(model: object, initial: str = "idle") -> Machine:
    """Attach the machine to `model` (triggers become its methods, `model.state` its state)."""
    return Machine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=initial,
        auto_transitions=False,
        queued=True,
        send_event=True,
        ignore_invalid_triggers=True,
        finalize_event="finish_event",
    )


def mermaid() -> str:
    """The transition table as a mermaid state diagram, one line per edge, stable order."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for t in TRANSITIONS:
        sources = STATE_NAMES if t["source"] == "*" else t["source"]
        for source in [sources] if isinstance(sources, str) else sources:
            lines.append(f"    {source} --> {t['dest']}: {t['trigger']}")
    return "\n".join(lines) + "\n"
