"""Prometheus metrics: the controller's status snapshot in the text exposition format.

Names follow Prometheus conventions: a `vigil_` prefix, base units (bytes, seconds),
`_total` on counters. Counters come from the controller's lifetime totals, so they only
reset when the daemon restarts. Parts not measured yet (health, disk, fps achieved) are
left out rather than invented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.core.alerts import ALERT_KINDS
from controller.core.ledger import DEFAULT_BUDGETS
from states.machine import STATE_NAMES

if TYPE_CHECKING:
    from controller.core.snapshot import StatusSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MERGE_OUTCOMES = ("merged", "failed", "aborted", "deferred")

Labels = Mapping[str, str]
# A surface that keeps counters of its own (MQTT) adds its families to the page with one of these.
MetricsHook = Callable[["Exposition"], None]
Sample = tuple[Labels, float]


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


def render_metrics(snap: StatusSnapshot, *, version: str = "",
                   disk_now: tuple[str, int, int] | None = None, hooks: Iterable[MetricsHook] = ()) -> str:
    """The metrics page for one status snapshot, then what each of `hooks` adds.

    `disk_now` (root, free bytes, size in bytes) stands in for the disk sample before the
    housekeeper's first one.
    """
    out = Exposition()
    out.gauge("vigil_info", "Constant 1; the labels say which camera backend and vigil version run.",
              1, {"backend": snap.backend, "version": version})
    out.add("vigil_state", "gauge", "1 for the state the recorder is in, 0 for the others.",
            [({"state": name}, 1 if name == snap.state else 0) for name in STATE_NAMES])
    out.gauge("vigil_state_since_timestamp_seconds",
              "When the recorder entered its current state, as a Unix timestamp.", snap.since)

    totals = snap.totals
    for key, value, help_text in (
        ("frames_captured", totals.frames_captured, "Frames the camera delivered since the daemon started."),
        ("frames_recorded", totals.frames_recorded,
         "Frames written into recordings since the daemon started."),
        ("frames_dropped", totals.frames_dropped,
         "Frames dropped because the encoder fell behind (queue full)."),
        ("frames_invalid", totals.frames_invalid,
         "Frames refused by validation (bad shape, type or timestamp)."),
        ("frames_decimated", totals.frames_decimated,
         "Frames skipped on purpose by adaptive quality (a lower frame rate), not dropped."),
        ("segments_closed", totals.segments_closed, "Recording segments closed and made durable on disk."),
        ("bytes_written", totals.bytes_written, "Bytes of video written into recording segments."),
    ):
        out.counter(f"vigil_{key}_total", help_text, value)

    errors, faults = snap.errors, snap.faults
    out.add("vigil_errors_total", "counter", "Errors reported, by category (error ledger).",
            [({"category": c}, errors.get(c, 0)) for c in sorted(set(DEFAULT_BUDGETS) | set(errors))])
    out.add("vigil_faults_total", "counter",
            "Faults: a category's error budget spent within its window, by category.",
            [({"category": c}, faults.get(c, 0)) for c in sorted(set(DEFAULT_BUDGETS) | set(faults))])
    out.counter("vigil_recovery_attempts_total", "Recovery attempts made after faults.",
                snap.recoveries_attempted)
    counts = snap.alert_counts
    out.counter("vigil_recoveries_total", "Recoveries: recording resumed after a fault.",
                counts.get("recovery", 0))
    out.add("vigil_alerts_total", "counter", "Alerts recorded, by kind.",
            [({"kind": kind}, counts.get(kind, 0)) for kind in ALERT_KINDS])
    out.gauge("vigil_abandoned_calls", "Hung hardware calls abandoned since the daemon started.",
              len(snap.abandoned_calls))
    out.add("vigil_merges_total", "counter", "Hourly merges, by outcome.",
            [({"outcome": k}, snap.merges.get(k, 0)) for k in MERGE_OUTCOMES])
    out.add("vigil_events_dropped_total", "counter",
            "Events a slow subscriber (MQTT, a browser, ...) could not take and lost, by subscriber.",
            [({"subscriber": s.name}, s.dropped) for s in snap.events])

    disk = snap.disk
    if disk is None and disk_now is not None:
        path, free, size = disk_now
        out.gauge("vigil_disk_free_bytes", "Free bytes on the filesystem of the recording root.",
                  free, {"root": path})
        out.gauge("vigil_disk_size_bytes", "Size of the filesystem of the recording root.",
                  size, {"root": path})
    if disk is not None:
        root = {"root": disk.path}
        out.gauge("vigil_disk_free_bytes", "Free bytes on the filesystem of the recording root.",
                  disk.free_bytes, root)
        out.gauge("vigil_disk_size_bytes", "Size of the filesystem of the recording root.",
                  disk.total_bytes, root)
        out.gauge("vigil_disk_reserve_bytes",
                  "Free space retention keeps on the filesystem of the recording root.",
                  disk.reserve_bytes, root)
        out.gauge("vigil_disk_write_bytes_per_second",
                  "Footage written per second, averaged over the last minute.",
                  disk.write_bytes_per_second, root)
        if disk.seconds_until_reserve is not None:
            out.gauge("vigil_disk_seconds_until_reserve",
                      "Seconds until free space reaches the reserve at the current write rate.",
                      disk.seconds_until_reserve, root)
        out.gauge("vigil_disk_low", "1 when free space is below the reserve even after retention.",
                  1 if disk.is_low else 0, root)

    if snap.health_score is not None:
        out.gauge("vigil_health_score", "Health score from 0 (failing) to 100 (all well).", snap.health_score)
    out.gauge("vigil_fps_configured", "Frames per second the camera is configured for.", snap.configured_fps)
    if snap.fps_achieved is not None:
        out.gauge("vigil_fps_achieved", "Frames per second the camera delivers, over the last seconds.",
                  snap.fps_achieved)
    if snap.quality is not None:
        q = snap.quality
        out.gauge("vigil_quality_level", "Adaptive quality's rung: 0 records as configured, higher "
                  "records less of each frame (lower rate or size).", q.level)
        out.gauge("vigil_fps_recorded", "Frames per second recorded at the current quality step.",
                  q.fps)
    for hook in tuple(hooks):
        hook(out)
    return out.text()


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
