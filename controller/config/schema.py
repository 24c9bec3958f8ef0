"""The settings' strict models: every key, its type, its range and its one default."""

from __future__ import annotations

import ipaddress
import re
import socket
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.config.problems import show_value

CameraBackend = Literal["auto", "synthetic", "file", "v4l2", "picamera2"]
EncoderPreset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
MergeMode = Literal["hourly", "off"]
MergeVerify = Literal["packets", "keyframes", "full"]
FaultKind = Literal["stall", "hang", "disconnect", "freeze", "corrupt", "backward_timestamps"]
InputFormat = Literal["auto", "h264", "mjpeg", "yuyv422"]

# Error types raised by this module's own validators; _explain() turns them into messages.
RULE_BROKEN = "vigil_rule_broken"
BOOL_AS_NUMBER = "vigil_bool_as_number"
EMPTY_TEXT = "vigil_empty_text"
TEXT_WITH_NUL = "vigil_text_with_nul"
TEXT_NOT_UNICODE = "vigil_text_not_unicode"
TEXT_TOO_LONG = "vigil_text_too_long"
# Errors that explain.py words as "VALUE is not allowed; NAME <the error's own message>".
TEXT_ERRORS = frozenset({EMPTY_TEXT, TEXT_WITH_NUL, TEXT_NOT_UNICODE, TEXT_TOO_LONG})
# A field whose default depends on the machine (json_schema_extra): the reference and the
# example config show it as null, which the field reads as "this machine's default".
MACHINE_DEFAULT = "vigil_machine_default"
# A sub-section the configuration reference lists key by key (controller/config/reference.py).
EXPANDED = "vigil_expanded"

TEXT_MAX_CHARS = 4096
PATH_MAX_BYTES = 4095  # Linux's PATH_MAX, 4096, counts the terminating NUL

_LAVFI_EXAMPLE = "lavfi:testsrc2=size=640x480:rate=30"


def _reject_bool(value: object) -> object:
    # YAML reads yes/no/on/off/true/false as booleans; pydantic would quietly make them 1 and 0.
    if isinstance(value, bool):
        raise PydanticCustomError(BOOL_AS_NUMBER, "a boolean is not a number")
    return value


def _reject_empty_text(value: object) -> object:
    # Path("") is the current directory: an empty path is a mistake, not a choice.
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError(EMPTY_TEXT, "must not be empty")
    return value


