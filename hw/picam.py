"""The Raspberry Pi camera through picamera2: H.264 from its encoder, a lores stream for checks.

picamera2 is imported when this backend opens a camera or is probed, never at import time,
so machines without it run everything else. The picamera2 API used here (signatures as in
raspberrypi/picamera2, see tests/fakes/picamera2 for the files and commits):

- `Picamera2(camera_num)`: IndexError when there is no such camera, RuntimeError when it will
  not open (busy); `Picamera2.global_camera_info()` lists cameras without opening one;
  `sensor_modes` (sizes, fps, bit depth); `create_video_configuration(main=, lores=,
  controls=, sensor=)`, `configure`, `start`, `stop`, `close`, `cancel_all_and_flush()`.
- `picamera2.encoders.H264Encoder(repeat=, iperiod=, framerate=)`: the VC4 hardware encoder
  on a Pi 4 and earlier; on a Pi 5 (no H.264 block) the name is bound to LibavH264Encoder,
  software libx264; `picamera2.encoders._hw_encoder_available` tells which. framerate goes
  to PyAV's add_stream(rate=) there, so it is a Fraction (a float raises in PyAV).
- `Output.outputframe(frame, keyframe, timestamp, packet, audio)`: called positionally from
  the encoder's thread with one Annex-B access unit, its keyframe flag and its timestamp in
  microseconds since the encoder's first frame.
- `capture_array("lores", wait=seconds)`: the builtin TimeoutError when no frame came (the
  job stays queued until cancel_all_and_flush()); a YUV420 array (h*3/2, stride).

Failures: no packets within the read timeout is CameraTimeout ("Camera frontend has timed
out!" in libcamera's log: frames stopped); a camera that left global_camera_info(), or
RuntimeError "No such device", is CameraLost. `close()` runs cancel_all_and_flush(),
stop_encoder(), stop(), close(); stop() is known to hang after a frontend timeout
(raspberrypi/picamera2 #1264, #1275), so callers run close() through close_with_timeout
and recovery opens a fresh Picamera2. A camera unplugged mid-stream kills picamera2's event
loop (queueing a request to it fails with ENODEV), and stop() would wait for that loop
forever: close() detaches the dead loop first (found running the genuine picamera2 over
tests/fakes/libcamera).
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loguru import logger

from hw.adaptive import AdaptiveSpec, PacketLoad, QualityStep, build_sensor_ladder
from hw.camera import CameraMode, EncodedPacket, Frame
from hw.encoder import keyframe_interval
from hw.errors import BackendUnavailable, CameraLost, CameraTimeout, CameraUnavailable
from hw.probe import BackendProbe, FoundCamera
from hw.validate import FrameValidator

if TYPE_CHECKING:
    import numpy as np

    from hw.factory import CameraSpec
    from hw.synthetic import FaultPlan

PICAMERA2_MODULE = "picamera2"
LORES_WIDTH = 320
LORES_SAMPLE_FPS = 4.0  # validation and snapshots need a few pictures a second, not 30
PACKET_QUEUE = 120  # encoded frames held for the pipeline: 4 s at 30 fps
LORES_JOIN_GRACE_SECONDS = 1.0
# A bit-rate step starts a second encoder beside the running one; it must see its first
# frame within this, or the step is given up and the old encoder records on.
HANDOVER_TIMEOUT_SECONDS = 2.0
HANDOVER_POLL_SECONDS = 0.005
# A packet further than this many frame intervals after the one before: frames were lost
# before the encoder (libcamera had no free buffer while picamera2's thread was busy).
MISSED_GAP_INTERVALS = 1.5
# After a sensor frame-rate change, this many packets may still come at the old interval.
RATE_CHANGE_GRACE_PACKETS = 10
FPS_TOLERANCE = 0.01
INSTALL_HINT = ("install it from Raspberry Pi OS (`sudo apt install python3-picamera2`) and "
                "create vigil's venv with --system-site-packages so it can see it")

ErrorSink = Callable[[str, str], None]
FrameSink = Callable[[Frame], None]


class SensorModeUnavailable(CameraUnavailable, ValueError):
    """No sensor mode gives the configured size at the configured rate: a config problem."""


class _EncoderFeed:
    """One picamera2 encoder's packets on their way into the packet queue.

    A bit-rate step runs the new encoder beside the old one for a few frames: the old one's
    packets are held from the moment the new one starts, until the new one's first frame is
    known (`cutoff_us`, the sensor time of its first, key, frame); the old one's packets
    before it go on, the rest (the same frames, encoded twice) are discarded; the new one's
    are held until the old one has stopped and flushed, then go on after them.
    """

    def __init__(self, encoder: Any, *, live: bool) -> None:
        self.encoder = encoder
        self.live = live  # its packets go straight into the queue
        self.cutoff_us: int | None = None  # packets of frames at or after this are duplicates
        self.pending: list[tuple[int, EncodedPacket]] = []
        self.dead = False
        self.duplicates = 0

    def sensor_us(self, timestamp_us: int) -> int:
        """A packet's frame time on the sensor's clock (picamera2 stamps it from the
        encoder's first frame, Encoder.firsttimestamp, itself the SensorTimestamp in us)."""
        first = getattr(self.encoder, "firsttimestamp", None)
        return int(first or 0) + int(timestamp_us)


@dataclass(frozen=True, slots=True)
class SensorMode:
    """One sensor mode as picamera2's `sensor_modes` lists it."""

    width: int
    height: int
    fps: float
    bit_depth: int
    format: str

    @classmethod
    def from_picamera2(cls, mode: dict[str, Any]) -> SensorMode:
        width, height = mode["size"]
        return cls(int(width), int(height), float(mode["fps"]), int(mode.get("bit_depth", 10)),
                   str(mode.get("format", "")))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}@{self.fps:g}"

    def covers(self, width: int, height: int, fps: float) -> bool:
        return (self.width >= width and self.height >= height
                and self.fps >= fps * (1 - FPS_TOLERANCE))


