"""Adaptive quality: the ladder of cheaper ways to record, and when to take a step on it.

When the encoder cannot keep up, the bounded frame queue fills and frames are dropped at
random: holes in the footage exactly when the unit is busiest. The ladder trades quality
for time coverage instead, in a fixed order (README "Adaptive quality"):

1. the encoder's own cost: libx264's preset towards `preset_floor` one preset at a time,
   then crf up to `crf_ceiling` in one step (the hardware encoder: its bit rate down to
   `bitrate_floor_fraction`);
2. the frame rate, by even decimation (keep one frame in 2, then 3, ...: 30 -> 15 -> 10)
   while the rate stays at or above `fps_floor`;
3. the resolution, scaled in the encoder path (3/4, then 1/2, ...) while the height stays
   at or above `height_floor`.

`QualityGovernor` decides from `LoadSample`s: down one step at once when frames are
dropped, and when the queue stays above its high mark, the encode time per frame stays
above the frame interval, the CPU is too hot or the firmware reports throttling for
`down_after_seconds`; up one step only after `up_after_seconds` of calm with headroom
(the encode time the step up would need is at most `up_headroom` of the interval). A step
up that has to be taken back before it held (half an hour, or two calm periods if longer,
ending with the queue at its low mark) doubles the calm period asked before the next one,
so a constant load near the threshold, even one that fills the queue only slowly, costs a
few steps an hour, not one a minute; a queue that shrinks is draining what an earlier step
left and is no reason for another.

A camera that encodes itself (picamera2: its H264Encoder) has no frames for vigil to
re-encode, so `build_sensor_ladder` gives it the knobs that camera offers instead: its
encoder's bit rate (a new encoder, so a cut at a keyframe), the lores sampling rate of the
side checks, then the sensor's own frame rate (FrameDurationLimits: 30 -> 15 -> 10, the
frames are never made, so nothing is skipped). Its load shows as the packet queue's depth
and drops and as the encoder's lag: packets coming out later after their frame than the
first one did (`LoadSample.lag_seconds`).

Pure and clock-free: every time comes in with the sample, so tests drive it with a
simulated clock. The pipeline (hw/pipeline.py) measures and applies the steps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hw.camera import CameraMode
from hw.encoder import PRESETS

DECIMATIONS = (2, 3, 4, 5, 6)
SCALES = (0.75, 0.5, 0.375, 0.25)
TEMPERATURE_HYSTERESIS_C = 5.0
# After a change the queue needs a moment to drain before the next verdict means anything.
SETTLE_SECONDS = 2.0
# A step up taken back before it held counts as failed: the next one waits twice as long,
# up to MAX_UP_BACKOFF times `up_after_seconds`. It held after this many calm periods, but
# at least HELD_SECONDS (a load that fills a long queue slowly shows only after minutes),
# ending with the queue at its low mark.
FAILED_UP_PERIODS = 2.0
HELD_SECONDS = 1800.0
MAX_UP_BACKOFF = 64
CHANGES_KEPT = 100
# The encoder lag (a packet's arrival after its frame, beyond the first packet's) that counts
# as falling behind when it lasts `down_after_seconds`, and the most a step up tolerates.
LAG_HIGH_SECONDS = 0.5
LAG_CALM_SECONDS = 0.2
# The lores side stream's sampling rate steps down to this fraction, once.
LORES_SCALE = 0.5
THERMAL_ROOT = Path("/sys/class/thermal")
THROTTLE_READ_SECONDS = 10.0
# `vcgencmd get_throttled` bits that describe the present (the ones above 16 say "since boot").
THROTTLED_NOW = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled",
                 3: "soft temperature limit"}


@dataclass(frozen=True, slots=True)
class AdaptiveSpec:
    """What the configuration asks of adaptive quality (types only: defaults in the schema)."""

    enabled: bool
    preset_floor: str
    crf_ceiling: int
    bitrate_floor_fraction: float
    fps_floor: float
    height_floor: int
    queue_high_fraction: float
    queue_low_fraction: float
    down_after_seconds: float
    up_after_seconds: float
    up_headroom: float
    temperature_max_c: float


@dataclass(frozen=True, slots=True)
class QualityStep:
    """One rung of the ladder: how the encoder is set and which frames reach it."""

    level: int
    preset: str
    crf: int
    bit_rate_scale: float  # the hardware encoder's bit rate, as a fraction of the configured one
    decimation: int  # keep one frame in this many
    width: int
    height: int
    fps: float  # the recorded rate: the camera's over `decimation` (a packet camera: its sensor's)
    # A camera that encodes itself (picamera2): bit_rate_scale is its encoder's, fps its
    # sensor's frame rate, lores_fps the rate its side stream is checked at.
    packets: bool = False
    lores_fps: float = 0.0

    def encoder_mode(self) -> CameraMode:
        """The mode the encoder is opened in for this step."""
        return CameraMode(self.width, self.height, self.fps)

    def stream_differs(self, other: QualityStep) -> bool:
        """Whether going from `other` to this step changes the recorded stream's parameters."""
        return (self.width, self.height, self.fps) != (other.width, other.height, other.fps)

    def describe(self) -> str:
        if self.packets:
            lores = f"lores sampled at {self.lores_fps:g} fps, " if self.lores_fps else ""
            return (f"bitrate x{self.bit_rate_scale:g}, sensor {self.fps:g} fps, {lores}"
                    f"{self.width}x{self.height}")
        return (f"preset {self.preset} crf {self.crf}"
                + (f" bitrate x{self.bit_rate_scale:g}" if self.bit_rate_scale != 1.0 else "")
                + f", {self.fps:g} fps, {self.width}x{self.height}")

    def difference(self, other: QualityStep) -> str:
        """What changes from `other` to this step, in words: "fps 30 -> 15"."""
        parts = []
        if self.preset != other.preset:
            parts.append(f"preset {other.preset} -> {self.preset}")
        if self.crf != other.crf:
            parts.append(f"crf {other.crf} -> {self.crf}")
        if self.bit_rate_scale != other.bit_rate_scale:
            parts.append(f"bitrate x{other.bit_rate_scale:g} -> x{self.bit_rate_scale:g}")
        if self.fps != other.fps:
            parts.append(f"{'sensor ' if self.packets else ''}fps {other.fps:g} -> {self.fps:g}")
        if self.lores_fps != other.lores_fps:
            parts.append(f"lores sampling {other.lores_fps:g} -> {self.lores_fps:g} fps")
        if (self.width, self.height) != (other.width, other.height):
            parts.append(f"size {other.width}x{other.height} -> {self.width}x{self.height}")
        return ", ".join(parts) or "no change"


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def build_ladder(mode: CameraMode, *, preset: str, crf: int, hardware: bool,
                 spec: AdaptiveSpec) -> tuple[QualityStep, ...]:
    """The ladder for a camera mode, from the configured quality (level 0) down to the floors.

    With adaptation off the ladder is that one step.
    """
    top = QualityStep(0, preset, crf, 1.0, 1, mode.width, mode.height, mode.fps)
    steps = [top]
    if not spec.enabled:
        return tuple(steps)

    def add(**changes: object) -> None:
        steps.append(replace(steps[-1], level=len(steps), **changes))  # type: ignore[arg-type]

    if hardware:
        if spec.bitrate_floor_fraction < 1.0:
            add(bit_rate_scale=spec.bitrate_floor_fraction)
    else:
        floor = PRESETS.index(spec.preset_floor)
        for index in range(PRESETS.index(preset) - 1, floor - 1, -1):
            add(preset=PRESETS[index])
        if spec.crf_ceiling > crf:
            add(crf=spec.crf_ceiling)
    for divisor in DECIMATIONS:
        if mode.fps / divisor >= spec.fps_floor - 1e-9:
            add(decimation=divisor, fps=mode.fps / divisor)
    for scale in SCALES:
        width, height = _even(mode.width * scale), _even(mode.height * scale)
        if height >= spec.height_floor and height < steps[-1].height:
            add(width=width, height=height)
    return tuple(steps)