def _check_text(value: object) -> object:
    """`value` when it is text that a file name, a device or a log line can carry."""
    _reject_empty_text(value)
    if not isinstance(value, str):
        return value
    if "\0" in value:
        # The OS cuts a name at a NUL; Path() would only fail later, at the first open.
        raise PydanticCustomError(TEXT_WITH_NUL, "must not contain a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        # YAML's "\udc80" escape makes a lone surrogate: no file name, log or JSON carries it.
        char = repr(value[err.start])
        raise PydanticCustomError(
            TEXT_NOT_UNICODE, "must be valid Unicode text; it holds the lone surrogate {char}",
            {"char": char},
        ) from None
    if len(value) > TEXT_MAX_CHARS:
        raise PydanticCustomError(
            TEXT_TOO_LONG, "must be at most {limit} characters long", {"limit": TEXT_MAX_CHARS}
        )
    return value


def _check_path(value: object) -> object:
    _check_text(value)
    if isinstance(value, str) and len(value.encode("utf-8")) > PATH_MAX_BYTES:
        raise PydanticCustomError(
            TEXT_TOO_LONG, "must be at most {limit} bytes long, as any path", {"limit": PATH_MAX_BYTES}
        )
    return value


def broken_rule(key: str, value: object, message: str) -> PydanticCustomError:
    """A cross-field error reported at `key` inside the model that raised it."""
    return PydanticCustomError(
        RULE_BROKEN, "{message}", {"key": key, "value": value, "message": message}
    )


WholeNumber = Annotated[int, BeforeValidator(_reject_bool)]
Number = Annotated[float, BeforeValidator(_reject_bool)]
Text = Annotated[str, BeforeValidator(_check_text)]
DirectoryPath = Annotated[Path, BeforeValidator(_check_path)]


class BudgetConfig(BaseModel):
    """An error category's budget: this many errors within the window make a fault."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    count: WholeNumber = Field(ge=1, le=100000, description="Errors that spend the budget: at least 1.")
    window_seconds: Number = Field(gt=0, le=86400, description="The window they are counted in, in seconds.")
    cooldown_seconds: Number = Field(
        default=10.0, ge=0, le=86400,
        description="After a fault, seconds during which this category makes no further fault.",
    )


class BudgetsConfig(BaseModel):
    """Error budgets by category; a category left out keeps its built-in budget."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    frame_invalid: BudgetConfig | None = Field(default=None, description="Malformed frames.")
    frame_timestamp: BudgetConfig | None = Field(default=None, description="Timestamps going backwards.")
    camera_timeout: BudgetConfig | None = Field(default=None, description="No frame in time.")
    camera_lost: BudgetConfig | None = Field(default=None, description="The camera vanished.")
    camera_frozen: BudgetConfig | None = Field(default=None, description="The image stopped changing.")
    encoder_error: BudgetConfig | None = Field(default=None, description="The encoder failed.")
    storage_full: BudgetConfig | None = Field(default=None, description="The disk is full.")
    storage_io: BudgetConfig | None = Field(default=None, description="Writes fail (I/O error, read-only).")
    directory_missing: BudgetConfig | None = Field(
        default=None, description="The recording directory was deleted while recording.")


class FaultInjectionConfig(BaseModel):
    """A fault the synthetic camera injects on its own, for demos and soak tests."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: FaultKind = Field(description="Which fault.")
    after_seconds: Number = Field(
        ge=0, le=604800,
        description="When, in seconds after the daemon starts: from 0 to 604800 (a week).")
    seconds: Number = Field(default=1.0, gt=0, le=3600,
                            description="How long (stall, hang, disconnect, freeze).")
    count: WholeNumber = Field(default=1, ge=1, le=100000,
                               description="How many frames (corrupt, backward_timestamps).")


_FRAMES_PER_READ_TIMEOUT = 2


def _rounded(value: float) -> str:
    return f"{value:.4g}"


class CameraConfig(BaseModel):
    """Where frames come from and their size and rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: CameraBackend = Field(
        default="auto",
        description=(
            "Which camera to record from: `auto` detects the camera this unit has; "
            "`synthetic` generates test frames that carry their frame number; `file` replays "
            "a video file or an FFmpeg test source (see `source`); `v4l2` opens a V4L2 video "
            "device such as a USB camera (see `device`); `picamera2` uses the Raspberry Pi "
            "camera."
        ),
    )
    width: WholeNumber = Field(
        default=1280,
        ge=64,
        le=4096,
        multiple_of=2,
        description=(
            "Frame width in pixels: an even number from 64 to 4096 "
            "(the H.264 encoder needs even frame sizes)."
        ),
    )
    height: WholeNumber = Field(
        default=720,
        ge=48,
        le=4096,
        multiple_of=2,
        description=(
            "Frame height in pixels: an even number from 48 to 4096 "
            "(the H.264 encoder needs even frame sizes)."
        ),
    )
    fps: Number = Field(
        default=30.0,
        gt=0,
        le=120,
        description=(
            "Frames per second to capture and record: greater than 0, at most 120, and at least "
            "2 / `read_timeout_seconds` (1 with the default timeout), so that a frame always "
            "comes well within the read timeout."
        ),
    )
    source: Text | None = Field(
        default=None,
        description=(
            "Required for backend `file`: the video file to replay, or an FFmpeg lavfi source "
            f"such as `{_LAVFI_EXAMPLE}`. Other backends ignore it."
        ),
    )
    device: Text = Field(
        default="/dev/video0",
        description=(
            "For backend `v4l2`: the video device to open, such as /dev/video0 or, stable "
            "across reboots and replugging, /dev/v4l/by-id/usb-...-video-index0."
        ),
    )
    input_format: InputFormat = Field(
        default="auto",
        description=(
            "For backend `v4l2`: what to take from the camera. `h264` records the camera's own "
            "H.264 without re-encoding (least CPU); `mjpeg` and `yuyv422` are decoded and "
            "encoded with libx264; `auto` takes the first of h264, mjpeg, yuyv422 the camera "
            "offers."
        ),
    )
    pace: bool = Field(
        default=True,
        description=(
            "For backend `file`: replay at the source's frame rate; "
            "false reads frames as fast as possible."
        ),
    )
    read_timeout_seconds: Number = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "Longest wait for one frame, in seconds, before the camera counts as timed out "
            "(camera_timeout): greater than 0, at most 60."
        ),
    )

    frozen_seconds: Number = Field(
        default=10.0,
        ge=0,
        le=3600,
        description=(
            "Seconds of an unchanged image (compared on a coarse subsample a few times a "
            "second) before the camera counts as frozen (camera_frozen); 0 turns the check off."
        ),
    )

    inject_faults: list[FaultInjectionConfig] = Field(
        default_factory=list,
        description=(
            "Backend `synthetic` only: faults to inject on a schedule, for demos and soak "
            "tests, e.g. `[{kind: disconnect, after_seconds: 60, seconds: 5}]`; kinds: stall, "
            "hang, disconnect, freeze, corrupt, backward_timestamps."
        ),
    )

    @model_validator(mode="after")
    def _frames_come_within_the_read_timeout(self) -> CameraConfig:
        # A frame interval longer than the read timeout makes every read a camera_timeout:
        # recovery would fault in a loop. Two frames per timeout leave room for jitter.
        lowest_fps = _FRAMES_PER_READ_TIMEOUT / self.read_timeout_seconds
        if self.fps >= lowest_fps:
            return self
        timeout = self.read_timeout_seconds
        if "read_timeout_seconds" in self.model_fields_set and "fps" not in self.model_fields_set:
            shortest = _FRAMES_PER_READ_TIMEOUT / self.fps
            raise broken_rule(
                "read_timeout_seconds", timeout,
                f"{show_value(timeout)} is out of range; read_timeout_seconds must be at least "
                f"2 / fps ({_rounded(shortest)}) so that frames come well within it",
            )
        raise broken_rule(
            "fps", self.fps,
            f"{show_value(self.fps)} is out of range; fps must be at least 2 / "
            f"read_timeout_seconds ({_rounded(lowest_fps)}) so that frames come well within the "
            "read timeout",
        )

    @model_validator(mode="after")
    def _file_backend_needs_source(self) -> CameraConfig:
        if self.backend == "file" and self.source is None:
            raise broken_rule(
                "source",
                None,
                "required when backend is 'file'; give a video file path or an FFmpeg lavfi "
                f"source such as '{_LAVFI_EXAMPLE}'",
            )
        return self