def choose_sensor_mode(modes: Sequence[SensorMode], width: int, height: int, fps: float,
                       *, model: str = "the sensor") -> SensorMode:
    """The smallest mode that covers width x height at `fps` or faster.

    SensorModeUnavailable, naming every mode the sensor offers, when none does.
    """
    fitting = [m for m in modes if m.covers(width, height, fps)]
    if not fitting:
        offered = ", ".join(str(m) for m in modes) or "none"
        raise SensorModeUnavailable(
            f"no sensor mode of {model} gives {width}x{height} at {fps:g} fps; it offers "
            f"{offered} (width x height @ max fps); set camera.width, height and fps within one")
    return min(fitting, key=lambda m: (m.width * m.height, -m.fps))


def lores_size(width: int, height: int) -> tuple[int, int]:
    """A small stream of the main stream's aspect: LORES_WIDTH wide (or the main size if smaller)."""
    if width <= LORES_WIDTH:
        return width, height
    lores_height = max(2, round(LORES_WIDTH * height / width / 2) * 2)
    return LORES_WIDTH, lores_height


def packed_yuv420(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (h*3/2, w) YUV420 frame from picamera2's (h*3/2, stride) array (row padding removed).

    With padding the chroma planes are (h/2) rows of stride/2 bytes each, so they are cut
    out of the flat buffer; an array of an unexpected shape is handed on for the validator.
    """
    import numpy as np  # only a backend that makes arrays pays for numpy
    if array.ndim != 2 or array.shape[0] != height * 3 // 2 or array.shape[1] < width:
        return array
    stride = array.shape[1]
    if stride == width:
        return array
    flat = array.reshape(-1)
    luma = array[:height, :width]
    plane = stride // 2 * height // 2
    u = flat[stride * height : stride * height + plane].reshape(height // 2, stride // 2)
    v = flat[stride * height + plane : stride * height + 2 * plane].reshape(height // 2, stride // 2)
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = luma
    chroma = out[height:].reshape(-1)
    quarter = (width // 2) * (height // 2)
    chroma[:quarter] = u[:, : width // 2].reshape(-1)
    chroma[quarter:] = v[:, : width // 2].reshape(-1)
    return out


def encoder_kind(encoders: ModuleType) -> str:
    """"hardware" where picamera2's H264Encoder is the VC4 block, "libav" where it is libx264."""
    available = getattr(encoders, "_hw_encoder_available", None)
    if available is None:
        libav = getattr(encoders, "LibavH264Encoder", None)
        available = libav is None or encoders.H264Encoder is not libav
    return "hardware" if available else "libav"


def describe_encoder(kind: str, platform: str) -> str:
    if kind == "hardware":
        return f"picamera2 H264Encoder on the hardware H.264 encoder ({platform})"
    return (f"picamera2 H264Encoder = LibavH264Encoder, software libx264 on the CPU ({platform}: "
            "no hardware H.264 encoder)")


def _platform_name(pc2: ModuleType) -> str:
    platform = getattr(pc2.Picamera2, "platform", None)
    return str(getattr(platform, "name", platform or "unknown platform"))


def _is_absent(err: BaseException, module: str) -> bool:
    """True when `err` says `module` itself is not installed (not a dependency failing inside it)."""
    return isinstance(err, ModuleNotFoundError) and err.name == module.split(".", 1)[0]


def load_failure_text(err: BaseException) -> str:
    """The library's own message, with the one fix vigil knows for it."""
    text = f"{type(err).__name__}: {err}"
    if "numpy" in str(err):
        text += ("; Raspberry Pi OS builds picamera2's helpers (simplejpeg and others) against "
                 "its own numpy, and a different numpy in vigil's venv shadows it: reinstall with "
                 "deploy/install.sh, which keeps the system's numpy")
    return text


def import_picamera2(module: str = PICAMERA2_MODULE, submodule: str = "") -> ModuleType:
    """picamera2 (or one of its submodules), or BackendUnavailable with the library's message.

    Anything the import raises counts, not only ImportError: a numpy that does not match the
    one picamera2's apt packages were built against raises ValueError ("numpy.dtype size
    changed", raspberrypi/picamera2 #1088, #1211), and libcamera's bindings raise what they like.
    """
    name = f"{module}.{submodule}" if submodule else module
    try:
        return importlib.import_module(name)
    except Exception as err:
        if _is_absent(err, module):
            raise BackendUnavailable(f"picamera2 is not importable ({err}); {INSTALL_HINT}") from err
        raise BackendUnavailable(f"picamera2 is unavailable, because importing {name} raised "
                                 f"{load_failure_text(err)}") from err


class PicameraCamera:
    """The Pi camera: H.264 packets from picamera2's encoder, lores frames checked on the side."""

    def __init__(
        self,
        mode: CameraMode,
        *,
        fragment_seconds: float,
        frozen_seconds: float = 10.0,
        capture_timeout: float = 2.0,
        camera_num: int = 0,
        module: str = PICAMERA2_MODULE,
        lores_fps: float = LORES_SAMPLE_FPS,
        queue_packets: int = PACKET_QUEUE,
    ) -> None:
        self.name = "picamera2"
        self._mode = CameraMode(mode.width, mode.height, mode.fps, "packets")
        self.fragment_seconds = fragment_seconds
        self.iperiod = keyframe_interval(mode.fps, fragment_seconds)
        self.frozen_seconds = frozen_seconds
        self.capture_timeout = capture_timeout
        self.camera_num = camera_num
        self.module = module
        self.lores_fps = lores_fps
        self.lores_configured = lores_fps  # lores_fps is lowered by a quality step
        self.lores = lores_size(mode.width, mode.height)
        self._packets: queue.Queue[EncodedPacket] = queue.Queue(maxsize=queue_packets)
        self._picam2: Any = None
        self._pc2: ModuleType | None = None
        self._camera_id = ""
        self.model = ""
        self.sensor_mode: SensorMode | None = None
        self.encoder_kind = ""
        self.platform = ""
        # (monotonic, wall clock) at sensor time 0, from the first packet after opening.
        self._base: tuple[float, float] | None = None
        self._resync = True  # after a drop, wait for a keyframe: P-frames alone do not decode
        self.packets_dropped = 0
        self.output_failed = ""
        self._stop = threading.Event()
        self._lores_thread: threading.Thread | None = None
        self._lost_reason = ""
        self._when_error: ErrorSink | None = None
        self._when_frame: FrameSink | None = None
        self.latest_frame: Frame | None = None
        self.lores_frames = 0
        # Adaptive quality (hw.adaptive.build_sensor_ladder): the knobs as they are set now.
        self._encoders: ModuleType | None = None
        self._outputs: ModuleType | None = None
        self._feed: _EncoderFeed | None = None
        self._feed_lock = threading.RLock()
        self.base_bitrate: int | None = None  # what picamera2's encoder chose at level 0
        self.bitrate: int | None = None
        self.sensor_fps = mode.fps
        self.encoder_lag = 0.0  # seconds: the newest packet's delay beyond the first one's
        self.encoder_restarts = 0
        self.duplicates_discarded = 0
        # Frames the sensor's timestamps say never reached the encoder (a gap between two
        # packets): when picamera2's thread, which also runs the encoder, holds every buffer,
        # libcamera has none to fill and the frame is lost. Counted, and a load signal.
        self.frames_missed = 0
        self._last_stamp: float | None = None
        self._interval = 1.0 / mode.fps
        self._grace_interval = 0.0
        self._grace_packets = 0

    def __repr__(self) -> str:
        m = self._mode
        state = "open" if self._picam2 is not None else "closed"
        return f"<PicameraCamera {self.model or '?'} {m.width}x{m.height}@{m.fps:g} {state}>"

    @property
    def mode(self) -> CameraMode:
        return self._mode

    @property
    def encoder_description(self) -> str:
        return describe_encoder(self.encoder_kind, self.platform) if self.encoder_kind else ""

    def attach_sinks(self, *, when_error: ErrorSink, when_frame: FrameSink) -> None:
        """Where lores verdicts and checked lores frames (for snapshots) go; the pipeline calls this."""
        self._when_error, self._when_frame = when_error, when_frame

    # -- open ------------------------------------------------------------------------------

    def open(self) -> None:
        if self._picam2 is not None:
            return
        pc2 = import_picamera2(self.module)
        encoders = import_picamera2(self.module, "encoders")
        outputs = import_picamera2(self.module, "outputs")
        try:
            picam2 = pc2.Picamera2(self.camera_num)
        except IndexError as err:
            raise CameraUnavailable(
                f"no Pi camera number {self.camera_num} (picamera2 lists "
                f"{len(pc2.Picamera2.global_camera_info())}): check the ribbon cable, then "
                "`rpicam-hello --list-cameras`") from err
        except RuntimeError as err:
            raise CameraUnavailable(f"the Pi camera did not open: {err} (is another program "
                                    "using it?)") from err
        except Exception as err:
            # libcamera failing to start (OSError from a device node, a ValueError from its
            # bindings): the library's message is the diagnosis.
            raise CameraUnavailable(f"the Pi camera did not open: {load_failure_text(err)}") from err
        self._pc2, self._picam2 = pc2, picam2
        try:
            self._configure_and_start(pc2, picam2, encoders, outputs)
        except BaseException:
            self._teardown(picam2)
            self._picam2 = None
            raise

    def _configure_and_start(self, pc2: ModuleType, picam2: Any, encoders: ModuleType,
                             outputs: ModuleType) -> None:
        info = pc2.Picamera2.global_camera_info()[self.camera_num]
        self._camera_id, self.model = str(info.get("Id", "")), str(info.get("Model", "camera"))
        m = self._mode
        modes = [SensorMode.from_picamera2(mode) for mode in picam2.sensor_modes]
        sensor = choose_sensor_mode(modes, m.width, m.height, m.fps, model=self.model)
        self.sensor_mode = sensor
        frame_us = round(1_000_000 / m.fps)
        streams = {
            "main": {"size": (m.width, m.height), "format": "YUV420"},
            "lores": {"size": self.lores, "format": "YUV420"},
            # FrameDurationLimits rather than the newer FrameRate shorthand: every picamera2 has it.
            "controls": {"FrameDurationLimits": (frame_us, frame_us)},
        }
        try:
            try:
                config = picam2.create_video_configuration(
                    **streams,
                    sensor={"output_size": (sensor.width, sensor.height), "bit_depth": sensor.bit_depth})
            except TypeError:
                # picamera2 before `sensor=`: libcamera picks the mode from the main size itself.
                config = picam2.create_video_configuration(**streams)
            picam2.configure(config)
        except (RuntimeError, ValueError) as err:
            raise CameraUnavailable(f"picamera2 refused {m.width}x{m.height}@{m.fps:g}: {err}") from err
        self.encoder_kind, self.platform = encoder_kind(encoders), _platform_name(pc2)
        log = logger.info if self.encoder_kind == "hardware" else logger.warning
        log("picamera2 encoder={} platform={}: {}", self.encoder_kind, self.platform,
            describe_encoder(self.encoder_kind, self.platform))
        self._encoders, self._outputs = encoders, outputs
        self._base, self._resync, self._lost_reason = None, True, ""
        # A camera opens at the top of the ladder: the pipeline's governor starts there too.
        self.sensor_fps, self.encoder_lag, self.lores_fps = m.fps, 0.0, self.lores_configured
        self._last_stamp, self._interval, self._grace_packets = None, 1.0 / m.fps, 0
        self._drain()
        try:
            self._feed = self._start_encoder(picam2, bitrate=None, live=True)
            self.base_bitrate = self.bitrate = _int_or_none(getattr(self._feed.encoder, "bitrate", None))
            picam2.start()
        except RuntimeError as err:
            raise CameraLost(f"the Pi camera did not start: {err}") from err
        self._stop = threading.Event()
        self._lores_thread = threading.Thread(target=self._sample_lores, args=(picam2, self._stop),
                                              name="vigil-lores", daemon=True)
        self._lores_thread.start()
        logger.info("picamera2 camera open model={} id={} size={}x{} fps={:g} sensor_mode={} "
                    "lores={}x{} iperiod={}", self.model, self._camera_id, m.width, m.height,
                    m.fps, sensor, *self.lores, self.iperiod)

    def _start_encoder(self, picam2: Any, *, bitrate: int | None, live: bool) -> _EncoderFeed:
        """Start one picamera2 H264Encoder on the main stream, its packets into a new feed.

        picamera2 takes the bit rate only when an encoder starts (LibavH264Encoder sets
        codec_context.bit_rate in _start, the V4L2 encoder its VIDEO_BITRATE control in its
        constructor's start), so a new bit rate is a new encoder; None lets it choose.
        """
        assert self._encoders is not None and self._outputs is not None
        # A keyframe every fragment_seconds at the rate the sensor runs at now: a fragment (what
        # a power cut can lose) stays as long as configured after a frame-rate step too.
        self.iperiod = keyframe_interval(self.sensor_fps, self.fragment_seconds)
        # A Fraction, not the config's float: LibavH264Encoder (the Pi 5's H264Encoder) hands
        # framerate to PyAV's add_stream(rate=), which takes an int or a Fraction only.
        encoder = self._encoders.H264Encoder(bitrate=bitrate, repeat=True, iperiod=self.iperiod,
                                             framerate=Fraction(self.sensor_fps).limit_denominator(1001))
        feed = _EncoderFeed(encoder, live=live)

        def sink(frame: Any, keyframe: bool, timestamp_us: int | None) -> None:
            self._on_packet(feed, frame, keyframe, timestamp_us)

        output = _packet_output_class(self._outputs.Output)(sink, self._output_failed)
        picam2.start_encoder(encoder, output)
        return feed

    # -- adaptive quality (on the pipeline's capture thread) --------------------------------

    quality_method = ("a bit-rate step starts a new encoder and segment at a keyframe, a "
                      "frame-rate step asks the sensor for fewer frames (FrameDurationLimits)")

    def quality_ladder(self, spec: AdaptiveSpec) -> tuple[QualityStep, ...]:
        """This camera's adaptive-quality ladder: bit rate, lores sampling, sensor frame rate."""
        return build_sensor_ladder(self._mode, lores_fps=self.lores_configured, spec=spec)

    def packet_load(self) -> PacketLoad:
        return PacketLoad(self._packets.qsize(), self._packets.maxsize,
                          self.packets_dropped + self.frames_missed, self.encoder_lag)

    def apply_quality(self, step: QualityStep) -> float | None:
        """Set the camera's knobs as `step` says; when the encoded stream was cut (a new
        encoder), the timestamp of its first packet, a keyframe: a new segment starts there.

        The sensor's frame rate changes live: FrameDurationLimits goes with the next request
        picamera2 queues (Picamera2.set_controls), no restart, no frame lost; the lores
        sampling rate is read by the lores thread at its next wait; a new bit rate hands
        over to a new encoder (`_hand_over`).
        """
        picam2 = self._picam2
        if picam2 is None:
            return None
        rate_changed = step.fps != self.sensor_fps
        if rate_changed:
            frame_us = round(1_000_000 / step.fps)
            picam2.set_controls({"FrameDurationLimits": (frame_us, frame_us)})
            logger.info("picamera2 sensor frame rate {:g} -> {:g} fps (FrameDurationLimits {} us)",
                        self.sensor_fps, step.fps, frame_us)
            with self._feed_lock:
                # Frames in flight come at the old interval: neither is a gap for a while.
                self._grace_interval = max(self._interval, 1.0 / step.fps)
                self._grace_packets = RATE_CHANGE_GRACE_PACKETS
                self._interval = 1.0 / step.fps
            self.sensor_fps = step.fps
        if step.lores_fps and step.lores_fps != self.lores_fps:
            self.lores_fps = step.lores_fps
        wanted = (None if step.bit_rate_scale == 1.0 or self.base_bitrate is None
                  else max(1, round(self.base_bitrate * step.bit_rate_scale)))
        if wanted == (None if self.bitrate == self.base_bitrate else self.bitrate) and not rate_changed:
            return None
        # A new bit rate, or a new rate whose keyframe interval in frames differs: a new encoder.
        return self._hand_over(picam2, wanted)

    def _hand_over(self, picam2: Any, bitrate: int | None) -> float | None:
        """Replace the running encoder by one at `bitrate`, losing and repeating no frame.

        picamera2 feeds every encoder on the stream each frame (process_requests), so the
        new one starts beside the old; once it has taken its first frame the old one is
        stopped (its flush hands over what it still holds) and its packets of that frame and
        later are discarded as the duplicates they are.
        """
        old = self._feed
        if old is None:
            return None
        with self._feed_lock:
            old.live = False  # hold its packets until the cut is known
        try:
            new = self._start_encoder(picam2, bitrate=bitrate, live=False)
        except Exception as err:
            logger.warning("picamera2 could not start an encoder at bitrate={} error={!r}; "
                           "the running one records on", bitrate, err)
            self._release(old, cutoff=None)
            return None
        deadline = time.monotonic() + HANDOVER_TIMEOUT_SECONDS
        while getattr(new.encoder, "firsttimestamp", None) is None and time.monotonic() < deadline:
            time.sleep(HANDOVER_POLL_SECONDS)
        first = getattr(new.encoder, "firsttimestamp", None)
        if first is None:
            logger.warning("picamera2's new encoder saw no frame within {:g}s; the running one "
                           "records on", HANDOVER_TIMEOUT_SECONDS)
            with self._feed_lock:
                new.dead = True
            with contextlib.suppress(Exception):
                picam2.stop_encoder(new.encoder)
            self._release(old, cutoff=None)
            return None
        self._release(old, cutoff=int(first))
        try:
            picam2.stop_encoder(old.encoder)  # its flush arrives in _on_packet, cut at `first`
        except Exception as err:
            logger.warning("picamera2 stop_encoder of the replaced encoder failed error={!r}", err)
        with self._feed_lock:
            old.dead = True
            self.duplicates_discarded += old.duplicates
            for _, packet in new.pending:
                self._enqueue(packet)
            new.pending.clear()
            new.live = True
            self._feed = new
        self.bitrate = _int_or_none(getattr(new.encoder, "bitrate", None))
        self.encoder_restarts += 1
        logger.info("picamera2 encoder handed over bitrate={} duplicates_discarded={}",
                    self.bitrate, old.duplicates)
        base = self._base
        # Its first packet's timestamp, as _on_packet stamps it (the base exists: the old
        # encoder delivered before the new one started).
        return base[0] + int(first) / 1e6 if base is not None else time.monotonic()

    def _release(self, feed: _EncoderFeed, *, cutoff: int | None) -> None:
        """Let a held feed's packets go on: those before `cutoff` (all without one)."""
        with self._feed_lock:
            feed.cutoff_us = cutoff
            for sensor_us, packet in feed.pending:
                if cutoff is not None and sensor_us >= cutoff:
                    feed.duplicates += 1
                else:
                    self._enqueue(packet)
            feed.pending.clear()
            feed.live = True

    # -- the encoder's thread --------------------------------------------------------------

    def _on_packet(self, feed: _EncoderFeed, frame: Any, keyframe: bool,
                   timestamp_us: int | None) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        sensor_us = None if timestamp_us is None else feed.sensor_us(timestamp_us)
        with self._feed_lock:
            if sensor_us is None:
                stamp, wall = now_mono, now_wall
            else:
                if self._base is None:
                    self._base = (now_mono - sensor_us / 1e6, now_wall - sensor_us / 1e6)
                stamp = self._base[0] + sensor_us / 1e6
                wall = self._base[1] + sensor_us / 1e6
                self.encoder_lag = max(0.0, now_mono - stamp)
            if feed.dead:
                return
            if feed.cutoff_us is not None and sensor_us is not None and sensor_us >= feed.cutoff_us:
                feed.duplicates += 1
                return
            packet = EncodedPacket(bytes(frame), bool(keyframe), stamp, wall)
            if not feed.live:
                feed.pending.append((sensor_us if sensor_us is not None else 0, packet))
                return
            self._enqueue(packet)

    def _enqueue(self, packet: EncodedPacket) -> None:
        """Into the packet queue (the caller holds _feed_lock, so feeds keep their order)."""
        self._count_missed(packet.timestamp)
        keyframe = packet.is_keyframe
        if self._resync and not keyframe:
            self.packets_dropped += 1
            return
        try:
            self._packets.put_nowait(packet)
            self._resync = False
        except queue.Full:
            if not self.packets_dropped:
                logger.warning("picamera2 packets dropped: the recorder is not keeping up; "
                               "skipping to the next keyframe")
            self.packets_dropped += 1
            self._resync = True

    def _count_missed(self, stamp: float) -> None:
        """Count the frames a gap before this packet says were lost before the encoder."""
        last, self._last_stamp = self._last_stamp, stamp
        interval = self._interval
        if self._grace_packets:
            self._grace_packets -= 1
            interval = self._grace_interval
        if last is None or stamp - last <= MISSED_GAP_INTERVALS * interval:
            return
        missed = max(1, round((stamp - last) / interval) - 1)
        if not self.frames_missed:
            logger.warning("picamera2 frames missed: {} between packets {:.3f}s apart (libcamera "
                           "had no free buffer: the encoder's thread is behind)", missed, stamp - last)
        self.frames_missed += missed

    def _output_failed(self, err: BaseException) -> None:
        self.output_failed = repr(err)
        logger.error("picamera2 output failed error={!r}; no more packets until the camera reopens", err)

    # -- the lores thread ------------------------------------------------------------------

    def _sample_lores(self, picam2: Any, stop: threading.Event) -> None:
        width, height = self.lores
        validator = FrameValidator(CameraMode(width, height, self.lores_fps),
                                   frozen_seconds=self.frozen_seconds)
        sequence = 0
        # The rate is read at every wait: a quality step may lower it (apply_quality).
        while not stop.wait(1.0 / self.lores_fps):
            try:
                array = picam2.capture_array("lores", wait=self.capture_timeout)
            except TimeoutError:
                # read() reports the stall from the main stream; drop the queued capture job.
                with contextlib.suppress(Exception):
                    picam2.cancel_all_and_flush()
                continue
            except CancelledError:
                continue
            except RuntimeError as err:
                self._lost_reason = str(err)
                return
            except Exception as err:
                logger.warning("lores capture failed error={!r}", err)
                continue
            frame = Frame(packed_yuv420(array, width, height), time.monotonic(), time.time(), sequence)
            sequence += 1
            self.lores_frames += 1
            verdict = validator.check(frame)
            if verdict is not None:
                self._report(verdict.category, f"lores {verdict.reason}")
                if verdict.drops_frame:
                    continue
            self.latest_frame = frame
            if self._when_frame is not None:
                self._when_frame(frame)

    def _report(self, category: str, reason: str) -> None:
        sink = self._when_error
        if sink is not None:
            sink(category, reason)
        else:
            logger.debug("lores verdict with nobody to tell category={} reason={}", category, reason)

    # -- read ------------------------------------------------------------------------------

    def read(self, timeout: float) -> EncodedPacket:
        if self._picam2 is None:
            raise CameraLost("picamera2 camera read while closed")
        try:
            return self._packets.get(timeout=timeout)
        except queue.Empty:
            pass
        if self._lost_reason:
            raise CameraLost(f"the Pi camera failed: {self._lost_reason}")
        if not self._is_listed():
            raise CameraLost(f"the Pi camera {self.model} ({self._camera_id}) vanished from "
                             "picamera2's camera list")
        if self.output_failed:
            raise CameraLost(f"picamera2 output failed: {self.output_failed}")
        raise CameraTimeout(
            f"no H.264 from the Pi camera within {timeout:.2f}s (frames stopped; libcamera logs "
            "'Camera frontend has timed out!' when the sensor goes quiet: check the ribbon cable)")

    def _is_listed(self) -> bool:
        assert self._pc2 is not None
        try:
            listed = self._pc2.Picamera2.global_camera_info()
        except Exception as err:
            logger.warning("picamera2 global_camera_info failed error={!r}", err)
            return False
        return any(str(info.get("Id", "")) == self._camera_id for info in listed)

    # -- close -----------------------------------------------------------------------------

    def finish_encoding(self) -> list[EncodedPacket]:
        """Stop picamera2's encoder and return every packet not read yet; the camera stays open.

        LibavH264Encoder (a Pi 5) runs libx264 with frame threads, which holds a few frames
        (about 1.5 per core) until it is flushed: stop_encoder() hands them to the output, and
        the pipeline writes them before the segment closes instead of losing them with the
        camera (found running the genuine picamera2: the last frames before every close were
        missing). May block as stop() does; the pipeline runs it with the close, bounded.
        """
        picam2 = self._picam2
        if picam2 is None:
            return []
        try:
            picam2.stop_encoder()
        except Exception as err:
            logger.warning("picamera2 stop_encoder failed error={!r}", err)
        packets: list[EncodedPacket] = []
        with contextlib.suppress(queue.Empty):
            while True:
                packets.append(self._packets.get_nowait())
        return packets

    def close(self) -> None:
        """Stop encoder and camera and release it; idempotent.

        May block when the driver hangs in stop() (a known picamera2 failure): callers run it
        through hw.pipeline.close_with_timeout, which abandons it and reports.
        """
        picam2, self._picam2 = self._picam2, None
        if picam2 is None:
            return
        self._teardown(picam2)
        logger.info("picamera2 camera closed model={} dropped_packets={}", self.model,
                    self.packets_dropped)

    def _teardown(self, picam2: Any) -> None:
        self._stop.set()
        # Wakes a capture_array() the lores thread waits in (it raises CancelledError).
        with contextlib.suppress(Exception):
            picam2.cancel_all_and_flush()
        thread = self._lores_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.capture_timeout + LORES_JOIN_GRACE_SECONDS)
            if thread.is_alive():
                logger.error("lores thread did not stop within {:.1f}s", self.capture_timeout
                             + LORES_JOIN_GRACE_SECONDS)
        self._lores_thread = None
        if _event_loop_died(picam2):
            # picamera2's stop() asks its event loop to stop the camera and waits for it; a
            # dead loop never answers. Detached, stop() stops the camera on this thread.
            logger.warning("picamera2's event loop has ended (an error in process_requests, such "
                           "as libcamera's 'Failed to queue request: No such device' once the "
                           "camera is gone); stopping the camera without it")
            with contextlib.suppress(Exception):
                picam2.detach_preview()
        for step in ("stop_encoder", "stop", "close"):
            try:
                getattr(picam2, step)()
            except Exception as err:
                # A vanished camera fails stop() with "No such device"; carry on releasing.
                logger.warning("picamera2 {} failed during close error={!r}", step, err)
        self._drain()

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._packets.get_nowait()


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _event_loop_died(picam2: Any) -> bool:
    """True when the thread of picamera2's NULL preview, its event loop, has ended.

    It ends on the first exception process_requests() raises (picamera2/previews/
    null_preview.py re-raises it), for instance when a completed request is queued again to
    a camera that was unplugged meanwhile.
    """
    thread = getattr(getattr(picam2, "_preview", None), "thread", None)
    return isinstance(thread, threading.Thread) and not thread.is_alive()


