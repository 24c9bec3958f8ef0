"""H.264 encoding of raw frames with libx264 through PyAV, shaped like a hardware encoder.

The encoder emits Annex-B packets with SPS/PPS repeated on every keyframe and no
reordering (zerolatency), which is what picamera2's H264Encoder hands over too: the
segment writer then treats both sources the same way.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from hw.camera import CameraMode, EncodedPacket, Frame
from hw.errors import EncoderError

MICROSECONDS = Fraction(1, 1_000_000)
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)


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
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown libx264 preset {preset!r}; allowed: {', '.join(PRESETS)}")
        self.mode = mode
        self.gop = keyframe_interval(mode.fps, fragment_seconds)
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width = mode.width
        ctx.height = mode.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = MICROSECONDS
        ctx.framerate = Fraction(mode.fps).limit_denominator(1001)
        ctx.gop_size = self.gop
        ctx.thread_count = threads
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "crf": str(crf),
            "x264-params": (
                f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0:repeat-headers=1"
            ),
        }
        try:
            ctx.open()
        except av.FFmpegError as err:
            raise EncoderError(f"libx264 refused {mode}: {err}") from err
        self._ctx = ctx
        self._origin: float | None = None
        self._last_pts = -1
        self._wallclocks: dict[int, float] = {}
        self.frames_in = 0

    def __repr__(self) -> str:
        m = self.mode
        return f"<H264Encoder {m.width}x{m.height}@{m.fps:g} gop={self.gop}>"

    def encode(self, frame: Frame) -> list[EncodedPacket]:
        """Packets ready after this frame (with zerolatency: this frame's own packet)."""
        if self._origin is None:
            self._origin = frame.timestamp
        pts = round((frame.timestamp - self._origin) * 1_000_000)
        if pts <= self._last_pts:
            raise EncoderError(f"timestamp did not increase (pts {pts} after {self._last_pts})")
        self._last_pts = pts
        data = frame.data
        assert isinstance(data, np.ndarray)
        video_frame = yuv420_video_frame(data)
        video_frame.pts = pts
        self._wallclocks[pts] = frame.wallclock
        self.frames_in += 1
        try:
            return self._packets(self._ctx.encode(video_frame))
        except av.FFmpegError as err:
            raise EncoderError(f"libx264 failed on frame {frame.sequence}: {err}") from err

    def flush(self) -> list[EncodedPacket]:
        """Packets still held by the encoder; it cannot take frames afterwards."""
        try:
            return self._packets(self._ctx.encode(None))
        except av.FFmpegError as err:
            raise EncoderError(f"libx264 failed to flush: {err}") from err

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