class AdaptiveConfig(BaseModel):
    """Adaptive quality: what vigil may give up, and in which order, when it cannot keep up."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=True,
        description=(
            "When the encoder falls behind, record less of each frame instead of dropping "
            "frames at random: first a faster x264 preset and a higher crf (the hardware "
            "encoder: a lower bit rate), then fewer frames per second, then a smaller picture. "
            "`false` keeps the configured quality and drops what the encoder cannot take."
        ),
    )
    preset_floor: EncoderPreset = Field(
        default="ultrafast",
        description=(
            "The fastest x264 preset the ladder may switch to, one preset at a time from "
            "`recording.encoder_preset`."
        ),
    )
    crf_ceiling: WholeNumber = Field(
        default=28,
        ge=0,
        le=51,
        description=(
            "The highest crf (lowest quality) the ladder may switch to, from 0 to 51; a "
            "value not above `recording.crf` leaves crf alone."
        ),
    )
    bitrate_floor_fraction: Number = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "The hardware encoder's lowest bit rate (the Pi camera's encoder, a V4L2 H.264 "
            "camera's bit-rate control), as a fraction of the one it starts with: more than 0, "
            "at most 1 (1 leaves the bit rate alone)."
        ),
    )
    fps_floor: Number = Field(
        default=10.0,
        gt=0,
        le=240,
        description=(
            "The lowest frame rate the ladder may record at, in frames per second: it keeps "
            "one frame in 2, then in 3, ... (30 -> 15 -> 10) while the rate stays at or above "
            "this (the Pi camera and a V4L2 H.264 camera are asked for fewer frames instead; a "
            "V4L2 one only at rates its driver lists). At or above `camera.fps` leaves the frame "
            "rate alone."
        ),
    )
    height_floor: WholeNumber = Field(
        default=360,
        ge=2,
        le=4320,
        description=(
            "The smallest picture height the ladder may scale down to, in pixels (3/4, then "
            "1/2, ... of the camera's); at or above `camera.height` leaves the size alone."
        ),
    )
    queue_high_fraction: Number = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Step down when the frame queue stays at least this full (a fraction of "
            "`recording.queue_frames`) for `down_after_seconds`; any dropped frame steps "
            "down at once."
        ),
    )
    queue_low_fraction: Number = Field(
        default=0.1,
        ge=0,
        lt=1,
        description=(
            "Step back up only while the frame queue is at most this full (a fraction of "
            "`recording.queue_frames`); below `queue_high_fraction`."
        ),
    )
    down_after_seconds: Number = Field(
        default=2.0,
        ge=0,
        le=600,
        description=(
            "How long a full queue, an encode time above the frame interval, a hot CPU or "
            "firmware throttling must last before the ladder steps down, in seconds."
        ),
    )
    up_after_seconds: Number = Field(
        default=60.0,
        ge=1,
        le=86400,
        description=(
            "How long the load must stay low before the ladder steps back up, in seconds; "
            "it doubles (up to 64 times) after each step up that had to be taken back soon."
        ),
    )
    up_headroom: Number = Field(
        default=0.7,
        gt=0,
        lt=1,
        description=(
            "Step back up only when the encoder would then need at most this fraction of "
            "each frame interval (measured, and scaled for a frame-rate step)."
        ),
    )
    temperature_max_c: Number = Field(
        default=80.0,
        ge=30,
        le=150,
        description=(
            "Step down while the CPU is at least this hot, in °C (where the kernel tells); "
            "step up again only 5 °C below."
        ),
    )

    @model_validator(mode="after")
    def _low_below_high(self) -> AdaptiveConfig:
        if self.queue_low_fraction >= self.queue_high_fraction:
            raise broken_rule(
                "queue_low_fraction",
                self.queue_low_fraction,
                f"{show_value(self.queue_low_fraction)} is out of range; queue_low_fraction must "
                f"be less than queue_high_fraction ({show_value(self.queue_high_fraction)})",
            )
        return self


class RecordingConfig(BaseModel):
    """Where footage goes and how it is cut and encoded."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    root: DirectoryPath = Field(
        default=Path("recordings"),
        description="Directory that recordings are written to.",
    )
    fallback_roots: list[DirectoryPath] = Field(
        default_factory=list,
        description="Directories to record to instead, in order, when `root` cannot be written.",
    )
    segment_seconds: Number = Field(
        default=3600.0,
        ge=1,
        le=3600,
        description=(
            "Longest recording file, in seconds: from 1 to 3600. A file also ends on the "
            "clock hour, so with 3600 an hour recorded in one piece is one file, which "
            "becomes the hour's merged file by a rename: every footage byte is written once."
        ),
    )
    fragment_seconds: Number = Field(
        default=1.0,
        ge=0.1,
        le=10,
        description=(
            "How often the open recording file is made playable on disk, in seconds; a crash "
            "or power cut loses at most about this much footage. From 0.1 to 10, and not more "
            "than `segment_seconds`."
        ),
    )
    encoder_preset: EncoderPreset = Field(
        default="ultrafast",
        description=(
            "x264 speed preset, from `ultrafast` to `veryslow`: slower presets use more CPU "
            "to make smaller files."
        ),
    )
    crf: WholeNumber = Field(
        default=23,
        ge=0,
        le=51,
        description=(
            "x264 constant rate factor, from 0 to 51: lower values give better quality "
            "and larger files."
        ),
    )
    queue_frames: WholeNumber = Field(
        default=60,
        ge=1,
        le=1000,
        description=(
            "How many captured frames may wait between the camera and the encoder: from 1 to 1000; "
            "never more than 48 MiB of raw frames (16 at 1080p), so a slow encoder cannot "
            "exhaust a Pi's memory."
        ),
    )
    autostart: bool = Field(
        default=True,
        description="Start recording when the daemon starts and after a reset.",
    )
    merge: MergeMode = Field(
        default="hourly",
        description=(
            "`hourly` joins the segments of each finished hour into one file, "
            "`ROOT/YYYY-MM-DD/HH.mp4`, without re-encoding; the segments are removed only "
            "once the merged file is verified and safely on disk. `off` keeps the segments "
            "(`vigil merge` still merges on request)."
        ),
    )
    merge_verify: MergeVerify = Field(
        default="packets",
        description=(
            "How a merged file is checked before its segments are removed: `packets` checks "
            "that every packet is byte-identical to the segments' (CRC), and the frame count "
            "and time span; `keyframes` also decodes every keyframe, `full` every frame "
            "(about a second of CPU per recorded minute at 720p, several on a Pi)."
        ),
    )

    adaptive: AdaptiveConfig = Field(
        default_factory=AdaptiveConfig,
        json_schema_extra={EXPANDED: True},
        description=(
            "Adaptive quality under load (README, \"Adaptive quality\"): the ladder's floors and "
            "when it steps down and back up."
        ),
    )

    @field_validator("merge", mode="before")
    @classmethod
    def _merge_off_is_not_a_boolean(cls, value: object) -> object:
        # YAML reads a bare `off` as false; that is what the user wrote, so take it as `off`.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _fragment_fits_in_segment(self) -> RecordingConfig:
        if self.fragment_seconds > self.segment_seconds:
            raise broken_rule(
                "fragment_seconds",
                self.fragment_seconds,
                f"{show_value(self.fragment_seconds)} is out of range; fragment_seconds must not be "
                f"more than segment_seconds ({show_value(self.segment_seconds)})",
            )
        return self


