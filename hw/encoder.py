"""H.264 encoding of raw frames through PyAV: the Pi 4's hardware encoder where it answers, else libx264.

The encoder emits Annex-B packets with SPS/PPS repeated on every keyframe and no
reordering (zerolatency), which is what picamera2's H264Encoder hands over too: the
segment writer then treats both sources the same way.

On a Pi 4 (and 3, Zero 2 W) the VideoCore's H.264 block is a V4L2 memory-to-memory device,
/dev/video11 ("bcm2835-codec-encode"), which FFmpeg drives as `h264_v4l2m2m` (in PyAV's
aarch64 wheels). `choose_encoder` picks it when that node answers VIDIOC_QUERYCAP as an M2M
encoder and FFmpeg has the codec; otherwise libx264, with the reason. A Pi 5 has no such
block: libx264 there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, cast

import av

from hw.camera import CameraMode, EncodedPacket, Frame
from hw.errors import EncoderError

if TYPE_CHECKING:
    import numpy as np

    from hw.v4l2.device import DeviceIO

MICROSECONDS = Fraction(1, 1_000_000)
_AUTO = av.video.frame.PictureType.NONE  # the encoder decides
_INTRA = av.video.frame.PictureType.I  # a forced keyframe
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
LIBX264 = "libx264"
V4L2_M2M = "h264_v4l2m2m"
CODECS = (LIBX264, V4L2_M2M)
PI_ENCODER_DEVICE = "/dev/video11"  # bcm2835-codec's encoder node on Raspberry Pi OS
V4L2_CAP_VIDEO_M2M_MPLANE = 0x00004000
V4L2_CAP_VIDEO_M2M = 0x00008000
# The hardware encoder takes a bit rate, not a quality: 0.1 bit per pixel is about 2.8 Mbit/s
# at 720p30 and 6.2 Mbit/s at 1080p30, near what libx264 ultrafast crf 23 gives for camera scenes.
M2M_BITS_PER_PIXEL = 0.1


def probe_m2m_encoder(device: str = PI_ENCODER_DEVICE, *, io: DeviceIO | None = None) -> str:
    """"" when `device` answers VIDIOC_QUERYCAP as a V4L2 M2M H.264 encoder, else why not."""
    if io is None and not os.path.exists(device):
        # Off a Pi, the usual case: said without loading the V4L2 code (start-up time).
        return f"{device} does not exist (a Pi 5 or no Pi, or the bcm2835-codec driver is not loaded)"
    from hw.errors import CameraError
    from hw.v4l2.device import LINUX_IO, V4L2Device

    node = V4L2Device(device, io=io if io is not None else LINUX_IO)
    try:
        node.open()
        caps = node.capabilities()
    except CameraError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            return (f"{device} does not exist (a Pi 5 or no Pi, or the bcm2835-codec driver is "
                    "not loaded)")
        return f"{device}: {err}"
    finally:
        node.close()
    if not caps.capabilities & (V4L2_CAP_VIDEO_M2M | V4L2_CAP_VIDEO_M2M_MPLANE):
        return f"{device} ({caps.card}) is not a memory-to-memory codec"
    if "encode" not in caps.card.lower():
        return f"{device} ({caps.card}) is a memory-to-memory codec but not an encoder"
    return ""


@dataclass(frozen=True, slots=True)
class EncoderChoice:
    """The encoder raw frames go through, and why that one."""

    codec: str  # LIBX264 or V4L2_M2M
    reason: str

    @property
    def is_hardware(self) -> bool:
        return self.codec == V4L2_M2M

    def describe(self) -> str:
        if self.is_hardware:
            return f"{V4L2_M2M}, the hardware H.264 encoder ({self.reason})"
        return f"{LIBX264}, software ({self.reason})"


def choose_encoder(probe: Callable[[], str] = probe_m2m_encoder,
                   codecs: Collection[str] | None = None) -> EncoderChoice:
    """h264_v4l2m2m when FFmpeg has it and the board's encoder answers; libx264 otherwise."""
    available = av.codecs_available if codecs is None else codecs
    if V4L2_M2M not in available:
        return EncoderChoice(LIBX264, f"this FFmpeg build has no {V4L2_M2M}")
    why_not = probe()
    if why_not:
        return EncoderChoice(LIBX264, f"no hardware encoder: {why_not}")
    return EncoderChoice(V4L2_M2M, f"{PI_ENCODER_DEVICE} answers as an M2M encoder")


def keyframe_interval(fps: float, fragment_seconds: float) -> int:
    """Frames between keyframes so that a fragment lasts `fragment_seconds`."""
    return max(1, round(fps * fragment_seconds))


def yuv420_video_frame(data: np.ndarray) -> av.VideoFrame:
    """A PyAV frame over a YUV420 planar array (H*3/2, W): the array's own memory when it can.

    `from_ndarray` allocates a fresh frame and copies the planes into it; on this path that
    was a fifth of the encode thread's time at 720p (page faults on every new allocation
    included). A C-contiguous array already has the planes where FFmpeg expects them, so the
    frame is built over it: libx264 copies the picture into its own buffers during encode,
    and the frame keeps the array alive for as long as FFmpeg holds a reference to it.
    """
    if data.flags.c_contiguous:
        return av.VideoFrame.from_numpy_buffer(data, format="yuv420p")
    return av.VideoFrame.from_ndarray(data, format="yuv420p")


