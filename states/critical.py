"""critical: recovery ran out of attempts; keep probing slowly, never give up for good.

A unit whose camera comes back at 3 a.m. must record again without anyone: every
`critical_probe_seconds` the unit goes back through `recovering` for a fresh round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from loguru import logger

if TYPE_CHECKING:
    from transitions import EventData

    from states.unit import Unit

PROBE_EVENT = "probe"


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    unit.release_stale_output()
    logger.error("critical: recovery failed ({}); probing again every {:g}s",
                 event.kwargs.get("reason", "unknown"), unit.policy.critical_probe_seconds)
    unit.schedule(unit.policy.critical_probe_seconds, PROBE_EVENT)