class RecoveryConfig(BaseModel):
    """How hard vigil tries to get recording again after a fault."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_attempts: WholeNumber = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "How many times vigil tries to recover from a fault before it reports a critical "
            "failure: from 1 to 100."
        ),
    )
    backoff_seconds: Number = Field(
        default=1.0,
        gt=0,
        description=(
            "Wait after the first failed recovery attempt, in seconds (the first attempt runs "
            "at once); it doubles after each further failure, up to `backoff_max_seconds`. "
            "Greater than 0."
        ),
    )
    backoff_max_seconds: Number = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "Longest wait between recovery attempts, in seconds: at least `backoff_seconds`, "
            "at most 3600."
        ),
    )
    critical_probe_seconds: Number = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        description=(
            "After a critical failure, how often vigil checks whether the fault has cleared, "
            "in seconds: from 0.1 to 3600."
        ),
    )
    stable_seconds: Number = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "How long vigil must record after a recovery before it counts as recovered, in "
            "seconds: from 0 to 3600. A camera lost again sooner (a flapping camera) is a "
            "failed attempt: the attempts and their backoff go on to a critical failure, and "
            "three such losses raise a `flapping` alert. 0 counts any recording as recovered."
        ),
    )

    budgets: BudgetsConfig = Field(
        default_factory=BudgetsConfig,
        description=(
            "Per error category, how many errors within how many seconds make a fault "
            "(`{count, window_seconds, cooldown_seconds}`); categories not given keep the "
            "built-in budgets: one error is a fault for camera_timeout, camera_lost, "
            "camera_frozen, encoder_error, storage_full and storage_io; 30 in 10 s for "
            "frame_invalid and frame_timestamp; 3 in 60 s for directory_missing."
        ),
    )
    max_abandoned_calls: WholeNumber = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Hung camera or encoder calls vigil abandons before it exits with status 70 so "
            "that systemd restarts it as a fresh process: from 1 to 100."
        ),
    )

    @model_validator(mode="after")
    def _backoff_max_not_below_backoff(self) -> RecoveryConfig:
        if self.backoff_max_seconds < self.backoff_seconds:
            raise broken_rule(
                "backoff_max_seconds",
                self.backoff_max_seconds,
                f"{show_value(self.backoff_max_seconds)} is out of range; backoff_max_seconds must "
                f"be at least backoff_seconds ({show_value(self.backoff_seconds)})",
            )
        return self


class LoggingConfig(BaseModel):
    """How much the daemon logs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    level: LogLevel = Field(
        default="INFO",
        description="Least severe messages to log: DEBUG, INFO, WARNING or ERROR.",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


DEFAULT_API_LISTEN = "127.0.0.1:8080"
DEFAULT_API_TOKEN_FILE = Path("/etc/vigil/api-token")
DEFAULT_VIEWER_TOKEN_FILE = Path("/etc/vigil/viewer-token")
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" ("[::1]:8080" for IPv6); ValueError says what is wrong."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon or not host:
        raise ValueError("must be HOST:PORT, such as 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("put an IPv6 address in brackets, such as [::1]:8080")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            if not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
            and 1 <= int(port_text) <= 65535):
        raise ValueError(f"port {port_text!r} is not a whole number from 1 to 65535")
    return host, int(port_text)


class ApiConfig(BaseModel):
    """The HTTP API: health, status, metrics and recordings, and the token-protected actions."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=True,
        description="Serve the HTTP API (health, status, Prometheus metrics, recordings, actions).",
    )
    listen: Text = Field(
        default=DEFAULT_API_LISTEN,
        description=(
            "Address and port the API listens on, as HOST:PORT (IPv6 in brackets, such as "
            "[::1]:8080). The default answers only on this machine; use 0.0.0.0:8080 to "
            "answer on every network interface."
        ),
    )
    token_file: DirectoryPath = Field(
        default=DEFAULT_API_TOKEN_FILE,
        description=(
            "File holding the bearer token that the actions (start, stop, reset, merge) "
            "require; when it is missing or empty the actions are disabled. Keep it readable "
            "by the vigil user only."
        ),
    )

    viewer_token_file: DirectoryPath = Field(
        default=DEFAULT_VIEWER_TOKEN_FILE,
        description=(
            "File holding the viewer token that footage (recordings, clip export, live and "
            "recorded HLS, snapshots) requires, as a bearer token, as the password of HTTP "
            "Basic credentials (any user name) or through `POST /login`'s "
            "cookie; the action token opens footage too. When neither file holds a token, "
            "footage answers 403 unless `public_footage` is true. Keep it readable by the "
            "vigil user only."
        ),
    )
    public_footage: bool = Field(
        default=False,
        description=(
            "Serve footage to anyone who can reach the API, without a token. Only for a "
            "unit on a network where everyone may watch."
        ),
    )
    history: bool = Field(
        default=True,
        description=(
            "Keep the last 24 hours of state, health, fps, frames dropped, errors and disk free, "
            "one sample a minute, and serve them as `GET /history` (open like `/status`). The "
            "samples survive a restart in `history_file`."
        ),
    )
    history_file: DirectoryPath | None = Field(
        default=None,
        description=(
            "Where the history is kept across restarts (gzip'd JSON, about 30 KB, rewritten once "
            "a minute). null keeps it in the service's state directory "
            "(`$STATE_DIRECTORY/history.json.gz`, /var/lib/vigil under the systemd unit), else "
            "`~/.local/state/vigil/history.json.gz`."
        ),
    )
    export_max_seconds: Number = Field(
        default=1800.0, gt=0, le=86400,
        description=(
            "Longest span one clip export (`GET /export`, `vigil export`) may cover, in "
            "seconds: greater than 0, at most 86400. The clip is assembled in a temporary "
            "file of about that much footage before it is sent."
        ),
    )

    @model_validator(mode="after")
    def _listen_is_host_and_port(self) -> ApiConfig:
        try:
            parse_listen(self.listen)
        except ValueError as err:
            message = f"{show_value(self.listen)} is not valid; {err}"
            raise broken_rule("listen", self.listen, message) from None
        return self


PinFactoryName = Literal["lgpio", "rpigpio", "pigpio", "native", "mock"]
_GPIO_PIN_ERROR = "vigil_gpio_pin"
_PIN_FACTORY_ERROR = "vigil_pin_factory"
_PIN_NAME_MAX_CHARS = 32
_PIN_EXAMPLES = "a BCM pin number such as 17, or a pin name such as GPIO17, BOARD11 or J8:11"


def _gpio_pin(value: object) -> object:
    # gpiozero takes numbers and names alike; keeping both as text gives one type to pass on.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _PIN_NAME_MAX_CHARS:
        _check_text(value)
        return value.strip()
    raise PydanticCustomError(_GPIO_PIN_ERROR, f"give {_PIN_EXAMPLES}")


def _same_pin(first: str, second: str) -> bool:
    """Whether two pin names surely mean the same pin (17, "GPIO17" and "BCM17" do)."""

    def canonical(name: str) -> str:
        text = name.upper()
        for prefix in ("GPIO", "BCM", ""):
            number = text.removeprefix(prefix)
            if text.startswith(prefix) and number.isdigit():
                return f"GPIO{int(number)}"
        return text

    return canonical(first) == canonical(second)


GpioPin = Annotated[str, BeforeValidator(_gpio_pin)]


class GpioConfig(BaseModel):
    """The reset button and status LED on the Raspberry Pi's GPIO header."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=True,
        description=(
            "Use the GPIO button and LED configured below; false leaves the GPIO pins alone."
        ),
    )
    reset_button: GpioPin | None = Field(
        default=None,
        description=(
            f"Pin of a push button wired to ground ({_PIN_EXAMPLES}); the internal pull-up "
            "is used. A short press starts or stops recording; holding it for "
            "`reset_hold_seconds` resets the recorder. null means no button."
        ),
    )
    status_led: GpioPin | None = Field(
        default=None,
        description=(
            "Pin of an LED (with its resistor) that shows the state: steady on while recording, "
            "slow blink when idle, fast blink while recovering, an SOS pattern when critical, "
            "off during a reset. null means no LED."
        ),
    )
    reset_hold_seconds: Number = Field(
        default=3.0,
        ge=0.1,
        le=60,
        description="How long to hold the button for an emergency reset, in seconds: from 0.1 to 60.",
    )
    pin_factory: PinFactoryName | None = Field(
        default=None,
        description=(
            "Which gpiozero pin library to use: lgpio, rpigpio, pigpio, native, or mock (a "
            "simulation for tests). null lets gpiozero pick the first that works on this board."
        ),
    )

    @field_validator("pin_factory", mode="before")
    @classmethod
    def _known_pin_factory(cls, value: object) -> object:
        allowed = typing.get_args(PinFactoryName)
        if value is None or value in allowed:
            return value
        raise PydanticCustomError(
            _PIN_FACTORY_ERROR, f"allowed values: null, {', '.join(allowed)}"
        )

    @model_validator(mode="after")
    def _button_and_led_on_different_pins(self) -> GpioConfig:
        if self.reset_button and self.status_led and _same_pin(self.reset_button, self.status_led):
            raise broken_rule(
                "status_led",
                self.status_led,
                f"{show_value(self.status_led)} is the same pin as reset_button "
                f"({show_value(self.reset_button)}); the button and the LED need a pin each",
            )
        return self


