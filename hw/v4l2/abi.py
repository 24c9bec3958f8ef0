"""The videodev2.h ABI: fourccs, the ctypes structs, the VIDIOC_* request numbers, the constants.

Struct layouts, constants and request numbers follow the kernel header
include/uapi/linux/videodev2.h (torvalds/linux @ 00419a6ab590b6cf584f704abbb56b7a5c388672):
v4l2_capability, v4l2_pix_format inside v4l2_format (whose union also holds v4l2_window with
its pointers, so it is pointer-aligned: 208 bytes on 64-bit, 204 on 32-bit), v4l2_fmtdesc,
v4l2_frmsizeenum, v4l2_frmivalenum, v4l2_requestbuffers, v4l2_buffer (struct timeval
timestamp and a pointer-sized union, so 88 bytes on 64-bit), v4l2_captureparm inside
v4l2_streamparm, v4l2_queryctrl, v4l2_control (VIDIOC_G_CTRL/VIDIOC_S_CTRL), and
V4L2_CID_MPEG_VIDEO_BITRATE and V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME from v4l2-controls.h (as
linux-libc-dev installs both in /usr/include/linux), and the VIDIOC_* codes built with the
generic _IOC encoding (ARM and x86).
ctypes lays the structs out with this interpreter's ABI, so the sizes baked into the
request numbers match the machine.
"""

from __future__ import annotations

import ctypes

# -- constants from videodev2.h ---------------------------------------------------------------

V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
V4L2_MEMORY_MMAP = 1
V4L2_FIELD_ANY = 0
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_CAP_TIMEPERFRAME = 0x1000
# Controls (v4l2-controls.h): V4L2_CID_CODEC_BASE is V4L2_CTRL_CLASS_CODEC | 0x900.
V4L2_CID_CODEC_BASE = 0x00990000 | 0x900
V4L2_CID_MPEG_VIDEO_BITRATE = V4L2_CID_CODEC_BASE + 207
V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME = V4L2_CID_CODEC_BASE + 229  # a button: writing asks for an IDR
V4L2_CTRL_TYPE_BUTTON = 4
V4L2_CTRL_FLAG_DISABLED = 0x0001
V4L2_CTRL_FLAG_READ_ONLY = 0x0004
V4L2_CTRL_FLAG_INACTIVE = 0x0010
V4L2_BUF_FLAG_KEYFRAME = 0x00000008
V4L2_BUF_FLAG_ERROR = 0x00000040
V4L2_BUF_FLAG_TIMESTAMP_MASK = 0x0000E000
V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC = 0x00002000
V4L2_FRMSIZE_TYPE_DISCRETE = 1
V4L2_FRMIVAL_TYPE_DISCRETE = 1


def fourcc(code: str) -> int:
    """The little-endian four character code, as v4l2_fourcc(a, b, c, d)."""
    return int.from_bytes(code.encode("ascii"), "little")


def fourcc_text(value: int) -> str:
    return value.to_bytes(4, "little").decode("ascii", errors="replace").strip()


V4L2_PIX_FMT_H264 = fourcc("H264")
V4L2_PIX_FMT_MJPEG = fourcc("MJPG")
V4L2_PIX_FMT_JPEG = fourcc("JPEG")
V4L2_PIX_FMT_YUYV = fourcc("YUYV")


# -- the structs (videodev2.h) ----------------------------------------------------------------

u8, u32, s32 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_int32


class v4l2_capability(ctypes.Structure):  # struct names as in videodev2.h
    _fields_ = [("driver", u8 * 16), ("card", u8 * 32), ("bus_info", u8 * 32), ("version", u32),
                ("capabilities", u32), ("device_caps", u32), ("reserved", u32 * 3)]


class v4l2_pix_format(ctypes.Structure):
    _fields_ = [("width", u32), ("height", u32), ("pixelformat", u32), ("field", u32),
                ("bytesperline", u32), ("sizeimage", u32), ("colorspace", u32), ("priv", u32)]


class _v4l2_format_union(ctypes.Union):
    # raw_data[200] sizes it; the pointer member stands for v4l2_window's pointers, which
    # make the kernel's union pointer-aligned.
    _fields_ = [("pix", v4l2_pix_format), ("raw_data", u8 * 200), ("_align", ctypes.c_void_p)]


class v4l2_format(ctypes.Structure):
    _fields_ = [("type", u32), ("fmt", _v4l2_format_union)]


class v4l2_fmtdesc(ctypes.Structure):
    _fields_ = [("index", u32), ("type", u32), ("flags", u32), ("description", u8 * 32),
                ("pixelformat", u32), ("reserved", u32 * 4)]


class v4l2_frmsize_discrete(ctypes.Structure):
    _fields_ = [("width", u32), ("height", u32)]


class v4l2_frmsize_stepwise(ctypes.Structure):
    _fields_ = [("min_width", u32), ("max_width", u32), ("step_width", u32),
                ("min_height", u32), ("max_height", u32), ("step_height", u32)]


class _frmsize_union(ctypes.Union):
    _fields_ = [("discrete", v4l2_frmsize_discrete), ("stepwise", v4l2_frmsize_stepwise)]


