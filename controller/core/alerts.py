"""Alert records: state changes, faults, recoveries, low disk and a flapping camera, kept in a
bounded ring.

The controller records one alert per state change (a fault when recording breaks, a
recovery when it resumes) and conditions such as low disk once when they start and once
when they clear, never once per check. `/status` shows the newest; `when_alert` lets a
publisher (MQTT, a log shipper) see each one as it is recorded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from loguru import logger

AlertKind = Literal["state_change", "fault", "recovery", "low_disk", "flapping", "upload", "footage_lost",
                    "footage_altered", "quality"]
ALERT_KINDS: tuple[AlertKind, ...] = ("state_change", "fault", "recovery", "low_disk", "flapping", "upload",
                                      "footage_lost", "footage_altered", "quality")
DEFAULT_CAPACITY = 100


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: when (wall clock, UTC seconds), what kind, and a sentence for people."""

    time: float
    kind: AlertKind
    message: str

    def as_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data, with the time also in ISO 8601 for people."""
        at = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="seconds")
        return {"time": self.time, "at": at.replace("+00:00", "Z"), "kind": self.kind,
                "message": self.message}


def transition_kind(before: str, after: str) -> AlertKind:
    """The alert kind of a state change: recording breaking is a fault, resuming a recovery."""
    if before == "recording" and after == "recovering":
        return "fault"
    if after == "critical":
        return "fault"
    if before == "recovering" and after == "recording":
        return "recovery"
    return "state_change"


class AlertLog:
    """The newest `capacity` alerts, plus lifetime counts per kind; safe from any thread."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._ring: deque[Alert] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._clock = clock
        self._active: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.when_alert: Callable[[Alert], None] | None = None

    def __repr__(self) -> str:
        return f"<AlertLog held={len(self._ring)} counts={dict(self.counts)}>"

    def __len__(self) -> int:
        return len(self._ring)

    def record(self, kind: AlertKind, message: str) -> Alert:
        """Keep an alert and hand it to `when_alert`; the caller has already logged it."""
        alert = Alert(self._clock(), kind, message)
        with self._lock:
            self._ring.append(alert)
            self.counts[kind] += 1
        callback = self.when_alert
        if callback is not None:
            try:
                callback(alert)
            except Exception:
                # A broken publisher must not break the controller thread that records.
                logger.exception("alert publisher failed on kind={} message={}", kind, message)
        return alert

    def record_transition(self, before: str, after: str, trigger: str, reason: str = "") -> Alert:
        """One alert for a state change; `reason` says why, where there is one."""
        kind = transition_kind(before, after)
        message = f"{before} -> {after} on {trigger}"
        if reason:
            message += f": {reason}"
        return self.record(kind, message)

    def condition(self, kind: AlertKind, key: str, is_active: bool, message: str) -> Alert | None:
        """Record `key` (e.g. a root's low disk) once when it starts and once when it clears.

        Call it on every check; it answers the alert it recorded, or None when nothing changed.
        """
        with self._lock:
            was_active = key in self._active
            if is_active == was_active:
                return None
            if is_active:
                self._active[key] = message
            else:
                del self._active[key]
        if is_active:
            logger.warning("alert kind={} raised: {}", kind, message)
            return self.record(kind, message)
        logger.info("alert kind={} cleared: {}", kind, message)
        return self.record(kind, f"cleared: {message}")

    def active(self) -> dict[str, str]:
        """Conditions raised and not yet cleared, by key."""
        with self._lock:
            return dict(self._active)

    def recent(self, limit: int | None = None) -> list[Alert]:
        """The newest alerts, oldest first; at most `limit` of them."""
        with self._lock:
            alerts = list(self._ring)
        return alerts if limit is None else alerts[-limit:] if limit > 0 else []
