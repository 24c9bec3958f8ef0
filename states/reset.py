"""reset: the emergency reset. Drop everything, reload the config from disk, go to idle.

Reachable from every state (GPIO long press, API, CLI). The guards have already closed the
pipeline; entering cancels scheduled work, clears error counts and recovery attempts,
reloads the config (keeping the last good one, loudly, if the file on disk is bad) and
queues `reset_done`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from loguru import logger

if TYPE_CHECKING:
    from transitions import EventData

    from states.unit import Unit


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    logger.warning("reset: dropping all state and reloading the config")
    unit.cancel_scheduled()
    unit.recovery_attempts = 0
    unit.recording_since = None
    unit.losses.clear()
    unit.reload()
    unit.post("reset_done")
