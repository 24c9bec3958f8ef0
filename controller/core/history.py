"""The 24-hour history: one sample per minute of the daemon's life, built from status snapshots.

`MinuteSampler.observe(snapshot, now)` is called every few seconds off the controller thread
(controller/surfaces/history.py does it); when `now` enters a new minute it closes the one
before into a `MinuteSample`: the state at its end, the lowest and last health, the mean fps
achieved, and how many frames were recorded and dropped and errors counted in it. Those are
deltas of the snapshot's cumulative counters; a counter that went down (the process started
again, with its counters at zero) counts from zero. The ring keeps at most
`MAX_SAMPLES` (24 h) samples and the alerts raised in that window, and turns both into the
JSON that `GET /history` answers and into the compact file that survives a restart.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hw.errors import VigilError

if TYPE_CHECKING:
    from controller.core.alerts import Alert
    from controller.core.snapshot import StatusSnapshot

INTERVAL_SECONDS = 60
WINDOW_SECONDS = 24 * 3600
MAX_SAMPLES = WINDOW_SECONDS // INTERVAL_SECONDS  # 1440
MAX_ALERTS = 1000  # alerts kept for the window: ~40 an hour, more than any real night raises
MAX_CATEGORIES = 32  # error categories per sample kept in the file (the ledger has ~12)
MAX_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 500
FILE_VERSION = 1
STATES = ("idle", "recording", "recovering", "critical", "reset")

# Alert kinds (controller/core/alerts.py) as the page colours them.
SEVERITY_OF_KIND: Mapping[str, str] = {
    "fault": "critical", "footage_lost": "critical", "footage_altered": "critical",
    "low_disk": "warning", "flapping": "warning", "upload": "warning",
    "recovery": "info", "state_change": "info",
}


class HistoryFileError(VigilError, ValueError):
    """A history file that is not one vigil wrote: truncated, corrupt or hostile."""


@dataclass(frozen=True, slots=True)
class MinuteSample:
    """What one minute [t, t + 60) looked like."""

    t: float  # unix seconds of the minute's start
    state: str  # at the end of the minute
    health: float | None  # at the end of the minute
    health_min: float | None  # the lowest seen in the minute
    fps: float | None  # mean of the achieved fps seen in the minute
    fps_configured: float
    frames: int
    frames_dropped: int
    errors: Mapping[str, int]  # new errors by category, only non-zero
    disk_free_bytes: int | None
    states: tuple[str, ...]  # every state seen in the minute, in order, each once

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "state": self.state, "health": self.health, "health_min": self.health_min,
                "fps": self.fps, "fps_configured": self.fps_configured, "frames": self.frames,
                "frames_dropped": self.frames_dropped, "errors": dict(self.errors),
                "disk_free_bytes": self.disk_free_bytes, "states": list(self.states)}

    def merged_after(self, earlier: MinuteSample) -> MinuteSample:
        """This sample joined to an earlier one of the same minute (the daemon restarted in it)."""
        errors = dict(earlier.errors)
        for category, count in self.errors.items():
            errors[category] = errors.get(category, 0) + count
        lows = [h for h in (earlier.health_min, self.health_min) if h is not None]
        fps = [f for f in (earlier.fps, self.fps) if f is not None]
        states = tuple(dict.fromkeys((*earlier.states, *self.states)))
        return MinuteSample(self.t, self.state, self.health, min(lows) if lows else None,
                            round(sum(fps) / len(fps), 2) if fps else None, self.fps_configured,
                            earlier.frames + self.frames, earlier.frames_dropped + self.frames_dropped,
                            errors, self.disk_free_bytes, states)


@dataclass(frozen=True, slots=True)
class HistoryAlert:
    t: float
    name: str  # the alert's kind
    severity: str
    message: str

    @classmethod
    def of(cls, alert: Alert) -> HistoryAlert:
        return cls(alert.time, alert.kind, SEVERITY_OF_KIND.get(alert.kind, "warning"),
                   alert.message[:MAX_MESSAGE_CHARS])

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "name": self.name, "severity": self.severity, "message": self.message}


@dataclass(frozen=True, slots=True)
class Counters:
    """The cumulative counts a minute's deltas are taken from."""

    frames: int = 0
    dropped: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, snap: StatusSnapshot) -> Counters:
        return cls(snap.totals.frames_recorded, snap.totals.frames_dropped, dict(snap.errors))

    def since(self, base: Counters) -> tuple[int, int, dict[str, int]]:
        """(frames, dropped, errors) added since `base`; a count below its base restarted at 0."""
        errors = {name: _delta(count, base.errors.get(name, 0)) for name, count in self.errors.items()}
        return (_delta(self.frames, base.frames), _delta(self.dropped, base.dropped),
                {name: n for name, n in sorted(errors.items()) if n > 0})


