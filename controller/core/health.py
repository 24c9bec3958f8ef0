"""The health score: one number from 0 to 100 built from measured parts, and why it is low.

score = min(state cap, 100 - sum of penalties), never below 0. Each penalty grows linearly
from 0 at its threshold to its full weight:

| part | full penalty when | weight |
| --- | --- | --- |
| frame rate | achieved fps is 0 (none at the configured rate) | 30 |
| drops | 10 % of captured frames dropped or invalid (last window) | 20 |
| errors | 30 errors a minute, all categories (last window) | 20 |
| disk | free space on the recording root falls from 10 % to 0 % | 15 |
| memory | the process uses from 25 % to 50 % of the machine's memory | 5 |
| temperature | CPU temperature from 70 C to 85 C (where readable) | 10 |
| decimated | 2/3 of captured frames skipped on purpose by adaptive quality (30 -> 10 fps) | 5 |
| upload | oldest file waiting for upload from 10 to 60 min old; all at once when stopped | 10 |

Frames the adaptive-quality ladder skips on purpose (`frames_decimated`) are not drops: they
cost the small `decimated` part, not the `drops` part, since every second is still recorded.

State caps: recording 100, idle 60 (not recording, by choice), recovering 40, reset 40,
critical 10. The frame-rate, drop and error parts count only while recording. The upload
part counts only where upload is on; "stopped" is a permanent error (no such bucket, access
denied, ...) that holds uploading until the config or the account is fixed.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from loguru import logger

if TYPE_CHECKING:
    from controller.core.snapshot import UploadBacklog
    from hw.pipeline import PipelineStats

STATE_CAP = {"recording": 100, "idle": 60, "recovering": 40, "reset": 40, "critical": 10}
FPS_WEIGHT = 30.0
DROP_WEIGHT = 20.0
DROP_FULL_FRACTION = 0.10
ERROR_WEIGHT = 20.0
ERRORS_FULL_PER_MINUTE = 30.0
DISK_WEIGHT = 15.0
DISK_LOW_FRACTION = 0.10
MEMORY_WEIGHT = 5.0
MEMORY_FROM, MEMORY_TO = 0.25, 0.50
TEMPERATURE_WEIGHT = 10.0
TEMPERATURE_FROM_C, TEMPERATURE_TO_C = 70.0, 85.0
DECIMATED_WEIGHT = 5.0
DECIMATED_FULL_FRACTION = 2 / 3
UPLOAD_WEIGHT = 10.0
# Footage leaves the unit within about a segment (60 s) of closing while the endpoint answers;
# ten minutes behind is a real backlog, an hour behind is footage at risk.
UPLOAD_BEHIND_FROM_SECONDS, UPLOAD_BEHIND_FULL_SECONDS = 600.0, 3600.0
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass(frozen=True)
class HealthInputs:
    """What was measured over the last window."""

    state: str
    configured_fps: float
    achieved_fps: float
    drop_fraction: float
    errors_per_minute: float
    disk_free_fraction: float | None
    memory_fraction: float
    temperature_c: float | None
    decimated_fraction: float = 0.0  # of captured frames, skipped on purpose (adaptive quality)
    upload_behind_seconds: float | None = None  # age of the oldest pending upload; None: upload off
    upload_stopped_by: str | None = None  # the permanent error that stops uploading, if any


@dataclass(frozen=True)
class Health:
    """The score, a one-line reason, and each part's penalty."""

    score: int
    reason: str
    penalties: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {"score": self.score, "reason": self.reason,
                "penalties": {k: round(v, 1) for k, v in self.penalties.items()}}


def _ramp(value: float, start: float, full: float) -> float:
    """0 at `start`, 1 at `full` (either direction), clamped."""
    if full == start:
        return 1.0 if value >= full else 0.0
    return min(1.0, max(0.0, (value - start) / (full - start)))


def score(m: HealthInputs) -> Health:
    penalties: dict[str, float] = {}
    if m.state == "recording" and m.configured_fps > 0:
        penalties["fps"] = FPS_WEIGHT * _ramp(m.achieved_fps, m.configured_fps, 0.0)
        penalties["drops"] = DROP_WEIGHT * _ramp(m.drop_fraction, 0.0, DROP_FULL_FRACTION)
        penalties["errors"] = ERROR_WEIGHT * _ramp(m.errors_per_minute, 0.0, ERRORS_FULL_PER_MINUTE)
        penalties["decimated"] = DECIMATED_WEIGHT * _ramp(m.decimated_fraction, 0.0,
                                                          DECIMATED_FULL_FRACTION)
    if m.disk_free_fraction is not None:
        penalties["disk"] = DISK_WEIGHT * _ramp(m.disk_free_fraction, DISK_LOW_FRACTION, 0.0)
    penalties["memory"] = MEMORY_WEIGHT * _ramp(m.memory_fraction, MEMORY_FROM, MEMORY_TO)
    if m.temperature_c is not None:
        penalties["temperature"] = TEMPERATURE_WEIGHT * _ramp(
            m.temperature_c, TEMPERATURE_FROM_C, TEMPERATURE_TO_C)
    if m.upload_behind_seconds is not None:
        penalties["upload"] = UPLOAD_WEIGHT * (1.0 if m.upload_stopped_by is not None else _ramp(
            m.upload_behind_seconds, UPLOAD_BEHIND_FROM_SECONDS, UPLOAD_BEHIND_FULL_SECONDS))
    cap = STATE_CAP.get(m.state, 0)
    value = max(0, min(cap, round(100 - sum(penalties.values()))))
    worst = max(penalties.items(), key=lambda kv: kv[1], default=("", 0.0))
    if cap < 100 and 100 - cap >= worst[1]:
        reason = f"state is {m.state}"
    elif worst[1] >= 1.0:
        reason = _describe(worst[0], m)
    else:
        reason = "ok"
    return Health(value, reason, penalties)