class H264Encoder:
    """Encodes YUV420 frames into H.264 packets, a keyframe every fragment."""

    def __init__(
        self,
        mode: CameraMode,
        *,
        fragment_seconds: float,
        preset: str = "ultrafast",
        crf: int = 23,
        threads: int = 0,
        codec: str = LIBX264,
        bit_rate_scale: float = 1.0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown libx264 preset {preset!r}; allowed: {', '.join(PRESETS)}")
        if codec not in CODECS:
            raise ValueError(f"unknown H.264 encoder {codec!r}; allowed: {', '.join(CODECS)}")
        self.mode = mode
        self.codec = codec
        # Frames of another size (the camera's, under a quality step of hw.adaptive) are
        # scaled to the mode's by libswscale on the encode thread.
        self.input_size = input_size if input_size is not None else (mode.width, mode.height)
        self.gop = keyframe_interval(mode.fps, fragment_seconds)
        try:
            # Both codecs are video encoders; the stubs type only literal names that precisely.
            ctx = cast(av.VideoCodecContext, av.CodecContext.create(codec, "w"))
        except av.FFmpegError as err:
            raise EncoderError(f"{codec} is not available: {err}") from err
        ctx.width = mode.width
        ctx.height = mode.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = MICROSECONDS
        ctx.framerate = Fraction(mode.fps).limit_denominator(1001)
        ctx.gop_size = self.gop
        if codec == LIBX264:
            ctx.thread_count = threads
            ctx.options = {
                "preset": preset,
                "tune": "zerolatency",
                "crf": str(crf),
                "x264-params": (
                    f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0:repeat-headers=1"
                ),
            }
        else:
            # The VideoCore encoder has no B-frames; FFmpeg's v4l2m2m wrapper sets the GOP
            # from gop_size and the driver repeats SPS/PPS before each IDR frame.
            ctx.bit_rate = round(mode.width * mode.height * mode.fps * M2M_BITS_PER_PIXEL
                                 * bit_rate_scale)
            ctx.max_b_frames = 0
        try:
            ctx.open()
        except (av.FFmpegError, OSError) as err:
            raise EncoderError(f"{codec} refused {mode}: {err}") from err
        self._ctx = ctx
        self._origin: float | None = None
        self._last_pts = -1
        self._wallclocks: dict[int, float] = {}
        self._keyframe_next = False
        self.frames_in = 0

    def __repr__(self) -> str:
        m = self.mode
        return f"<H264Encoder {self.codec} {m.width}x{m.height}@{m.fps:g} gop={self.gop}>"

    def force_keyframe(self) -> None:
        """Make the next frame a keyframe (recording resumes after a gap: the fragment held
        before it is written out at once, and the new one starts where the footage does)."""
        self._keyframe_next = True

    def encode(self, frame: Frame) -> list[EncodedPacket]:
        """Packets ready after this frame (with zerolatency: this frame's own packet)."""
        if self._origin is None:
            self._origin = frame.timestamp
        pts = round((frame.timestamp - self._origin) * 1_000_000)
        if pts <= self._last_pts:
            raise EncoderError(f"timestamp did not increase (pts {pts} after {self._last_pts})")
        self._last_pts = pts
        video_frame = frame.picture
        if video_frame is not None:
            # The decoder's frame as it came (the file camera), in our time base. Its picture
            # type is the decoder's (lavfi marks every frame I, a decoded file says I/P/B):
            # FFmpeg's libx264 wrapper obeys a frame's type, so it is reset, as ffmpeg does.
            video_frame = self._scaled(video_frame)
            video_frame.time_base = MICROSECONDS
            video_frame.duration = 0
            video_frame.pict_type = _AUTO
        else:
            data = frame.data
            assert data is not None  # the validator let only arrays through
            video_frame = self._scaled(yuv420_video_frame(data))
        video_frame.pts = pts
        if self._keyframe_next:
            self._keyframe_next = False
            video_frame.pict_type = _INTRA
        self._wallclocks[pts] = frame.wallclock
        self.frames_in += 1
        try:
            return self._packets(self._ctx.encode(video_frame))
        except av.FFmpegError as err:
            raise EncoderError(f"{self.codec} failed on frame {frame.sequence}: {err}") from err

    def _scaled(self, video_frame: av.VideoFrame) -> av.VideoFrame:
        """The frame at the encoder's size: adaptive quality may have stepped the size down."""
        if (video_frame.width, video_frame.height) != (self.mode.width, self.mode.height):
            return video_frame.reformat(width=self.mode.width, height=self.mode.height)
        return video_frame

    def flush(self) -> list[EncodedPacket]:
        """Packets still held by the encoder; it cannot take frames afterwards."""
        try:
            return self._packets(self._ctx.encode(None))
        except av.FFmpegError as err:
            raise EncoderError(f"{self.codec} failed to flush: {err}") from err

    def _packets(self, packets: list[av.Packet]) -> list[EncodedPacket]:  # type: ignore[type-arg]
        out = []
        origin = self._origin or 0.0
        for packet in packets:
            pts = packet.pts if packet.pts is not None else self._last_pts
            wallclock = self._wallclocks.pop(pts, 0.0)
            out.append(
                EncodedPacket(bytes(packet), packet.is_keyframe, origin + pts / 1_000_000, wallclock)
            )
        return out