def _delta(now: int, base: int) -> int:
    return now - base if now >= base else now


def minute_of(now: float) -> float:
    return float(math.floor(now / INTERVAL_SECONDS) * INTERVAL_SECONDS)


class HistoryRing:
    """The newest `capacity` minute samples and the alerts of the window; safe from any thread."""

    def __init__(self, capacity: int = MAX_SAMPLES, *, max_alerts: int = MAX_ALERTS) -> None:
        self.capacity = capacity
        self._samples: deque[MinuteSample] = deque(maxlen=capacity)
        self._alerts: deque[HistoryAlert] = deque(maxlen=max_alerts)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HistoryRing samples={len(self._samples)}/{self.capacity} alerts={len(self._alerts)}>"

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: MinuteSample) -> None:
        """Keep `sample`; one of the same minute as the newest is joined to it, an older one dropped."""
        with self._lock:
            newest = self._samples[-1] if self._samples else None
            if newest is not None and sample.t < newest.t:
                return  # the wall clock went back: keep the ring in order
            if newest is not None and sample.t == newest.t:
                self._samples[-1] = sample.merged_after(newest)
            else:
                self._samples.append(sample)

    def take_older(self, older: HistoryRing) -> None:
        """Put `older`'s samples and alerts (a ring loaded from the file) before this ring's own."""
        loaded, loaded_alerts = older.samples(), older.alerts()
        with self._lock:
            own = list(self._samples)
            first = own[0].t if own else math.inf
            kept = [s for s in loaded if s.t < first]
            if own and loaded and loaded[-1].t == first:
                own[0] = own[0].merged_after(loaded[-1])
            self._samples = deque([*kept, *own][-self.capacity:], maxlen=self.capacity)
            alerts = sorted([*loaded_alerts, *self._alerts], key=lambda a: a.t)
            self._alerts = deque(alerts[-(self._alerts.maxlen or len(alerts)):], maxlen=self._alerts.maxlen)

    def add_alert(self, alert: HistoryAlert) -> None:
        with self._lock:
            self._alerts.append(alert)

    def samples(self) -> list[MinuteSample]:
        with self._lock:
            return list(self._samples)

    def alerts(self) -> list[HistoryAlert]:
        with self._lock:
            return list(self._alerts)

    def drop_before(self, cutoff: float) -> None:
        """Forget samples of minutes that ended by `cutoff` and alerts raised before it."""
        with self._lock:
            while self._samples and self._samples[0].t + INTERVAL_SECONDS <= cutoff:
                self._samples.popleft()
            while self._alerts and self._alerts[0].t < cutoff:
                self._alerts.popleft()

    def window(self, now: float, hours: int = 24) -> dict[str, Any]:
        """The `GET /history` answer: the last `hours` hours before `now`, oldest first."""
        cutoff = now - hours * 3600
        return {"interval_seconds": INTERVAL_SECONDS, "now": now,
                "samples": [s.as_dict() for s in self.samples() if s.t >= minute_of(cutoff)],
                "alerts": [a.as_dict() for a in self.alerts() if a.t >= cutoff]}

    # -- the file -----------------------------------------------------------------------

    def to_file(self) -> dict[str, Any]:
        """The ring as compact JSON-ready data: samples as rows, in the order of `SAMPLE_COLUMNS`."""
        return {"version": FILE_VERSION, "interval_seconds": INTERVAL_SECONDS,
                "columns": list(SAMPLE_COLUMNS), "samples": [_row(s) for s in self.samples()],
                "alerts": [[a.t, a.name, a.severity, a.message] for a in self.alerts()]}

    @classmethod
    def from_file(cls, data: object, now: float, capacity: int = MAX_SAMPLES) -> HistoryRing:
        """The ring `to_file` wrote, without what is older than 24 h before `now` (or after it).

        HistoryFileError when anything in it is not what `to_file` writes.
        """
        if not isinstance(data, dict):
            raise HistoryFileError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("version") != FILE_VERSION:
            raise HistoryFileError(f"version {data.get('version')!r} is not {FILE_VERSION}")
        if data.get("columns") != list(SAMPLE_COLUMNS):
            raise HistoryFileError("its columns are not the ones this version writes")
        rows, alerts = data.get("samples"), data.get("alerts")
        if not isinstance(rows, list) or not isinstance(alerts, list):
            raise HistoryFileError("samples and alerts must be lists")
        if len(rows) > capacity or len(alerts) > MAX_ALERTS:
            raise HistoryFileError(f"{len(rows)} samples and {len(alerts)} alerts: more than the ring holds")
        ring = cls(capacity)
        latest = now + INTERVAL_SECONDS  # a sample from the future: the clock was wrong when written
        for index, row in enumerate(rows):
            sample = _sample_of(row, index)
            if sample.t <= latest:
                ring.add(sample)
        for index, item in enumerate(alerts):
            alert = _alert_of(item, index)
            if alert.t <= latest:
                ring.add_alert(alert)
        ring.drop_before(now - WINDOW_SECONDS)
        return ring