def build_sensor_ladder(mode: CameraMode, *, lores_fps: float, spec: AdaptiveSpec,
                        bitrate: bool = True,
                        rate_allowed: Callable[[float], bool] | None = None) -> tuple[QualityStep, ...]:
    """The ladder of a camera that encodes itself, from level 0 down to the floors.

    Its encoder's bit rate down to `bitrate_floor_fraction` (one step; none without a
    `bitrate` knob), the lores side stream's sampling rate halved (one step; none when the
    camera has no side stream, `lores_fps` 0), then the sensor's frame rate in the raw
    ladder's even divisions (30 -> 15 -> 10) down to `fps_floor`, those `rate_allowed` says
    the camera can run at. Its size is the sensor stream's and stays. With adaptation off
    the ladder is its top step.
    """
    top = QualityStep(0, "", 0, 1.0, 1, mode.width, mode.height, mode.fps, packets=True,
                      lores_fps=lores_fps)
    steps = [top]
    if not spec.enabled:
        return tuple(steps)

    def add(**changes: object) -> None:
        steps.append(replace(steps[-1], level=len(steps), **changes))  # type: ignore[arg-type]

    if bitrate and spec.bitrate_floor_fraction < 1.0:
        add(bit_rate_scale=spec.bitrate_floor_fraction)
    if lores_fps * LORES_SCALE >= 1.0:
        add(lores_fps=lores_fps * LORES_SCALE)
    for divisor in DECIMATIONS:
        fps = mode.fps / divisor
        if fps >= spec.fps_floor - 1e-9 and (rate_allowed is None or rate_allowed(fps)):
            add(fps=fps)
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The encoder's load over the last sample period, as the pipeline measured it."""

    at: float  # monotonic seconds at the end of the period
    queue_depth: int  # frames waiting for the encoder now
    queue_size: int
    dropped: int  # frames dropped (queue full) during the period
    encode_seconds: float  # mean encode-and-write time per frame encoded in the period
    frame_interval: float  # seconds between frames the encoder is given (after decimation)
    temperature_c: float | None = None
    throttled: str = ""  # what the firmware says limits the CPU now, "" for nothing
    # A camera that encodes itself: how much later than the first packet after its frame the
    # newest packet came out of its encoder (growing: the encoder falls behind).
    lag_seconds: float = 0.0

    @property
    def queue_fraction(self) -> float:
        return self.queue_depth / self.queue_size if self.queue_size else 0.0

    @property
    def encode_ratio(self) -> float:
        """Encode time per frame over the time the encoder has for a frame."""
        return self.encode_seconds / self.frame_interval if self.frame_interval > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PacketLoad:
    """A camera that encodes itself, as its packet queue and encoder show its load."""

    queue_depth: int
    queue_size: int
    dropped_total: int  # packets dropped since the camera opened (queue full)
    lag_seconds: float  # LoadSample.lag_seconds