def _describe(part: str, m: HealthInputs) -> str:
    if part == "fps":
        return f"recording {m.achieved_fps:.1f} of {m.configured_fps:g} fps"
    if part == "drops":
        return f"{m.drop_fraction:.0%} of frames dropped or invalid"
    if part == "errors":
        return f"{m.errors_per_minute:.0f} errors a minute"
    if part == "disk":
        return f"disk {m.disk_free_fraction:.0%} free"
    if part == "memory":
        return f"using {m.memory_fraction:.0%} of memory"
    if part == "decimated":
        return f"{m.decimated_fraction:.0%} of frames skipped by adaptive quality"
    if part == "upload":
        if m.upload_stopped_by is not None:
            return f"upload stopped by {m.upload_stopped_by}"
        return f"upload {(m.upload_behind_seconds or 0.0) / 60:.0f} min behind"
    return f"CPU at {m.temperature_c:.0f} C"


def read_temperature_c(zone: Path = THERMAL_ZONE) -> float | None:
    """The CPU temperature where the kernel exposes it (a Pi does), else None."""
    try:
        return int(zone.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


WINDOW_SECONDS = 10.0


class HealthSampler:
    """Turns the controller's counters into HealthInputs over a sliding window, once a second."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int, int, int]] = deque()
        self._stats: PipelineStats | None = None
        self._process = psutil.Process()
        self._memory_total = psutil.virtual_memory().total
        self.achieved_fps: float | None = None
        self.inputs: HealthInputs | None = None
        # Reads of /proc that failed (EMFILE when clients exhaust the descriptors, ...): the
        # score goes on with the last value read, and the failure is logged once each way.
        self.read_failures = 0
        self._memory_fraction = 0.0
        self._read_failing = False

    def sample(self, *, state: str, configured_fps: float, stats: PipelineStats | None,
               errors: int, root: Path | None, upload: UploadBacklog | None = None) -> Health:
        """The health now, from the current run's counters and the errors counted so far."""
        now = time.monotonic()
        if stats is not self._stats:
            self._samples.clear()
            self._stats = stats
        captured = stats.frames_captured if stats else 0
        bad = stats.frames_dropped + stats.frames_invalid if stats else 0
        decimated = stats.frames_decimated if stats else 0
        self._samples.append((now, captured, bad, errors, decimated))
        while len(self._samples) > 1 and now - self._samples[0][0] > WINDOW_SECONDS:
            self._samples.popleft()
        t0, c0, b0, e0, d0 = self._samples[0]
        span = now - t0
        if stats is not None and span >= 1.0:
            self.achieved_fps = (captured - c0) / span
        elif stats is None:
            self.achieved_fps = None
        fresh = captured - c0 + (bad - b0)
        self.inputs = HealthInputs(
            state=state,
            configured_fps=configured_fps,
            achieved_fps=configured_fps if self.achieved_fps is None else self.achieved_fps,
            drop_fraction=(bad - b0) / fresh if fresh > 0 else 0.0,
            errors_per_minute=(errors - e0) * 60.0 / span if span >= 1.0 else 0.0,
            disk_free_fraction=_free_fraction(root),
            memory_fraction=self._read_memory_fraction(),
            temperature_c=read_temperature_c(),
            decimated_fraction=(decimated - d0) / (captured - c0) if captured > c0 else 0.0,
            upload_behind_seconds=upload.oldest_pending_seconds if upload is not None else None,
            upload_stopped_by=upload.stopped_by if upload is not None else None,
        )
        return score(self.inputs)

    def _read_memory_fraction(self) -> float:
        """This process's share of the machine's memory; the last one read if /proc fails."""
        try:
            fraction: float = self._process.memory_info().rss / self._memory_total
        except (OSError, psutil.Error) as err:
            self.read_failures += 1
            if not self._read_failing:
                self._read_failing = True
                logger.warning("health: cannot read this process's memory use ({}); the score "
                               "uses the last value until it can", err)
            return self._memory_fraction
        if self._read_failing:
            self._read_failing = False
            logger.info("health: memory use readable again after {} failed read(s)", self.read_failures)
        self._memory_fraction = fraction
        return fraction


def _free_fraction(root: Path | None) -> float | None:
    if root is None:
        return None
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return None
    return usage.free / usage.total if usage.total else None