SAMPLE_COLUMNS = ("t", "state", "health", "health_min", "fps", "fps_configured", "frames",
                  "frames_dropped", "errors", "disk_free_bytes", "states")


def _row(s: MinuteSample) -> list[Any]:
    return [s.t, s.state, s.health, s.health_min, s.fps, s.fps_configured, s.frames, s.frames_dropped,
            dict(s.errors), s.disk_free_bytes, list(s.states)]


def _number(value: object, what: str, *, optional: bool = False, low: float = 0.0,
            high: float = 1e15) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HistoryFileError(f"{what}: {value!r} is not a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise HistoryFileError(f"{what}: {value!r} is outside {low}..{high}")
    return float(value)


def _count(value: object, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**53:
        raise HistoryFileError(f"{what}: {value!r} is not a count")
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS or not value.isprintable():
        raise HistoryFileError(f"{what}: {value!r} is not a name")
    return value


def _state(value: object, what: str) -> str:
    if value not in STATES:
        raise HistoryFileError(f"{what}: {value!r} is not a state ({', '.join(STATES)})")
    return str(value)


def _sample_of(row: object, index: int) -> MinuteSample:
    where = f"sample {index}"
    if not isinstance(row, list) or len(row) != len(SAMPLE_COLUMNS):
        raise HistoryFileError(f"{where}: not a row of {len(SAMPLE_COLUMNS)} values")
    t, state, health, health_min, fps, fps_configured, frames, dropped, errors, disk, states = row
    if not isinstance(errors, dict) or len(errors) > MAX_CATEGORIES:
        raise HistoryFileError(f"{where}: errors must be an object of at most {MAX_CATEGORIES} counts")
    if not isinstance(states, list) or not 0 < len(states) <= len(STATES):
        raise HistoryFileError(f"{where}: states must be a short list")
    t_value = _number(t, f"{where} t", high=2**40)
    assert t_value is not None
    if t_value != minute_of(t_value):
        raise HistoryFileError(f"{where}: t {t_value} is not the start of a minute")
    configured = _number(fps_configured, f"{where} fps_configured", high=1000)
    assert configured is not None
    return MinuteSample(
        t=t_value, state=_state(state, f"{where} state"),
        health=_number(health, f"{where} health", optional=True, high=100),
        health_min=_number(health_min, f"{where} health_min", optional=True, high=100),
        fps=_number(fps, f"{where} fps", optional=True, high=1000), fps_configured=configured,
        frames=_count(frames, f"{where} frames") or 0,
        frames_dropped=_count(dropped, f"{where} frames_dropped") or 0,
        errors={_name(k, f"{where} error category"): _count(v, f"{where} errors[{k!r}]") or 0
                for k, v in errors.items()},
        disk_free_bytes=_count(disk, f"{where} disk_free_bytes", optional=True),
        states=tuple(_state(s, f"{where} states") for s in states),
    )


def _alert_of(item: object, index: int) -> HistoryAlert:
    where = f"alert {index}"
    if not isinstance(item, list) or len(item) != 4:
        raise HistoryFileError(f"{where}: not a row of 4 values")
    t, name, severity, message = item
    t_value = _number(t, f"{where} t", high=2**40)
    assert t_value is not None
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise HistoryFileError(f"{where}: message is not a text of at most {MAX_MESSAGE_CHARS} characters")
    return HistoryAlert(t_value, _name(name, f"{where} name"), _name(severity, f"{where} severity"), message)


class MinuteSampler:
    """Turns a stream of snapshots into minute samples on `ring`; one thread calls `observe`."""

    def __init__(self, ring: HistoryRing) -> None:
        self.ring = ring
        self._minute: float | None = None
        # The process's counters start at zero: the first minute counts from there.
        self._base = Counters()
        self._fps: list[float] = []
        self._health: list[float] = []
        self._states: list[str] = []

    def __repr__(self) -> str:
        return f"<MinuteSampler minute={self._minute} ring={self.ring!r}>"

    def observe(self, snap: StatusSnapshot, now: float) -> MinuteSample | None:
        """Take in `snap` seen at `now`; answers the sample of the minute this closed, if any.

        The first look in a new minute ends the minute before (its counters are that
        minute's end) and starts the new one.
        """
        minute = minute_of(now)
        closed = None
        if self._minute is not None and minute > self._minute:
            self._note(snap)
            closed = self._close(snap)
        if self._minute is None or minute > self._minute:
            self._minute = minute
        self._note(snap)
        return closed

    def flush(self, snap: StatusSnapshot, now: float) -> MinuteSample:
        """Close the minute under way at `now` (the daemon stops); its start is its `t`."""
        if self._minute is None:  # stopped before the first look: the minute is still `now`'s
            self._minute = minute_of(now)
        self._note(snap)
        return self._close(snap)

    def note_state(self, state: str) -> None:
        """A state the unit entered (StateChanged): seen in this minute even between two looks."""
        if not self._states or self._states[-1] != state:
            self._states.append(state)

    def _note(self, snap: StatusSnapshot) -> None:
        if snap.fps_achieved is not None and math.isfinite(snap.fps_achieved):
            self._fps.append(snap.fps_achieved)
        if snap.health_score is not None:
            self._health.append(snap.health_score)
        if not self._states or self._states[-1] != snap.state:
            self._states.append(snap.state)

    def _close(self, snap: StatusSnapshot) -> MinuteSample:
        """The minute under way ends with `snap`: its state, health and counters are the minute's end."""
        assert self._minute is not None
        counters = Counters.of(snap)
        frames, dropped, errors = counters.since(self._base)
        last = snap
        disk = last.disk.free_bytes if last.disk is not None else None
        sample = MinuteSample(
            t=self._minute, state=last.state, health=last.health_score,
            health_min=min(self._health) if self._health else None,
            fps=round(sum(self._fps) / len(self._fps), 2) if self._fps else None,
            fps_configured=float(last.configured_fps), frames=frames, frames_dropped=dropped,
            errors=errors, disk_free_bytes=disk, states=tuple(dict.fromkeys(self._states)),
        )
        self.ring.add(sample)
        self._base = counters
        self._fps, self._health, self._states = [], [], []
        return sample


def recent_alerts(alerts: Iterable[Alert]) -> list[HistoryAlert]:
    return [HistoryAlert.of(a) for a in alerts]
