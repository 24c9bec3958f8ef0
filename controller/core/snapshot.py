"""The status snapshot: everything the rest of the daemon may know of the recorder, frozen.

The controller thread builds a new one every loop iteration and swaps it in whole; the API,
metrics, health, sd_notify, `vigil status`, the web page and MQTT read only this. Nothing
outside the controller thread touches the Unit, its pipeline or the hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.core.alerts import Alert
    from controller.core.events import SubscriberStats
    from controller.core.health import Health
    from controller.storage.diskmon import DiskStatus
    from hw.camera import Frame


@dataclass(frozen=True, slots=True)
class RunCounters:
    """Counters of recording: of the current run, or totalled over the daemon's life."""

    frames_captured: int = 0
    frames_recorded: int = 0
    frames_dropped: int = 0
    frames_invalid: int = 0
    # Skipped on purpose by the adaptive-quality ladder (frame-rate decimation): not dropped.
    frames_decimated: int = 0
    segments_closed: int = 0
    bytes_written: int = 0

    def __add__(self, other: RunCounters) -> RunCounters:
        return RunCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class QualityStatus:
    """Where the adaptive-quality ladder stands (hw.adaptive): the rung and what it records."""

    level: int  # 0: the configured quality
    levels: int  # rungs on the ladder, the top one included
    fps: float
    width: int
    height: int
    describe: str
    steps: int  # steps taken during this run
    last_change: str  # the last step's measured cause and change, "" before any

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "levels": self.levels, "fps": self.fps, "width": self.width,
                "height": self.height, "describe": self.describe, "steps": self.steps,
                "last_change": self.last_change}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A transition a guard refused: which trigger, why, when (wall clock)."""

    trigger: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class UploadBacklog:
    """Closed footage not yet verified in the bucket, and whether the uploader gets through."""

    files: int
    bytes: int
    oldest_pending_seconds: float  # how long the oldest pending file has waited; 0 when none
    in_flight: int = 0  # files being uploaded now
    started: int = 0  # pending files with a multipart upload under way (resumable)
    failed: int = 0  # pending files whose latest attempt failed
    endpoint: str = "ok"  # "ok", "failing" (retried with backoff) or "stopped" (permanent error)
    error: str | None = None  # the alert out for the current failure, if any
    stopped_by: str | None = None  # the permanent error's code (NoSuchBucket, AccessDenied, ...)
    fix: str | None = None  # what to change so a stopped upload can go on

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """One consistent look at the recorder, taken on the controller thread."""

    state: str
    since: float  # wall clock when the state was entered
    heartbeat: float | None  # monotonic time of the loop iteration that built this; None before run()
    backend: str
    configured_fps: float
    fps_achieved: float | None
    run: RunCounters
    totals: RunCounters
    errors: Mapping[str, int]
    faults: Mapping[str, int]
    recovery_attempts: int
    recoveries_attempted: int
    root: Path | None  # where recording goes now (after any fallback)
    primary_root: Path
    footage_roots: tuple[Path, ...]
    current_segment: Path | None
    open_segments: tuple[Path, ...]  # the open segment and those of abandoned pipelines
    abandoned_calls: tuple[str, ...]
    autostart: bool
    last_refusal: Refusal | None
    refusals_since_state: tuple[Refusal, ...]
    health: Health | None
    disk: DiskStatus | None
    alerts: tuple[Alert, ...]
    alert_counts: Mapping[str, int]
    merges: Mapping[str, int]
    events: tuple[SubscriberStats, ...]
    latest_frame: Frame | None
    no_frame_reason: str  # why there is no latest frame, when there is none
    is_running: bool
    public_key: str | None = None  # the key footage manifests are signed with (hex), if any
    quality: QualityStatus | None = None  # None: nothing adapts (not recording, or adaptation off)
    upload: UploadBacklog | None = None  # None when upload is off

    @property
    def is_recording(self) -> bool:
        return self.state == "recording"

    @property
    def health_score(self) -> float | None:
        return float(self.health.score) if self.health is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data: the shape `GET /status` answers."""
        return {
            "state": self.state,
            "since": self.since,
            "backend": self.backend,
            "public_key": self.public_key,
            "configured_fps": self.configured_fps,
            "fps_achieved": self.fps_achieved,
            **self.run.as_dict(),
            "totals": self.totals.as_dict(),
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "recovery_attempts": self.recovery_attempts,
            "recoveries_attempted": self.recoveries_attempted,
            "root": str(self.root) if self.root is not None else None,
            "primary_root": str(self.primary_root),
            "current_segment": str(self.current_segment) if self.current_segment else None,
            "abandoned_calls": len(self.abandoned_calls),
            "autostart": self.autostart,
            "last_refusal": self.last_refusal.reason if self.last_refusal else None,
            "health": self.health.as_dict() if self.health is not None else None,
            "disk": self.disk.as_dict() if self.disk is not None else None,
            "alerts": [alert.as_dict() for alert in self.alerts],
            "merges": dict(self.merges),
            "events_dropped": {s.name: s.dropped for s in self.events},
            "quality": self.quality.as_dict() if self.quality is not None else None,
            "upload": self.upload.as_dict() if self.upload is not None else None,
        }