RESERVE_MB_LIMIT = 16 * 1024 * 1024  # 16 TiB, in MiB


class StorageConfig(BaseModel):
    """How long footage is kept and how much of the disk is kept free."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    retention_days: Number = Field(
        default=30.0,
        ge=0,
        le=36500,
        description=(
            "Delete footage whose hour ended more than this many days ago; 0 keeps footage "
            "until the free-space reserve needs its room. From 0 to 36500."
        ),
    )
    reserve_mb: Number = Field(
        default=1024.0,
        ge=0,
        lt=RESERVE_MB_LIMIT,
        description=(
            "Free space to keep on the recording disk, in MiB: while there is less, the oldest "
            "footage is deleted. The larger of this and `reserve_percent` applies, capped at "
            "half the disk. Keep it above an hour of footage so hourly merges can run on a "
            "full disk. At least 0, less than 16777216 (16 TiB)."
        ),
    )
    reserve_percent: Number = Field(
        default=5.0,
        ge=0,
        le=90,
        description=(
            "Free space to keep on the recording disk, as a percentage of its size: from 0 "
            "to 90. The larger of this and `reserve_mb` applies."
        ),
    )
    check_seconds: Number = Field(
        default=60.0,
        ge=1,
        le=86400,
        description=(
            "How often finished hours are merged and the age limit is applied, in seconds: "
            "from 1 to 86400. Free space is watched every few seconds regardless, and at once "
            "when a write fails for lack of space."
        ),
    )


UNIT_ID_MAX_CHARS = 64
_UNIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNIT_ID_ERROR = "vigil_unit_id"
_UNIT_ID_RULE = "1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"


def default_unit_id() -> str:
    """This machine's host name as a unit id: characters an id may not hold become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:UNIT_ID_MAX_CHARS]
    return name if _UNIT_ID.fullmatch(name) else "vigil"


