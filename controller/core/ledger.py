"""The error ledger: errors counted by category, each with a budget over a time window.

When a category spends its budget (that many errors within its window) the ledger says
so once, and then stays quiet about that category for its cooldown: one fault per burst,
not one per frame. Counts per category are kept for status pages and metrics.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """`count` errors within `window_seconds` spend the budget; then `cooldown_seconds` quiet."""

    count: int
    window_seconds: float
    cooldown_seconds: float


# A single error is a fault where the recording stops (the camera or the storage is gone);
# frame-level trouble gets a budget, since dropping a bad frame loses nothing else.
DEFAULT_BUDGETS: Mapping[str, Budget] = {
    "frame_invalid": Budget(30, 10.0, 10.0),
    "frame_timestamp": Budget(30, 10.0, 10.0),
    "camera_timeout": Budget(1, 10.0, 2.0),
    "camera_lost": Budget(1, 10.0, 2.0),
    "camera_frozen": Budget(1, 10.0, 10.0),
    "encoder_error": Budget(1, 10.0, 2.0),
    "storage_full": Budget(1, 10.0, 2.0),
    "storage_io": Budget(1, 10.0, 2.0),
    # The disk filled and the writer holds the footage in memory while retention makes room:
    # not a fault by itself (the writer gives up, as storage_full, if room never comes).
    "storage_held": Budget(100, 60.0, 10.0),
    # A recording stage that stopped (it has reported why under its own category already).
    "pipeline_stopped": Budget(1, 10.0, 2.0),
    # The writer saves the segment and recreates the folder itself; only repeats are a fault.
    "directory_missing": Budget(3, 60.0, 10.0),
}
FALLBACK_BUDGET = Budget(5, 10.0, 10.0)


class ErrorLedger:
    """Records errors; `record` answers True when this error spends its category's budget."""

    def __init__(
        self,
        budgets: Mapping[str, Budget] = DEFAULT_BUDGETS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = dict(budgets)
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._quiet_until: dict[str, float] = {}
        self.totals: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<ErrorLedger totals={dict(self.totals)} faults={dict(self.faults)}>"

    def record(self, category: str) -> bool:
        now = self._clock()
        budget = self.budgets.get(category, FALLBACK_BUDGET)
        self.totals[category] += 1
        recent = self._recent.setdefault(category, deque())
        recent.append(now)
        while recent and recent[0] <= now - budget.window_seconds:
            recent.popleft()
        if now < self._quiet_until.get(category, float("-inf")):
            return False
        if len(recent) >= budget.count:
            recent.clear()
            self._quiet_until[category] = now + budget.cooldown_seconds
            self.faults[category] += 1
            return True
        return False

    def recent(self, category: str) -> int:
        """Errors of `category` still inside its window."""
        budget = self.budgets.get(category, FALLBACK_BUDGET)
        recent = self._recent.get(category, deque())
        cutoff = self._clock() - budget.window_seconds
        return sum(1 for t in recent if t > cutoff)

    def clear(self) -> None:
        """Forget windows and cooldowns (a reset); lifetime totals stay for metrics."""
        self._recent.clear()
        self._quiet_until.clear()