def _packet_output_class(base: type) -> type:
    """A picamera2 Output subclass that hands every packet on and never raises into picamera2."""

    class VigilPacketOutput(base):  # type: ignore[misc]
        """Receives encoded frames on picamera2's encoder thread."""

        def __init__(self, sink: Callable[[Any, bool, int | None], None],
                     when_failed: Callable[[BaseException], None]) -> None:
            super().__init__()
            self._sink = sink
            self._when_failed = when_failed
            self.dead = False

        def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                        packet: Any = None, audio: bool = False) -> None:
            if audio or self.dead:
                return
            try:
                self._sink(frame, keyframe, timestamp)
            except Exception as err:
                # An output that fails marks itself dead and reports, as picamera2's own do.
                self.dead = True
                self._when_failed(err)

    return VigilPacketOutput


# -- the factory's view --------------------------------------------------------------------------


@dataclass(frozen=True)
class PicameraMaker:
    """Makes Pi cameras for the factory and probes picamera2's camera list."""

    module: str = PICAMERA2_MODULE

    def __call__(self, spec: CameraSpec, faults: FaultPlan) -> PicameraCamera:
        return PicameraCamera(spec.mode, fragment_seconds=spec.fragment_seconds,
                              frozen_seconds=spec.frozen_seconds,
                              capture_timeout=spec.read_timeout_seconds, module=self.module)

    def load_failure(self) -> str:
        """Why picamera2 cannot be used on this machine at all, or "" when it imports."""
        try:
            import_picamera2(self.module)
        except BackendUnavailable as err:
            return str(err)
        return ""

    def probe(self, *, detail: bool = False) -> BackendProbe:
        """The cameras picamera2 lists; with `detail`, each is opened to read its sensor modes.

        Whatever importing picamera2 or asking libcamera for its cameras raises makes the
        backend unavailable with that message (`failure`); nothing propagates.
        """
        try:
            importlib.import_module(self.module)
        except Exception as err:
            if _is_absent(err, self.module):
                return BackendProbe("picamera2", (), f"picamera2 is not installed ({err})")
            reason = f"unavailable, because importing {self.module} raised {load_failure_text(err)}"
            return BackendProbe("picamera2", (), f"picamera2 is {reason}", failure=reason)
        pc2 = sys.modules[self.module]
        try:
            listed = pc2.Picamera2.global_camera_info()
        except Exception as err:
            reason = f"unavailable, because libcamera could not list cameras: {load_failure_text(err)}"
            return BackendProbe("picamera2", (), f"picamera2 is {reason}", failure=reason)
        if not listed:
            return BackendProbe("picamera2", (), "picamera2 is installed but lists no camera")
        encoder = ""
        with contextlib.suppress(Exception):
            encoders = importlib.import_module(f"{self.module}.encoders")
            encoder = describe_encoder(encoder_kind(encoders), _platform_name(pc2))
        cameras = []
        for index, info in enumerate(listed):
            modes: tuple[str, ...] = ()
            if detail:
                modes = _sensor_modes_of(pc2, index)
            cameras.append(FoundCamera("picamera2", str(info.get("Id", index)),
                                       str(info.get("Model", "camera")), modes, encoder))
        summary = "found " + ", ".join(f"{c.name} ({c.address})" for c in cameras)
        return BackendProbe("picamera2", tuple(cameras), summary)


def _sensor_modes_of(pc2: ModuleType, index: int) -> tuple[str, ...]:
    try:
        picam2 = pc2.Picamera2(index)
    except (IndexError, RuntimeError) as err:
        return (f"modes unknown: it did not open ({err}; is vigil recording from it?)",)
    except Exception as err:
        return (f"modes unknown: it did not open ({load_failure_text(err)})",)
    try:
        modes = [SensorMode.from_picamera2(m) for m in picam2.sensor_modes]
        return (f"sensor modes {', '.join(str(m) for m in modes)}",)
    except Exception as err:
        return (f"modes unknown: picamera2 could not read them ({load_failure_text(err)})",)
    finally:
        with contextlib.suppress(Exception):
            picam2.close()
