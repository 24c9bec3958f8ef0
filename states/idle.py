"""idle: nothing is recorded; the camera and writer are closed.

Entered at start-up, on `stop`, and at the end of a reset. After a reset (or at start-up)
it starts recording again by itself when the config says `recording.autostart`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from loguru import logger

if TYPE_CHECKING:
    from transitions import EventData

    from states.unit import Unit

AUTOSTART_AFTER = frozenset({"reset_done"})


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    # Stopping on purpose ends any episode of losses: the next start is a fresh one.
    unit.recording_since = None
    unit.recovery_attempts = 0
    unit.losses.clear()
    if event.event.name in AUTOSTART_AFTER and unit.autostart:
        logger.info("config says autostart: starting to record")
        unit.post("start")
