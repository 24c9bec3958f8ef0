"""Prometheus metrics: the controller's status rendered in the text exposition format.

Names follow Prometheus conventions: a `vigil_` prefix, base units (bytes, seconds),
`_total` on counters. Counters come from the controller's lifetime totals, so they only
reset when the daemon restarts. Parts other components add to the status (`health`,
`disk`, `merges`, `fps_achieved`) are exported when present and left out when not.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.alerts import ALERT_KINDS
from controller.ledger import DEFAULT_BUDGETS
from states.machine import STATE_NAMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FPS_WINDOW_SECONDS = 10.0
FPS_MIN_SPAN_SECONDS = 0.5

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


def health_score(status: Mapping[str, Any]) -> float | None:
    """The health score (0-100) in `status`, whether given as a number or as {"score": n}."""
    health = status.get("health")
    if isinstance(health, Mapping):
        health = health.get("score")
    if isinstance(health, int | float) and not isinstance(health, bool):
        return float(health)
    return None


class FpsMeter:
    """Frames per second achieved, from the frames-captured counter seen at each call.

    The rate spans the samples of the last `window_seconds`; a counter that went down (a new
    recording run) starts the window again. Safe to share between request threads.
    """

    def __init__(
        self, window_seconds: float = FPS_WINDOW_SECONDS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def update(self, frames_captured: int) -> float | None:
        """The rate over the window ending now; None until samples span FPS_MIN_SPAN_SECONDS."""
        now = self._clock()
        samples = self._samples
        with self._lock:  # requests are answered on several threads at once
            if samples and frames_captured < samples[-1][1]:
                samples.clear()
            samples.append((now, frames_captured))
            while len(samples) > 2 and samples[1][0] <= now - self.window_seconds:
                samples.popleft()
            first_time, first_count = samples[0]
        span = now - first_time
        if span < FPS_MIN_SPAN_SECONDS:
            return None
        return (frames_captured - first_count) / span


@dataclass
class Exposition:
    """Metric families in the Prometheus text format, in the order they were added."""

    lines: list[str] = field(default_factory=list)

    def add(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One family: HELP and TYPE lines, then a line per sample."""
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: Labels | None = None) -> None:
        self.add(name, "gauge", help_text, [(labels or {}, value)])

    def counter(self, name: str, help_text: str, value: float, labels: Labels | None = None) -> None:
        self.add(name, "counter", help_text, [(labels or {}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(
    status: Mapping[str, Any],
    *,
    fps_achieved: float | None = None,
    alert_counts: Mapping[str, int] | None = None,
    disk: Mapping[str, Any] | None = None,
    version: str = "",
) -> str:
    """The metrics page for one status snapshot (see Controller.status)."""
    out = Exposition()
    out.gauge("vigil_info", "Constant 1; the labels say which camera backend and vigil version run.",
              1, {"backend": str(status.get("backend", "")), "version": version})
    state = status.get("state")
    out.add("vigil_state", "gauge", "1 for the state the recorder is in, 0 for the others.",
            [({"state": name}, 1 if name == state else 0) for name in STATE_NAMES])
    since = status.get("since")
    if isinstance(since, int | float):
        out.gauge("vigil_state_since_timestamp_seconds",
                  "When the recorder entered its current state, as a Unix timestamp.", since)

    totals = status.get("totals") or {}
    for key, help_text in (
        ("frames_captured", "Frames the camera delivered since the daemon started."),
        ("frames_recorded", "Frames written into recordings since the daemon started."),
        ("frames_dropped", "Frames dropped because the encoder fell behind (queue full)."),
        ("frames_invalid", "Frames refused by validation (bad shape, type or timestamp)."),
        ("segments_closed", "Recording segments closed and made durable on disk."),
        ("bytes_written", "Bytes of video written into recording segments."),
    ):
        out.counter(f"vigil_{key}_total", help_text, _number(totals.get(key, status.get(key, 0))))

    errors = _numbers(status.get("errors"))
    out.add("vigil_errors_total", "counter", "Errors reported, by category (error ledger).",
            [({"category": c}, errors.get(c, 0)) for c in sorted(set(DEFAULT_BUDGETS) | set(errors))])
    faults = _numbers(status.get("faults"))
    out.add("vigil_faults_total", "counter",
            "Faults: a category's error budget spent within its window, by category.",
            [({"category": c}, faults.get(c, 0)) for c in sorted(set(DEFAULT_BUDGETS) | set(faults))])
    out.counter("vigil_recovery_attempts_total", "Recovery attempts made after faults.",
                _number(status.get("recoveries_attempted", 0)))
    counts = alert_counts or {}
    out.counter("vigil_recoveries_total", "Recoveries: recording resumed after a fault.",
                counts.get("recovery", 0))
    out.add("vigil_alerts_total", "counter", "Alerts recorded, by kind.",
            [({"kind": kind}, counts.get(kind, 0)) for kind in ALERT_KINDS])
    out.gauge("vigil_abandoned_calls", "Hung hardware calls abandoned since the daemon started.",
              _number(status.get("abandoned_calls", 0)))

    merges = status.get("merges")
    if isinstance(merges, Mapping):
        merged = _numbers(merges)
        if merged:
            out.add("vigil_merges_total", "counter", "Hourly merges, by outcome.",
                    [({"outcome": k}, v) for k, v in sorted(merged.items())])
    elif isinstance(merges, int | float) and not isinstance(merges, bool):
        out.counter("vigil_merges_total", "Hours merged into one file.", merges)

    disk = disk if disk is not None else _mapping(status.get("disk"))
    if disk:
        root = {"root": str(disk.get("path") or disk.get("root") or status.get("root") or "")}
        for key, name, help_text in (
            ("free_bytes", "vigil_disk_free_bytes", "Free bytes on the filesystem of the recording root."),
            ("total_bytes", "vigil_disk_size_bytes", "Size of the filesystem of the recording root."),
        ):
            if _is_number(disk.get(key)):
                out.gauge(name, help_text, float(disk[key]), root)
        for key, name, help_text in (
            ("reserve_bytes", "vigil_disk_reserve_bytes",
             "Free space retention keeps on the filesystem of the recording root."),
            ("write_bytes_per_second", "vigil_disk_write_bytes_per_second",
             "Footage written per second, averaged over the last minute."),
            ("seconds_until_reserve", "vigil_disk_seconds_until_reserve",
             "Seconds until free space reaches the reserve at the current write rate."),
        ):
            if _is_number(disk.get(key)):
                out.gauge(name, help_text, float(disk[key]), root)
        if isinstance(disk.get("is_low"), bool):
            out.gauge("vigil_disk_low", "1 when free space is below the reserve even after retention.",
                      1 if disk["is_low"] else 0, root)

    score = health_score(status)
    if score is not None:
        out.gauge("vigil_health_score", "Health score from 0 (failing) to 100 (all well).", score)
    configured = status.get("configured_fps")
    if _is_number(configured):
        out.gauge("vigil_fps_configured", "Frames per second the camera is configured for.", configured)
    if fps_achieved is not None:
        out.gauge("vigil_fps_achieved", "Frames per second the camera delivers, over the last seconds.",
                  fps_achieved)
    return out.text()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> float:
    return float(value) if _is_number(value) else 0.0  # type: ignore[arg-type]


def _numbers(value: object) -> dict[str, float]:
    """The numeric entries of a mapping such as {"camera_lost": 2}."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if _is_number(v)}


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape_label(str(value))}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
