"""The software H.264 encoder picamera2 uses on a Pi 5 (picamera2.encoders.libav_h264_encoder).

Follows raspberrypi/picamera2 picamera2/encoders/libav_h264_encoder.py
@ c242ace87d002b75914e05a28f47cfc1598ef514: LibavH264Encoder(bitrate=None, repeat=True,
iperiod=30, framerate=30, qp=None, profile=None); libx264 with preset "ultrafast" ("superfast"
for a non-baseline profile), tune "zerolatency", gop_size=iperiod, time base 1/1000000,
frame.pts = the encoder timestamp in microseconds; it encodes on the camera's own thread and
calls `outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)`.
The fake also sets scenecut=0 so keyframes come exactly every iperiod frames.
"""

from __future__ import annotations

from math import sqrt
from typing import Any

import av

from .. import platform as Platform
from ._x264 import open_libx264
from .encoder import Encoder, Quality

BITRATE_TABLE_MBPS = {
    Quality.VERY_LOW: 3, Quality.LOW: 4, Quality.MEDIUM: 7, Quality.HIGH: 10, Quality.VERY_HIGH: 14,
}
REFERENCE_COMPLEXITY = 1920 * 1080 * 30
FORMAT_TABLE = {
    "YUV420": "yuv420p", "BGR888": "rgb24", "RGB888": "bgr24", "XBGR8888": "rgba",
    "XRGB8888": "bgra",
}


class LibavH264Encoder(Encoder):
    """Encoder class that uses libx264 for h.264 encoding."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int = 30,
        framerate: float = 30,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self._codec = "h264"
        self.repeat = repeat
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        self.preset: str | None = None
        self.drop_final_frames = False
        self.threads = 0
        self._use_hw = False
        self._context: av.VideoCodecContext | None = None

    @property
    def use_hw(self) -> bool:
        return self._use_hw

    @use_hw.setter
    def use_hw(self, value: bool) -> None:
        if value:
            if Platform.get_platform() == Platform.Platform.VC4:
                self._use_hw = True
                self._codec = "h264_v4l2m2m"
            else:
                print("Warning: use_hw has no effect on non-VC4 platforms")

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (getattr(self, "bitrate", None) is None
                                   and getattr(self, "qp", None) is None):
            quality = Quality.MEDIUM if quality is None else quality
            actual_complexity = self.width * self.height * getattr(self, "framerate", 30)
            reference_bitrate = BITRATE_TABLE_MBPS[quality] * 1000000
            self.bitrate = int(reference_bitrate * sqrt(actual_complexity / REFERENCE_COMPLEXITY))

    def _start(self) -> None:
        preset = "ultrafast"
        profile = None
        if self.profile is not None:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            profile = self.profile.lower()
            if profile not in ("baseline", "constrained baseline", "main", "high"):
                raise RuntimeError("Profile " + self.profile + " not recognised")
            # The "ultrafast" preset always produces baseline.
            if "baseline" not in profile:
                preset = "superfast"
        if self.preset:
            preset = self.preset
        if self._format not in FORMAT_TABLE:
            raise KeyError(self._format)
        # The real _start() hands `framerate` to PyAV unchanged (`container.add_stream(codec,
        # rate=self.framerate)`), and PyAV refuses what is not an int or a Fraction (a float
        # raises AttributeError): do the same call so the fake fails where the library does.
        with av.open("/dev/null", "w", format="null") as probe:
            probe.add_stream(self._codec, rate=self.framerate)
        self._context = open_libx264(
            width=self.width,
            height=self.height,
            framerate=self.framerate,
            keyint=self.iperiod,
            bitrate=self.bitrate,
            qp=self.qp,
            profile=profile,
            preset=preset,
            repeat_headers=self.repeat,
            threads=self.threads,
        )
        for out in self._output:
            out._add_stream(self._context, self._codec, rate=self.framerate)

    def _stop(self) -> None:
        assert self._context is not None
        if not self.drop_final_frames:
            for packet in self._context.encode(None):
                self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts,
                                 packet=packet)
        self._context = None

    def _encode(self, stream: Any, request: Any) -> None:
        assert self._context is not None
        timestamp_us = self._timestamp(request)
        frame = av.VideoFrame.from_ndarray(request._fake_yuv420(stream), format="yuv420p")
        frame.pts = timestamp_us
        for packet in self._context.encode(frame):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts,
                             packet=packet)
