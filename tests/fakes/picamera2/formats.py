"""Pixel format names picamera2 accepts for its streams (picamera2.formats)."""

from __future__ import annotations

import re

YUV_FORMATS = ("NV21", "NV12", "YUV420", "YVU420", "YVYU", "YUYV", "UYVY", "VYUY")
RGB_FORMATS = ("BGR888", "RGB888", "XBGR8888", "XRGB8888", "RGB161616", "BGR161616")
_BAYER = re.compile(r"^S(RGGB|GRBG|GBRG|BGGR)(8|10|12|14|16)(_CSI2P|_PISP_COMP1)?$")
_MONO = re.compile(r"^R(8|10|12|14|16)(_CSI2P|_PISP_COMP1)?$")


def is_YUV(fmt: str) -> bool:
    return fmt in YUV_FORMATS


def is_RGB(fmt: str) -> bool:
    return fmt in RGB_FORMATS


def is_raw(fmt: str) -> bool:
    return bool(_BAYER.match(fmt) or _MONO.match(fmt))


def is_format_valid(fmt: str) -> bool:
    return is_YUV(fmt) or is_RGB(fmt) or is_raw(fmt) or fmt == "MJPEG"


def assert_format_valid(fmt: str) -> None:
    if not is_format_valid(fmt):
        raise ValueError(f"Invalid format: {fmt}")
