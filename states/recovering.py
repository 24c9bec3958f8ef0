"""recovering: reopen camera and writer after a fault, with backoff, a bounded number of times.

Progressive: every attempt reopens a fresh camera instance and a fresh writer; from attempt
REBUILD_HARDWARE_AT_ATTEMPT on, the hardware factory itself is rebuilt first.

Each attempt is the `recovered` transition itself: its guards reopen the camera, repair the
directories and verify, so a failed attempt leaves the machine here with the reason. After
`max_attempts` failed attempts the unit gives up and goes to `critical`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from loguru import logger

if TYPE_CHECKING:
    from transitions import EventData

    from hw.factory import Hardware
    from states.hooks import Post, Schedule
    from states.unit import Unit

# Each attempt is the `recovered` trigger itself, scheduled after the backoff.
ATTEMPT_EVENT = "recovered"
# Attempts get heavier: the first ones reopen camera and writer (every attempt does, through
# the transition's guards); from this one on, the whole hardware factory is rebuilt first,
# so backend detection runs again (a camera that came back as a different device).
REBUILD_HARDWARE_AT_ATTEMPT = 3


@dataclass(frozen=True)
class RecoveryPolicy:
    """How hard to try before giving up, and how slowly to probe afterwards."""

    max_attempts: int = 3
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 5.0
    critical_probe_seconds: float = 5.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based): exponential, capped."""
        if attempt <= 1:
            return 0.0
        return float(min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempt - 2)))


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    unit.recovery_attempts = 0
    cause = event.kwargs.get("reason", event.event.name)
    logger.warning("recovering after {}: first attempt now", cause)
    unit.schedule(0.0, ATTEMPT_EVENT)


def begin_attempt(unit: RecoveryAttempts) -> None:
    """Count the attempt the `recovered` trigger is about to make; heavier ones rebuild the hardware."""
    unit.recovery_attempts += 1
    unit.recoveries_attempted += 1
    unit.refusal = ""
    if unit.recovery_attempts >= REBUILD_HARDWARE_AT_ATTEMPT:
        logger.warning("recovery attempt {}: rebuilding the hardware layer", unit.recovery_attempts)
        unit.hardware = unit.hardware.rebuilt()


def after_attempt(unit: RecoveryAttempts) -> None:
    """After a `recovered` attempt: done, or the next attempt scheduled, or give up."""
    n, policy = unit.recovery_attempts, unit.policy
    if unit.state == "recording":
        logger.info("recovered on attempt {} of {}", n, policy.max_attempts)
        return
    logger.warning("recovery attempt {} of {} failed: {}", n, policy.max_attempts, unit.refusal)
    if n >= policy.max_attempts:
        unit.post("give_up", unit.refusal)
        return
    unit.schedule(policy.delay_before(n + 1), ATTEMPT_EVENT)


class RecoveryAttempts(Protocol):
    """What an attempt reads and counts on the machine's model."""

    state: str
    hardware: Hardware
    policy: RecoveryPolicy
    recovery_attempts: int
    recoveries_attempted: int
    refusal: str

    post: Post
    schedule: Schedule
