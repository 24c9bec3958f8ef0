"""Encoders (picamera2.encoders), with H264Encoder bound the way the platform binds it.

Real module (raspberrypi/picamera2 picamera2/encoders/__init__.py
@ 1bc461b9c167efc824f57464debe8b45a4cfe1c9) sets `_hw_encoder_available` when /dev/video11
is "bcm2835-codec-encode" (Pi 4 and earlier) and then binds H264Encoder to the V4L2
class; otherwise (Pi 5) `H264Encoder` *is* LibavH264Encoder. So a caller detects software
encoding by `picamera2.encoders._hw_encoder_available` being False, or by
`H264Encoder is LibavH264Encoder`, or by `Picamera2.platform == Platform.PISP`.
MJPEG and JPEG encoders are not faked.
"""

from __future__ import annotations

from .. import _fake
from .encoder import Encoder, Quality
from .h264_encoder import H264Encoder as V4L2H264Encoder
from .libav_h264_encoder import LibavH264Encoder

__all__ = ["Encoder", "H264Encoder", "LibavH264Encoder", "Quality"]

_hw_encoder_available = _fake.platform_name() == "pi4"
H264Encoder: type[Encoder] = V4L2H264Encoder if _hw_encoder_available else LibavH264Encoder


def _rebind_for_platform() -> None:
    """Called by _fake.set_platform(): redo the import-time choice for the new platform."""
    global _hw_encoder_available, H264Encoder
    _hw_encoder_available = _fake.platform_name() == "pi4"
    H264Encoder = V4L2H264Encoder if _hw_encoder_available else LibavH264Encoder