class v4l2_frmsizeenum(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("index", u32), ("pixel_format", u32), ("type", u32), ("u", _frmsize_union),
                ("reserved", u32 * 2)]


class v4l2_fract(ctypes.Structure):
    _fields_ = [("numerator", u32), ("denominator", u32)]


class v4l2_frmival_stepwise(ctypes.Structure):
    _fields_ = [("min", v4l2_fract), ("max", v4l2_fract), ("step", v4l2_fract)]


class _frmival_union(ctypes.Union):
    _fields_ = [("discrete", v4l2_fract), ("stepwise", v4l2_frmival_stepwise)]


class v4l2_frmivalenum(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("index", u32), ("pixel_format", u32), ("width", u32), ("height", u32),
                ("type", u32), ("u", _frmival_union), ("reserved", u32 * 2)]


class v4l2_requestbuffers(ctypes.Structure):
    _fields_ = [("count", u32), ("type", u32), ("memory", u32), ("reserved", u32 * 2)]


class timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class v4l2_timecode(ctypes.Structure):
    _fields_ = [("type", u32), ("flags", u32), ("frames", u8), ("seconds", u8), ("minutes", u8),
                ("hours", u8), ("userbits", u8 * 4)]


class _v4l2_buffer_m(ctypes.Union):
    _fields_ = [("offset", u32), ("userptr", ctypes.c_ulong), ("planes", ctypes.c_void_p),
                ("fd", s32)]


class v4l2_buffer(ctypes.Structure):
    _fields_ = [("index", u32), ("type", u32), ("bytesused", u32), ("flags", u32), ("field", u32),
                ("timestamp", timeval), ("timecode", v4l2_timecode), ("sequence", u32),
                ("memory", u32), ("m", _v4l2_buffer_m), ("length", u32), ("reserved2", u32),
                ("reserved", u32)]


class v4l2_queryctrl(ctypes.Structure):
    _fields_ = [("id", u32), ("type", u32), ("name", u8 * 32), ("minimum", s32), ("maximum", s32),
                ("step", s32), ("default_value", s32), ("flags", u32), ("reserved", u32 * 2)]


class v4l2_control(ctypes.Structure):
    _fields_ = [("id", u32), ("value", s32)]


class v4l2_captureparm(ctypes.Structure):
    _fields_ = [("capability", u32), ("capturemode", u32), ("timeperframe", v4l2_fract),
                ("extendedmode", u32), ("readbuffers", u32), ("reserved", u32 * 4)]


class _v4l2_streamparm_union(ctypes.Union):
    _fields_ = [("capture", v4l2_captureparm), ("raw_data", u8 * 200)]


class v4l2_streamparm(ctypes.Structure):
    _fields_ = [("type", u32), ("parm", _v4l2_streamparm_union)]


# -- request numbers (asm-generic/ioctl.h encoding) -------------------------------------------

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, number: int, struct: type[ctypes.Structure] | type[ctypes.c_int]) -> int:
    return (direction << 30) | (ctypes.sizeof(struct) << 16) | (ord("V") << 8) | number


VIDIOC_QUERYCAP = _ioc(_IOC_READ, 0, v4l2_capability)
VIDIOC_ENUM_FMT = _ioc(_IOC_READ | _IOC_WRITE, 2, v4l2_fmtdesc)
VIDIOC_G_FMT = _ioc(_IOC_READ | _IOC_WRITE, 4, v4l2_format)
VIDIOC_S_FMT = _ioc(_IOC_READ | _IOC_WRITE, 5, v4l2_format)
VIDIOC_REQBUFS = _ioc(_IOC_READ | _IOC_WRITE, 8, v4l2_requestbuffers)
VIDIOC_QUERYBUF = _ioc(_IOC_READ | _IOC_WRITE, 9, v4l2_buffer)
VIDIOC_QBUF = _ioc(_IOC_READ | _IOC_WRITE, 15, v4l2_buffer)
VIDIOC_DQBUF = _ioc(_IOC_READ | _IOC_WRITE, 17, v4l2_buffer)
VIDIOC_STREAMON = _ioc(_IOC_WRITE, 18, ctypes.c_int)
VIDIOC_STREAMOFF = _ioc(_IOC_WRITE, 19, ctypes.c_int)
VIDIOC_G_PARM = _ioc(_IOC_READ | _IOC_WRITE, 21, v4l2_streamparm)
VIDIOC_S_PARM = _ioc(_IOC_READ | _IOC_WRITE, 22, v4l2_streamparm)
VIDIOC_G_CTRL = _ioc(_IOC_READ | _IOC_WRITE, 27, v4l2_control)
VIDIOC_S_CTRL = _ioc(_IOC_READ | _IOC_WRITE, 28, v4l2_control)
VIDIOC_QUERYCTRL = _ioc(_IOC_READ | _IOC_WRITE, 36, v4l2_queryctrl)
VIDIOC_ENUM_FRAMESIZES = _ioc(_IOC_READ | _IOC_WRITE, 74, v4l2_frmsizeenum)
VIDIOC_ENUM_FRAMEINTERVALS = _ioc(_IOC_READ | _IOC_WRITE, 75, v4l2_frmivalenum)
