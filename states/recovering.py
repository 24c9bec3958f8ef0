"""recovering: reopen camera and writer after a fault, with backoff, a bounded number of times.

Progressive: every attempt reopens a fresh camera instance and a fresh writer; from attempt
REBUILD_HARDWARE_AT_ATTEMPT on, the hardware factory itself is rebuilt first.

Each attempt is the `recovered` transition itself: its guards reopen the camera, repair the
directories and verify, so a failed attempt leaves the machine here with the reason. After
`max_attempts` failed attempts the unit gives up and goes to `critical`.

An attempt that reached `recording` counts as recovered only once the unit has recorded for
`stable_seconds`: a camera lost again before that (a flapping camera, one frame and an error)
is a failed attempt, so its attempt counter and backoff go on growing to `critical` instead of
starting again at the first, immediate attempt. The losses since the unit was last stable
are kept in `losses`; the controller raises its flapping alert from them.
"""

from __future__ import annotations

from collections.abc import Callable
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
    stable_seconds: float = 5.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based): exponential, capped."""
        if attempt <= 1:
            return 0.0
        return float(min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempt - 2)))


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    cause = event.kwargs.get("reason", event.event.name)
    unit.release_stale_output()
    if event.transition is not None and event.transition.source == "recording":
        settle(unit)  # recorded long enough before this loss: a new episode starts
        unit.losses.append(unit.clock())
        unit.recording_since = None
    else:
        unit.recovery_attempts = 0  # a probe from critical starts a fresh round
    n, policy = unit.recovery_attempts, unit.policy
    if n >= policy.max_attempts:
        reason = (f"lost again {len(unit.losses)} times, each within {policy.stable_seconds:g}s "
                  f"of recording again ({cause})")
        logger.warning("recovering after {}: no attempt left after {} short recoveries", cause, n)
        unit.post("give_up", reason)
        return
    delay = policy.delay_before(n + 1)
    if n == 0:
        logger.warning("recovering after {}: first attempt now", cause)
    else:
        logger.warning("recovering after {} within {:g}s of the last recovery: attempt {} of {} "
                       "in {:g}s", cause, policy.stable_seconds, n + 1, policy.max_attempts, delay)
    unit.schedule(delay, ATTEMPT_EVENT)


def has_recorded_stably(unit: RecoveryAttempts) -> bool:
    """Whether the latest recording (going on, or just lost) had frames for `stable_seconds`:
    the camera's last frame came that long after the recording began (not merely the state)."""
    since, last = unit.recording_since, unit.last_frame_at()
    return since is not None and last is not None and last - since >= unit.policy.stable_seconds


def settle(unit: RecoveryAttempts) -> bool:
    """Once the unit has recorded stably, the last recovery counts: the attempt counter and the
    losses start again from zero. True when this call ended an episode of losses.

    The controller calls it while recording (so the flapping alert clears on time); entering
    `recovering` calls it too, so the rule never depends on the controller's tick.
    """
    if not has_recorded_stably(unit):
        return False
    ended = bool(unit.losses) or unit.recovery_attempts > 0
    if ended:
        logger.info("recording stable for {:g}s: recovered after {} loss(es), {} attempt(s)",
                    unit.policy.stable_seconds, len(unit.losses), unit.recovery_attempts)
    unit.recovery_attempts = 0
    unit.losses.clear()
    return ended


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
        logger.info("recording again on attempt {} of {}; recovered once stable for {:g}s",
                    n, policy.max_attempts, policy.stable_seconds)
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
    recording_since: float | None
    losses: list[float]
    clock: Callable[[], float]

    post: Post
    schedule: Schedule

    def release_stale_output(self) -> None: ...

    def last_frame_at(self) -> float | None: ...