@dataclass(frozen=True, slots=True)
class StepChange:
    """A step taken: from which rung to which, and the measured cause in words."""

    at: float
    old: QualityStep
    new: QualityStep
    cause: str

    @property
    def is_down(self) -> bool:
        return self.new.level > self.old.level

    def describe(self) -> str:
        """ "queue 14/16 for 3 s, CPU 85 °C: fps 30 -> 15" """
        return f"{self.cause}: {self.new.difference(self.old)}"


class QualityGovernor:
    """Chooses the ladder's rung from load samples: down fast, up slowly, never oscillating."""

    def __init__(self, ladder: tuple[QualityStep, ...], spec: AdaptiveSpec) -> None:
        if not ladder:
            raise ValueError("a quality ladder has at least its top step")
        self.ladder = ladder
        self.spec = spec
        self.level = 0
        self.changes: deque[StepChange] = deque(maxlen=CHANGES_KEPT)  # the newest steps
        self._busy_since: dict[str, float] = {}
        self._calm_since: float | None = None
        self._last_change: float | None = None
        self._last_up: float | None = None
        self._last_depth: int | None = None
        self._backoff = 1

    def __repr__(self) -> str:
        return f"<QualityGovernor level {self.level}/{len(self.ladder) - 1} {self.step.describe()}>"

    @property
    def step(self) -> QualityStep:
        return self.ladder[self.level]

    @property
    def up_wait_seconds(self) -> float:
        """The calm period asked before the next step up (grows after failed steps up)."""
        return self.spec.up_after_seconds * self._backoff

    def observe(self, sample: LoadSample) -> StepChange | None:
        """The step to take after this sample, if any (already taken: `step` is the new one)."""
        now = sample.at
        causes = self._pressure(sample)
        settled = self._last_change is None or now - self._last_change >= SETTLE_SECONDS
        if causes:
            self._calm_since = None
            if settled and self.level < len(self.ladder) - 1:
                if self._last_up is not None:  # the last step up had not held yet
                    self._backoff = min(MAX_UP_BACKOFF, self._backoff * 2)
                self._last_up = None
                return self._take(now, self.level + 1, ", ".join(causes))
            return None
        if self._last_up is not None and self._drained(sample) and \
                now - self._last_up >= max(HELD_SECONDS, FAILED_UP_PERIODS * self.up_wait_seconds):
            # The step up held (and the queue is as low as it was when it was taken: a
            # load that builds slowly has not merely not shown yet): the next may come sooner.
            self._backoff = max(1, self._backoff // 2)
            self._last_up = None
        if not self._is_calm(sample):
            self._calm_since = None
            return None
        if self._calm_since is None:
            self._calm_since = now
        calm_for = now - self._calm_since
        if self.level > 0 and settled and calm_for >= self.up_wait_seconds:
            self._last_up = now
            cause = (f"calm for {calm_for:.0f} s (queue {sample.queue_depth}/{sample.queue_size}, "
                     f"encode {sample.encode_ratio:.0%} of the frame interval)")
            if sample.temperature_c is not None:
                cause += f", CPU {sample.temperature_c:.0f} °C"
            change = self._take(now, self.level - 1, cause)
            self._calm_since = now
            return change
        return None

    def _take(self, now: float, level: int, cause: str) -> StepChange:
        change = StepChange(now, self.step, self.ladder[level], cause)
        self.level = level
        self._last_change = now
        self._busy_since.clear()
        self.changes.append(change)
        return change

    def _sustained(self, name: str, busy: bool, now: float) -> float | None:
        """How long `name` has been busy (None when it is not now)."""
        if not busy:
            self._busy_since.pop(name, None)
            return None
        since = self._busy_since.setdefault(name, now)
        return now - since

    def _pressure(self, s: LoadSample) -> list[str]:
        """The measured reasons to step down now (empty: none)."""
        spec, now = self.spec, s.at
        causes = []
        if s.dropped > 0:
            causes.append(f"{s.dropped} frames dropped")
        # A queue that shrinks is draining what an earlier step left: no reason for another.
        draining = self._last_depth is not None and s.queue_depth < self._last_depth
        self._last_depth = s.queue_depth
        held = self._sustained("queue", s.queue_fraction >= spec.queue_high_fraction
                               and not draining, now)
        if held is not None and held >= spec.down_after_seconds:
            causes.append(f"queue {s.queue_depth}/{s.queue_size} for {held:.0f} s")
        held = self._sustained("encode", s.encode_ratio >= 1.0, now)
        if held is not None and held >= spec.down_after_seconds:
            causes.append(f"encode {s.encode_seconds * 1000:.0f} ms per frame for a "
                          f"{s.frame_interval * 1000:.0f} ms interval for {held:.0f} s")
        held = self._sustained("lag", s.lag_seconds >= LAG_HIGH_SECONDS, now)
        if held is not None and held >= spec.down_after_seconds:
            causes.append(f"encoder {s.lag_seconds:.1f} s behind its frames for {held:.0f} s")
        hot = s.temperature_c is not None and s.temperature_c >= spec.temperature_max_c
        held = self._sustained("temperature", hot, now)
        if held is not None and held >= spec.down_after_seconds:
            causes.append(f"CPU {s.temperature_c:.0f} °C")
        held = self._sustained("throttled", bool(s.throttled), now)
        if held is not None and held >= spec.down_after_seconds:
            causes.append(f"firmware reports {s.throttled}")
        return causes

    def _drained(self, s: LoadSample) -> bool:
        """No sign of load at all: nothing dropped, the queue at its low mark, no lag."""
        return (not s.dropped and s.queue_fraction <= self.spec.queue_low_fraction
                and s.lag_seconds <= LAG_CALM_SECONDS)

    def _is_calm(self, s: LoadSample) -> bool:
        """Whether the step above would have room: the hysteresis side of the decision."""
        if self.level == 0:
            return False
        spec = self.spec
        if s.dropped or s.throttled or s.queue_fraction > spec.queue_low_fraction:
            return False
        if s.lag_seconds > LAG_CALM_SECONDS:
            return False
        if s.temperature_c is not None and \
                s.temperature_c > spec.temperature_max_c - TEMPERATURE_HYSTERESIS_C:
            return False
        above = self.ladder[self.level - 1]
        # Decimation is the one knob whose cost is known: the step above hands the encoder
        # `decimation` ratio more frames in the same time. For the others, ask the headroom.
        predicted = s.encode_ratio * self.step.decimation / above.decimation
        return predicted <= spec.up_headroom


def read_cpu_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """The hottest thermal zone the kernel exposes (a Pi's cpu-thermal), else None."""
    hottest = None
    try:
        zones = sorted(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        hottest = value if hottest is None else max(hottest, value)
    return hottest


def parse_throttled(text: str) -> str:
    """What `vcgencmd get_throttled` output says limits the CPU now ("" for nothing)."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if match is None:
        return ""
    flags = int(match.group(1), 16)
    now = [name for bit, name in THROTTLED_NOW.items() if flags & (1 << bit)]
    return f"{', '.join(now)} ({match.group(1)})" if now else ""


class ThrottleReader:
    """The firmware's throttling flags through `vcgencmd`, read at most every 10 s.

    Off a Pi (no vcgencmd) it answers "" without spawning anything.
    """

    def __init__(self, command: str | None = None, *,
                 run: Callable[[list[str]], str] | None = None) -> None:
        self.command = command if command is not None else shutil.which("vcgencmd")
        self._run = run or _run_command
        self._read_at: float | None = None
        self.value = ""

    def read(self, now: float) -> str:
        if self.command is None:
            return ""
        if self._read_at is None or now - self._read_at >= THROTTLE_READ_SECONDS:
            self._read_at = now
            try:
                self.value = parse_throttled(self._run([self.command, "get_throttled"]))
            except (OSError, subprocess.SubprocessError):
                self.command = None  # gone or hanging: stop asking
                self.value = ""
        return self.value


def _run_command(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=2.0, check=False).stdout


class LoadMeter:
    """Turns the pipeline's running totals into one LoadSample per period.

    The encode thread only ever adds to its totals (time spent, frames encoded) and the
    capture thread reads them here, so the two threads share no counter they both write.
    """

    def __init__(self, *, period_seconds: float = 1.0,
                 temperature: Callable[[], float | None] = read_cpu_temperature_c,
                 throttle: Callable[[float], str] | None = None) -> None:
        self.period_seconds = period_seconds
        self._temperature = temperature
        self._throttle = throttle if throttle is not None else ThrottleReader().read
        self._started: float | None = None
        self._before = (0, 0, 0.0)  # dropped, encoded, encode seconds at the period's start
        self.last: LoadSample | None = None

    def sample(self, now: float, *, queue_depth: int, queue_size: int, dropped_total: int,
               encoded_total: int, encode_seconds_total: float,
               frame_interval: float, lag_seconds: float = 0.0) -> LoadSample | None:
        """A sample when a period has passed since the last one, else None."""
        if self._started is None:
            self._started = now
            self._before = (dropped_total, encoded_total, encode_seconds_total)
            return None
        if now - self._started < self.period_seconds:
            return None
        dropped0, encoded0, seconds0 = self._before
        encoded = encoded_total - encoded0
        encode = (encode_seconds_total - seconds0) / encoded if encoded else 0.0
        if not encoded and queue_depth:
            # Nothing came out while frames waited: the encoder was stuck the whole period.
            encode = now - self._started
        sample = LoadSample(now, queue_depth, queue_size, dropped_total - dropped0, encode,
                            frame_interval, self._temperature(), self._throttle(now), lag_seconds)
        self._started = now
        self._before = (dropped_total, encoded_total, encode_seconds_total)
        self.last = sample
        return sample
