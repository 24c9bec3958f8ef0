"""The hardware H.264 encoder of a Pi 4 (picamera2.encoders.h264_encoder), faked with libx264.

Signature and checks from raspberrypi/picamera2 picamera2/encoders/h264_encoder.py
@ c2f8ab5ce55f3b240fe3db2471a47bfec72d8399:
H264Encoder(bitrate=None, repeat=True, iperiod=None, framerate=None,
enable_sps_framerate=False, qp=None, profile=None). iperiod=None leaves the bcm2835 codec's
own default, 60 frames (V4L2_CID_MPEG_VIDEO_H264_I_PERIOD default in the kernel's
bcm2835-codec driver). repeat=True puts SPS/PPS before every keyframe.
"""

from __future__ import annotations

import av

from ._x264 import open_libx264
from .encoder import Quality
from .v4l2_encoder import V4L2_PIX_FMT_H264, V4L2Encoder

BCM2835_CODEC_DEFAULT_I_PERIOD = 60
PROFILES = ("baseline", "constrained baseline", "main", "high")
# Suggested bitrates for 1080p30 in Mbps, scaled linearly with pixels per second.
BITRATE_TABLE_MBPS = {
    Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9, Quality.VERY_HIGH: 15,
}
REFERENCE_COMPLEXITY = 1920 * 1080 * 30
DEFAULT_FRAMERATE = 30


class H264Encoder(V4L2Encoder):
    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__(bitrate, V4L2_PIX_FMT_H264)
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.profile = profile
        self.framerate = framerate
        self._enable_framerate = enable_sps_framerate

    def _start(self) -> None:
        if self.profile:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            if self.profile.lower() not in PROFILES:
                raise RuntimeError("Profile " + self.profile + " not recognised")
        for out in self._output:
            out._add_stream("video", "h264")
        super()._start()

    def _open_codec(self) -> av.VideoCodecContext:
        profile = self.profile.lower() if self.profile else None
        return open_libx264(
            width=self.width,
            height=self.height,
            framerate=self.framerate or DEFAULT_FRAMERATE,
            keyint=self.iperiod if self.iperiod is not None else BCM2835_CODEC_DEFAULT_I_PERIOD,
            bitrate=self.bitrate if self.qp is None else None,
            qp=self.qp,
            profile=profile,
            preset="ultrafast",
            repeat_headers=self.repeat,
        )

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (getattr(self, "bitrate", None) is None
                                   and getattr(self, "qp", None) is None):
            quality = Quality.MEDIUM if quality is None else quality
            actual_complexity = self.width * self.height * (self.framerate or DEFAULT_FRAMERATE)
            reference_bitrate = BITRATE_TABLE_MBPS[quality] * 1000000
            self.bitrate = int(reference_bitrate * actual_complexity / REFERENCE_COMPLEXITY)