def _unit_id(value: object) -> object:
    if value is None:
        return default_unit_id()
    if isinstance(value, str) and not _UNIT_ID.fullmatch(value):
        raise PydanticCustomError(_UNIT_ID_ERROR, f"give {_UNIT_ID_RULE}")
    return value


UnitId = Annotated[str, BeforeValidator(_unit_id)]


class UnitConfig(BaseModel):
    """Which unit this is, for the surfaces that name it to the world outside (MQTT, upload)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: UnitId = Field(
        default_factory=default_unit_id,
        json_schema_extra={MACHINE_DEFAULT: True},
        description=(
            "This unit's name in MQTT topics and in the keys of uploaded footage, so keep it "
            f"unique among your units: {_UNIT_ID_RULE}. null takes this machine's host name, "
            "with any other character replaced by '-'."
        ),
    )


class IntegrityConfig(BaseModel):
    """Footage you can prove: a hash chain over every fragment, and signed manifests."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=True,
        description=(
            "Hash every fragment into a chain and write a signed manifest beside each closed "
            "segment and merged hour (`NAME.mp4.manifest.json`), for `vigil verify`."
        ),
    )
    key_file: DirectoryPath | None = Field(
        default=None,
        description=(
            "The unit's Ed25519 signing key (PEM, mode 0600, owned by the vigil user), created by "
            "deploy/install.sh, or by the daemon when it is missing. null "
            "keeps it in the service's state directory (`$STATE_DIRECTORY/integrity.key`, "
            "/var/lib/vigil under the systemd unit), else `~/.local/state/vigil/integrity.key`. "
            "Keep it readable by the vigil user only; `vigil key` prints its public key."
        ),
    )
    scrub_hours: float = Field(
        default=24.0, ge=0, le=24 * 365,
        description=(
            "Every this many hours the housekeeper re-hashes all closed footage against its "
            "manifests, at the lowest CPU and I/O priority, and raises one `footage_altered` "
            "alert per file whose bytes no longer match (SD card rot). 0 turns the scrub off."
        ),
    )


MQTT_TOPIC_MAX_CHARS = 200
_MQTT_TOPIC_ERROR = "vigil_mqtt_topic"
_MQTT_TOPIC_RULE = ("a topic of 1 to 200 characters without the wildcards '+' and '#', "
                    "without a '/' at either end and without empty levels")


def _mqtt_topic(value: object) -> object:
    if value is None:
        return value
    _check_text(value)
    if isinstance(value, str) and (
        len(value) > MQTT_TOPIC_MAX_CHARS or "+" in value or "#" in value
        or "" in value.split("/") or value.startswith("$")
    ):
        raise PydanticCustomError(_MQTT_TOPIC_ERROR, f"give {_MQTT_TOPIC_RULE}")
    return value


