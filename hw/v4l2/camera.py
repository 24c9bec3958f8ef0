"""V4L2 cameras (USB and CSI bridges on any Linux board) as vigil's Camera.

PyPI's PyAV wheels are built without FFmpeg's v4l2 input, so vigil drives the device node
itself (hw.v4l2.device), and `V4L2Camera` turns its buffers into vigil's types per
`camera.input_format`: H.264 goes to the segment writer untouched (EncodedPacket), MJPEG is
decoded with PyAV and YUYV converted with swscale into YUV420 Frames that the pipeline encodes
with libx264.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import av
from loguru import logger

from hw.adaptive import AdaptiveSpec, PacketLoad, QualityStep, build_sensor_ladder
from hw.camera import CameraMode, EncodedPacket, Frame
from hw.errors import CameraError, CameraLost, CameraUnavailable
from hw.v4l2.abi import (
    V4L2_BUF_FLAG_ERROR,
    V4L2_CID_MPEG_VIDEO_BITRATE,
    V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
    fourcc_text,
)
from hw.v4l2.device import (
    AUTO_PREFERENCE,
    DEFAULT_BUFFER_COUNT,
    INPUT_FORMATS,
    LINUX_IO,
    CapturedBuffer,
    DeviceIO,
    FormatDesc,
    GrantedFormat,
    RateKnobs,
    V4L2Device,
)
from hw.v4l2.h264 import ParameterSets

if TYPE_CHECKING:
    import numpy as np

FPS_TOLERANCE = 0.01  # relative: 333333/10000000 s per frame is 30 fps for our purposes
TIMESTAMP_NUDGE_SECONDS = 1e-4


class GrantedModeMismatch(CameraUnavailable, ValueError):
    """The driver granted another size, rate or format than the config asks for."""


def choose_input_format(wanted: str, offered: Sequence[FormatDesc], path: str) -> FormatDesc:
    """The device format to capture: `wanted`, or for auto the best one offered."""
    usable = {desc.input_format: desc for desc in reversed(offered) if desc.input_format}
    names = [fourcc_text(d.fourcc) for d in offered]
    if wanted == "auto":
        for name in AUTO_PREFERENCE:
            if name in usable:
                return usable[name]
        raise CameraUnavailable(
            f"{path} offers no format vigil can record (it offers {', '.join(names) or 'none'}; "
            f"vigil records {', '.join(AUTO_PREFERENCE)})")
    if wanted not in usable:
        raise CameraUnavailable(
            f"{path} does not offer camera.input_format {wanted} (it offers "
            f"{', '.join(names) or 'none'}); set camera.input_format to auto or one of "
            f"{', '.join(n for n in AUTO_PREFERENCE if n in usable) or 'nothing vigil records'}")
    return usable[wanted]


def _fps_matches(granted: float | None, wanted: float) -> bool:
    return granted is None or abs(granted - wanted) <= FPS_TOLERANCE * wanted


class V4L2Camera:
    """A V4L2 camera as vigil's Camera: H.264 packets passed through, MJPEG/YUYV as YUV420 frames."""

    def __init__(
        self,
        mode: CameraMode,
        device: str,
        *,
        input_format: str = "auto",
        io: DeviceIO = LINUX_IO,
        buffer_count: int = DEFAULT_BUFFER_COUNT,
    ) -> None:
        if input_format != "auto" and input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input_format {input_format!r}; "
                             f"allowed: auto, {', '.join(INPUT_FORMATS)}")
        self.name = "v4l2"
        self.device = device
        self.input_format = input_format
        self.buffer_count = buffer_count
        self._io = io
        self._asked = mode
        self._mode = CameraMode(mode.width, mode.height, mode.fps, "frames")
        self._dev: V4L2Device | None = None
        self.format_name: str | None = None  # the format streaming now (h264, mjpeg, yuyv422)
        self.card = ""
        self._granted: GrantedFormat | None = None
        self._headers = ParameterSets()
        self._decoder: av.CodecContext | None = None
        self._last_timestamp = float("-inf")
        self.buffers_skipped = 0
        # Adaptive quality (pass-through only): the driver's knobs, as they are set now.
        self._knobs: RateKnobs | None = None
        self._rates: list[float] = []  # the frame rates the driver lists at this size
        self.base_bitrate: int | None = None  # the bit-rate control's value when opened
        self.bitrate: int | None = None
        self.stream_fps = mode.fps
        self.stream_restarts = 0  # frame-rate steps the driver took only with streaming stopped
        # Frames the driver's sequence numbers say it captured but vigil never dequeued (no
        # free buffer: the reader was late), and the H.264 packets after such a hole up to the
        # next keyframe (they refer to what is missing); counted as dropped, and a load signal.
        self.frames_missed = 0
        self._last_sequence: int | None = None
        self._resync = False  # H.264 lost before a frame: wait for the next keyframe

    def __repr__(self) -> str:
        state = f"open {self.format_name}" if self._dev is not None else "closed"
        m = self._mode
        return f"<V4L2Camera {self.device} {m.width}x{m.height}@{m.fps:g} {state}>"

    @property
    def mode(self) -> CameraMode:
        return self._mode

    @property
    def encoder_description(self) -> str:
        if self.format_name == "h264":
            return "pass-through: the camera's own H.264, muxed without re-encoding"
        if self.format_name == "mjpeg":
            return "the camera's MJPEG decoded, then libx264"
        return "libx264 from the camera's raw frames"

    def open(self) -> None:
        if self._dev is not None:
            return
        asked = self._asked
        dev = V4L2Device(self.device, io=self._io)
        dev.open()
        try:
            caps = dev.capabilities()
            if not caps.is_capture:
                raise CameraUnavailable(f"{self.device} ({caps.card}, {caps.driver}) is not a video "
                                        "capture device with streaming I/O")
            chosen = choose_input_format(self.input_format, dev.formats(), self.device)
            granted = dev.set_format(chosen.fourcc, asked.width, asked.height, asked.fps)
            name = chosen.input_format
            assert name is not None
            if (granted.width, granted.height) != (asked.width, asked.height) or not _fps_matches(
                    granted.fps, asked.fps) or granted.fourcc not in INPUT_FORMATS[name]:
                raise self._mismatch(dev, chosen, granted)
            if granted.fps is None:
                logger.warning("v4l2 driver does not report its frame rate device={}; assuming "
                               "{:g} fps", self.device, asked.fps)
            dev.start_streaming(self.buffer_count)
        except BaseException:
            dev.close()
            raise
        self._dev, self._granted, self.format_name, self.card = dev, granted, name, caps.card
        self.frames_missed, self._last_sequence, self.stream_restarts = 0, None, 0
        self._resync = False
        if name == "h264":
            self._read_knobs(dev, chosen)
        self._headers = ParameterSets()
        self._decoder = av.CodecContext.create("mjpeg", "r") if name == "mjpeg" else None
        self._last_timestamp = float("-inf")
        output: Literal["frames", "packets"] = "packets" if name == "h264" else "frames"
        self._mode = CameraMode(asked.width, asked.height, asked.fps, output)
        logger.info("v4l2 camera open device={} card={} driver={} format={} size={}x{} fps={}",
                    self.device, caps.card, caps.driver, name, granted.width, granted.height,
                    f"{granted.fps:g}" if granted.fps else "unknown")

    def adaptive_knobs(self) -> list[str]:
        """What the open camera's driver offers to lower its H.264 stream's cost, in words."""
        if self._dev is None:
            return []
        try:
            return self._dev.adaptive_knobs()
        except CameraError as err:
            logger.warning("v4l2 controls not readable device={} error={}", self.device, err)
            return []

    # -- adaptive quality (on the pipeline's capture thread, between reads) -------------------

    @property
    def quality_method(self) -> str:
        """How the ladder's steps are taken on this driver, in words (doctor's line)."""
        knobs = self._knobs
        if knobs is None:
            return ""
        parts = []
        if knobs.bitrate is not None and self.base_bitrate:
            parts.append(f"a bit-rate step sets V4L2_CID_MPEG_VIDEO_BITRATE (now {self.base_bitrate} "
                         "bit/s) with VIDIOC_S_CTRL")
        if knobs.timeperframe:
            parts.append("a frame-rate step sets the frame interval with VIDIOC_S_PARM (a driver that "
                         "refuses it while streaming, as uvcvideo does, is stopped and started again)")
        cut = ("asks for a keyframe (V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME)" if knobs.force_keyframe
               else "waits for the camera's next keyframe")
        return f"{', '.join(parts)}; each {cut} and starts a new segment there"

    def _read_knobs(self, dev: V4L2Device, chosen: FormatDesc) -> None:
        self._knobs, self._rates = None, []
        try:
            self._knobs = dev.rate_knobs()
            self._rates = dev.frame_rates(chosen.fourcc, self._asked.width, self._asked.height)
        except CameraError as err:
            logger.warning("v4l2 controls not readable device={} error={}; no adaptive quality",
                           self.device, err)
        knobs = self._knobs
        self.base_bitrate = self.bitrate = knobs.bitrate_now if knobs is not None else None
        self.stream_fps = self._asked.fps

    def _rate_offered(self, fps: float) -> bool:
        """Whether the driver lists `fps` at this size (one that lists none may grant any)."""
        return not self._rates or any(abs(r - fps) <= FPS_TOLERANCE * fps for r in self._rates)

    def quality_ladder(self, spec: AdaptiveSpec) -> tuple[QualityStep, ...]:
        """The ladder of the driver's own knobs: its H.264 bit rate, then its frame interval at
        the rates it lists; one step (nothing to adapt) when it offers neither."""
        knobs = self._knobs
        if self.format_name != "h264" or knobs is None:
            return (QualityStep(0, "", 0, 1.0, 1, self._mode.width, self._mode.height,
                                self._mode.fps, packets=True),)
        return build_sensor_ladder(
            self._mode, lores_fps=0.0, spec=spec,
            bitrate=knobs.bitrate is not None and bool(self.base_bitrate),
            rate_allowed=self._rate_offered if knobs.timeperframe else lambda fps: False)

    def packet_load(self) -> PacketLoad:
        # No queue of its own: the pipeline's queue in front of the writer is where load shows.
        return PacketLoad(0, 0, self.frames_missed, 0.0)

    def apply_quality(self, step: QualityStep) -> float | None:
        """Set the driver's knobs as `step` says; the time from which its stream is the new
        one (a new segment starts at the first keyframe after it), None when nothing changed."""
        dev, knobs = self._dev, self._knobs
        if dev is None or knobs is None:
            return None
        # Taken before the change: a restarted stream stamps its first frame (an IDR) with
        # the time streaming began again, before these calls return.
        since = time.monotonic()
        changed = restarted = False
        if knobs.bitrate is not None and self.base_bitrate:
            wanted = (self.base_bitrate if step.bit_rate_scale == 1.0
                      else knobs.bitrate.nearest(round(self.base_bitrate * step.bit_rate_scale)))
            if wanted != self.bitrate:
                dev.set_control(V4L2_CID_MPEG_VIDEO_BITRATE, wanted)
                granted = dev.get_control(V4L2_CID_MPEG_VIDEO_BITRATE)
                logger.info("v4l2 bit rate {} -> {} bit/s device={} (asked {})", self.bitrate,
                            granted, self.device, wanted)
                self.bitrate, changed = granted if granted is not None else wanted, True
        if knobs.timeperframe and step.fps != self.stream_fps:
            granted_fps, restarted = dev.set_frame_rate(step.fps)
            if restarted:
                self.stream_restarts += 1
                self._last_sequence = None  # a new stream numbers its buffers from 0
            if granted_fps is None or not _fps_matches(granted_fps, step.fps):
                logger.warning("v4l2 driver granted {} fps for {:g} device={}", granted_fps,
                               step.fps, self.device)
            logger.info("v4l2 frame rate {:g} -> {} fps device={}{}", self.stream_fps,
                        f"{granted_fps:g}" if granted_fps else "?", self.device,
                        " (streaming restarted: the driver sets it only while stopped)"
                        if restarted else "")
            self.stream_fps, changed = granted_fps or step.fps, True
        if not changed:
            return None
        if knobs.force_keyframe and not restarted:  # a restarted stream begins with an IDR
            dev.set_control(V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1)
        return since

    def _restore_bitrate(self, dev: V4L2Device) -> None:
        """Leave the driver's bit rate as it was found (controls outlive the open handle)."""
        if self.base_bitrate and self.bitrate != self.base_bitrate:
            try:
                dev.set_control(V4L2_CID_MPEG_VIDEO_BITRATE, self.base_bitrate)
            except CameraError as err:
                logger.warning("v4l2 bit rate not restored device={} error={}", self.device, err)
        self.bitrate = self.base_bitrate

    def _mismatch(self, dev: V4L2Device, chosen: FormatDesc, granted: GrantedFormat) -> GrantedModeMismatch:
        asked = self._asked
        got_fps = f"{granted.fps:g}" if granted.fps else "?"
        offered = dev.frame_sizes(chosen.fourcc)
        rates = dev.frame_rates(chosen.fourcc, asked.width, asked.height) if offered.allows(
            asked.width, asked.height) else []
        text = (f"{self.device}: asked for {asked.width}x{asked.height}@{asked.fps:g} "
                f"{chosen.input_format}, the driver granted {granted.width}x{granted.height}@"
                f"{got_fps} {fourcc_text(granted.fourcc)}; {chosen.input_format} sizes offered: "
                f"{offered.describe()}")
        if rates:
            text += f"; rates at {asked.width}x{asked.height}: {', '.join(f'{r:g}' for r in rates)}"
        return GrantedModeMismatch(text + "; set camera.width, height and fps to one of them")

    def read(self, timeout: float) -> Frame | EncodedPacket:
        dev = self._dev
        if dev is None:
            raise CameraLost(f"v4l2 camera {self.device} read while closed")
        deadline = time.monotonic() + timeout
        h264 = self.format_name == "h264"
        while True:
            captured = dev.dequeue(max(0.0, deadline - time.monotonic()))
            last, self._last_sequence = self._last_sequence, captured.sequence
            if last is not None and captured.sequence > last + 1:
                self.frames_missed += captured.sequence - last - 1
                self._resync = h264
            if captured.flags & V4L2_BUF_FLAG_ERROR or not captured.data:
                self.buffers_skipped += 1  # the driver says the payload is damaged or empty
                self._resync = h264
                continue
            item = self._convert(captured)
            if self._resync and isinstance(item, EncodedPacket):
                if not item.is_keyframe:
                    # It refers to a frame that never came: it would not decode. Gone too.
                    # The camera is alive, so the wait for the keyframe starts again.
                    self.frames_missed += 1
                    deadline = time.monotonic() + timeout
                    continue
                self._resync = False
            return item

    def _stamp(self, captured: CapturedBuffer) -> tuple[float, float]:
        now_mono = time.monotonic()
        stamp = captured.timestamp if captured.timestamp is not None else now_mono
        return stamp, time.time() - (now_mono - stamp)

    def _convert(self, captured: CapturedBuffer) -> Frame | EncodedPacket:
        stamp, wallclock = self._stamp(captured)
        if self.format_name == "h264":
            if stamp <= self._last_timestamp:
                # The muxer needs increasing timestamps; a driver repeating one must not kill the segment.
                stamp = self._last_timestamp + TIMESTAMP_NUDGE_SECONDS
            self._last_timestamp = stamp
            data, is_key = self._headers.complete(captured.data)
            return EncodedPacket(data, is_key, stamp, wallclock)
        if self.format_name == "mjpeg":
            image = self._decode_mjpeg(captured.data)
        else:
            image = self._convert_yuyv(captured.data)
        return Frame(image, stamp, wallclock, captured.sequence)

    def _decode_mjpeg(self, data: bytes) -> np.ndarray | None:
        assert self._decoder is not None
        try:
            frames = self._decoder.decode(av.Packet(data))  # type: ignore[attr-defined]
        except av.FFmpegError as err:
            # A damaged JPEG (USB hiccup): the validator drops the frame and counts it.
            logger.debug("mjpeg frame did not decode device={} error={}", self.device, err)
            return None
        if not frames:
            return None
        frame = frames[-1]
        m = self._mode
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != (m.width, m.height):
            frame = frame.reformat(width=m.width, height=m.height, format="yuv420p")
        array: np.ndarray | None = frame.to_ndarray()
        return array

    def _convert_yuyv(self, data: bytes) -> np.ndarray | None:
        import numpy as np  # only a backend that makes arrays pays for numpy
        m, granted = self._mode, self._granted
        assert granted is not None
        row = granted.bytesperline or m.width * 2
        if len(data) < row * m.height:
            return None  # a short buffer: the validator reports it
        packed = np.frombuffer(data, np.uint8, count=row * m.height).reshape(m.height, row)
        pixels = np.ascontiguousarray(packed[:, : m.width * 2]).reshape(m.height, m.width, 2)
        frame = av.VideoFrame.from_ndarray(pixels, format="yuyv422")
        return frame.reformat(format="yuv420p").to_ndarray()

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            self._restore_bitrate(dev)
            dev.close()
            logger.info("v4l2 camera closed device={}", self.device)
        self._decoder = None