MqttTopic = Annotated[str, BeforeValidator(_mqtt_topic)]


class MqttConfig(BaseModel):
    """MQTT: state, health and alerts for a broker, Home Assistant discovery, opt-in commands."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=False,
        description="Publish to an MQTT broker (state, health, alerts, Home Assistant discovery).",
    )
    host: Text = Field(default="localhost", description="The broker's host name or IP address.")
    port: WholeNumber = Field(
        default=1883, ge=1, le=65535,
        description="The broker's port: 1883 is plain MQTT, 8883 MQTT over TLS. From 1 to 65535.",
    )
    base_topic: MqttTopic | None = Field(
        default=None,
        description=(
            "Topic under which this unit publishes (state, availability, commands). null means "
            "`vigil/<unit.id>`."
        ),
    )
    discovery_prefix: MqttTopic = Field(
        default="homeassistant",
        description="Home Assistant's MQTT discovery prefix (Home Assistant's own default).",
    )
    discovery: bool = Field(
        default=True,
        description=(
            "Announce the unit to Home Assistant by MQTT discovery. To remove an announced "
            "unit, set this to false and run `vigil mqtt remove-discovery`."
        ),
    )
    keepalive_seconds: WholeNumber = Field(
        default=60, ge=5, le=3600,
        description=(
            "MQTT keepalive, in seconds: the broker publishes the unit's last will (`offline`) "
            "when it has heard nothing for 1.5 times this. From 5 to 3600."
        ),
    )
    commands: bool = Field(
        default=False,
        description=(
            "Accept start, stop, reset and merge on `<base_topic>/command/<name>`. Restrict "
            "who may publish there with the broker's ACL (see the README's MQTT section)."
        ),
    )
    qos: WholeNumber = Field(default=1, ge=0, le=2, description="QoS of everything published: 0, 1 or 2.")
    stats_seconds: Number = Field(
        default=30.0, ge=1, le=3600,
        description=(
            "How often measured values (health, fps, disk) are published at most, in seconds: "
            "from 1 to 3600. State changes and alerts go out at once."
        ),
    )
    camera_seconds: Number = Field(
        default=5.0, ge=0, le=3600,
        description=(
            "How often the latest frame is published as a JPEG for Home Assistant's camera "
            "entity, in seconds; 0 publishes none. From 0 to 3600."
        ),
    )
    queue_messages: WholeNumber = Field(
        default=1000, ge=1, le=100000,
        description=(
            "Messages kept while the broker is away; beyond that the newest are dropped "
            "(counted in vigil_mqtt_dropped_total). From 1 to 100000."
        ),
    )
    username: Text | None = Field(default=None, description="User name to log in with; null: anonymous.")
    password_file: DirectoryPath | None = Field(
        default=None,
        description=(
            "File holding the password for `username` (never the password itself in this file); "
            "keep it readable by the vigil user only. null: no password."
        ),
    )
    tls: bool = Field(default=False, description="Connect with TLS, checking the broker's certificate.")
    ca_file: DirectoryPath | None = Field(
        default=None,
        description="CA certificate(s) that signed the broker's certificate; null: the system's CAs.",
    )
    certfile: DirectoryPath | None = Field(
        default=None, description="Client certificate for brokers that want one (TLS); null: none.")
    keyfile: DirectoryPath | None = Field(
        default=None, description="The client certificate's private key; null: inside `certfile`.")

    @model_validator(mode="after")
    def _credentials_fit_together(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise broken_rule("password_file", str(self.password_file),
                              f"{show_value(str(self.password_file))} is set without a username; "
                              "a password needs `username` to go with it")
        for key in ("ca_file", "certfile", "keyfile"):
            value = getattr(self, key)
            if value is not None and not self.tls:
                raise broken_rule(key, str(value), f"{show_value(str(value))} is set but tls is false; "
                                  f"{key} is only used with `tls: true`")
        if self.keyfile is not None and self.certfile is None:
            raise broken_rule("keyfile", str(self.keyfile), f"{show_value(str(self.keyfile))} is set "
                              "without a certfile; a keyfile needs its `certfile`")
        return self

    def topic_base(self, unit_id: str) -> str:
        """The base topic: the configured one, or `vigil/<unit_id>`."""
        return self.base_topic or f"vigil/{unit_id}"


UploadOrder = Literal["newest-first", "oldest-first"]
UPLOAD_HOUR = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MIB_BYTES = 1024 * 1024


class UploadConfig(BaseModel):
    """Offload: closed footage to S3-compatible object storage, multipart, verified, resumable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=False,
        description=(
            "Upload closed footage (segments and merged hours) to S3-compatible object storage "
            "(AWS S3, MinIO, Garage, Backblaze B2, Wasabi). Needs boto3 (`pip install boto3`)."
        ),
    )
    endpoint_url: Text | None = Field(
        default=None,
        description=(
            "The storage service's address, such as https://minio.example.net:9000; null means "
            "AWS S3 itself (the endpoint of `region`)."
        ),
    )
    bucket: Text | None = Field(
        default=None,
        description="The bucket to upload to (it must exist): required when `enabled` is true.",
    )
    region: Text | None = Field(
        default=None,
        description="The bucket's region, such as eu-west-1; null takes it from the AWS configuration.",
    )
    prefix: Text | None = Field(
        default=None,
        description=(
            "Key prefix of every object; the rest of the key is the file's path under the "
            "recording root (`YYYY-MM-DD/HH/YYYYMMDDTHHMMSSZ.mp4`, `YYYY-MM-DD/HH.mp4`). null "
            "means `<unit.id>/`."
        ),
    )
    credentials_file: DirectoryPath | None = Field(
        default=None,
        description=(
            "An AWS shared-credentials file (`[default]` with aws_access_key_id and "
            "aws_secret_access_key) to use; null uses the standard AWS chain (environment, "
            "~/.aws/credentials, instance roles). Credentials never go in this file."
        ),
    )
    profile: Text | None = Field(
        default=None, description="The profile to take from the credentials; null: `default`.")
    bandwidth_bytes_per_second: Number = Field(
        default=0, ge=0, le=10_000_000_000,
        description=(
            "Most bytes per second to upload, averaged over a few seconds; 0 is no limit. "
            "On a shared uplink, leave room for everything else."
        ),
    )
    hours: Text | None = Field(
        default=None,
        description=(
            "Upload only within these hours of the day, local time, as HH:MM-HH:MM (may wrap "
            "past midnight, such as 22:00-06:00); null uploads at any time. `vigil upload now` "
            "ignores it."
        ),
    )
    order: UploadOrder = Field(
        default="newest-first",
        description=(
            "Which pending footage goes first: `newest-first` (what an incident needs) or "
            "`oldest-first`."
        ),
    )
    delete_after_upload: bool = Field(
        default=False,
        description=(
            "Delete local footage as soon as its copy in the bucket is verified, freeing the card. "
            "False keeps it until retention deletes it (uploaded footage first)."
        ),
    )
    part_mb: Number = Field(
        default=8.0, ge=5, le=512,
        description=(
            "Size of one multipart part in MiB, from 5 (S3's minimum) to 512; also the memory "
            "one upload holds. Smaller files go up in one request."
        ),
    )
    timeout_seconds: Number = Field(
        default=30.0, gt=0, le=600,
        description="Connect and read timeout of one request to the storage service, in seconds.",
    )
    verify: Literal["checksum", "download"] = Field(
        default="checksum",
        description=(
            "How an uploaded object is checked before it counts as done: `checksum` compares the "
            "SHA-256 checksums the bucket keeps (S3 additional checksums) with the file's; "
            "`download` reads the object back and compares it, for servers that store a sent "
            "checksum without checking it."
        ),
    )
    retry_max_seconds: Number = Field(
        default=300.0, ge=1, le=86400,
        description=(
            "Longest wait between retries while the storage service fails, in seconds; waits "
            "start at 1 s and double, with random jitter."
        ),
    )

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> UploadConfig:
        if self.enabled and self.bucket is None:
            raise broken_rule("bucket", None, "is required when upload.enabled is true")
        if self.bucket is not None and not S3_BUCKET.match(self.bucket):
            raise broken_rule("bucket", self.bucket, f"{show_value(self.bucket)} is not a bucket name: "
                              "3 to 63 lower-case letters, digits, '.' or '-'")
        if self.hours is not None and not UPLOAD_HOUR.match(self.hours):
            raise broken_rule("hours", self.hours, f"{show_value(self.hours)} is not a window of the "
                              "day; write it as HH:MM-HH:MM, such as 22:00-06:00")
        if self.endpoint_url is not None and not re.match(r"^https?://[^/\s]+", self.endpoint_url):
            raise broken_rule("endpoint_url", self.endpoint_url,
                              f"{show_value(self.endpoint_url)} is not an http:// or https:// address")
        return self

    @property
    def part_bytes(self) -> int:
        return int(self.part_mb * MIB_BYTES)

    def key_prefix(self, unit_id: str) -> str:
        """The prefix of every key: the configured one (with a '/' at its end), or `<unit_id>/`."""
        prefix = self.prefix if self.prefix is not None else unit_id
        return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class VigilConfig(BaseModel):
    """Every setting of the recorder daemon; each section may be left out."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    unit: UnitConfig = Field(
        default_factory=UnitConfig, description="This unit's identity."
    )
    camera: CameraConfig = Field(
        default_factory=CameraConfig, description="The camera and its frame size and rate."
    )
    recording: RecordingConfig = Field(
        default_factory=RecordingConfig,
        description="Where recordings are written and how they are encoded.",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="Retention: deleting old footage by age and to keep disk space free.",
    )
    recovery: RecoveryConfig = Field(
        default_factory=RecoveryConfig, description="Retrying after a camera or storage fault."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Log output of the daemon."
    )
    api: ApiConfig = Field(
        default_factory=ApiConfig,
        description="The HTTP API for health checks, status, metrics, recordings and actions.",
    )
    gpio: GpioConfig = Field(
        default_factory=GpioConfig,
        description="The reset button and status LED on the Raspberry Pi's GPIO header.",
    )
    mqtt: MqttConfig = Field(
        default_factory=MqttConfig,
        description="Publishing to an MQTT broker, with Home Assistant discovery.",
    )
    integrity: IntegrityConfig = Field(
        default_factory=IntegrityConfig,
        description="Hash chain and signed manifests of the footage.",
    )
    upload: UploadConfig = Field(
        default_factory=UploadConfig,
        description="Uploading closed footage to S3-compatible object storage.",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_use_defaults(cls, data: object) -> object:
        # `camera:` with every key commented out reads as null; that means "all defaults".
        if isinstance(data, dict):
            return {key: {} if value is None else value for key, value in data.items()}
        return data
