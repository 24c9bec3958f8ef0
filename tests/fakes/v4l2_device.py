"""A fake V4L2 kernel: device nodes that answer the ioctls vigil issues, with real video in the buffers.

It stands at the system-call seam (hw.v4l2.device.DeviceIO: open, close, ioctl, mmap, poll), so
everything in hw/v4l2/ above that seam runs for real: V4L2Device's struct packing and
error translation, V4L2Camera's format choice, H.264 pass-through, MJPEG decoding and YUYV
conversion. Why there and not a fake V4L2Device: the ioctl layer is where vigil can get a
struct layout, a request number or an errno translation wrong, and a fake above it would
hide exactly that.

The fake decodes and encodes the ioctl arguments from raw bytes with `struct` layouts
written from linux include/uapi/linux/videodev2.h (torvalds/linux @ 00419a6a) for LP64
(x86-64, aarch64), independently of hw/v4l2/abi.py's ctypes definitions, and computes the
request numbers from those sizes; a request it does not know gets ENOTTY, as from a driver.
VIDIOC_QUERYCTRL's struct v4l2_queryctrl, VIDIOC_G_CTRL/VIDIOC_S_CTRL's struct v4l2_control,
V4L2_CID_MPEG_VIDEO_BITRATE and V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME are from the same header
and include/uapi/linux/v4l2-controls.h (as linux-libc-dev installs them).

Controls behave as the kernel's control framework and Documentation/userspace-api/media/v4l/
vidioc-g-ctrl.rst say: an unknown or disabled id is EINVAL, setting a read-only control or
reading a write-only one (a button) EACCES, an integer is clamped into its range and onto
its step. They are honoured for real: the bit rate is libx264's (ABR under a VBV capped at
the control's default or the rate the stream started at, if higher; reconfigured from the
next frame, as FFmpeg's libx264 wrapper does when bit_rate changes), FORCE_KEY_FRAME makes the
next frame an IDR. S_PARM while streaming
is refused with EBUSY as uvcvideo does (uvc_ioctl_s_parm), or, with `live_rate`, applied
from the next frame as bcm2835-v4l2 does (vidioc_s_parm clips to its range and sets the
camera's frame rate while it runs); either way the rate granted is the nearest one offered.

Behaviour follows uvcvideo and the V4L2 spec: ENUM_* end with EINVAL; S_FMT and S_PARM never
refuse but grant the nearest size and rate offered; REQBUFS/QUERYBUF/QBUF/DQBUF with MMAP
buffers; a non-blocking DQBUF with nothing ready gives EAGAIN; frames carry CLOCK_MONOTONIC
timestamps (V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC). After unplug() the node vanishes (open gives
ENOENT), every ioctl on a handle opened before gives ENODEV and poll() reports the handle
ready so the reader finds out; replug() brings a fresh node back, old handles stay dead.
stall() stops frames without an error (a camera that hangs). Unlike a real driver the fake
never drops a frame when the reader is late: it hands over the backlog, so a gap in a
recording is vigil's doing (lose_frames() drops some as a driver without a free buffer
would). A frame is made when it is dequeued, stamped with the time it was due, except that
before a control or the frame interval changes the frames already due are made at once with
the settings in effect until then, as a camera captured them.

Frames carry vigil's frame-number code (hw/framecode.py), numbered 0, 1, 2, ... per fake
kernel across devices and streams. Payloads are real: H.264 from libx264 through PyAV in
Annex-B form, SPS/PPS on every IDR (repeat_headers=True) or only once at stream start as
many cameras do; MJPEG from FFmpeg's mjpeg encoder (4:2:2, as webcams send it); YUYV from
swscale. Or a list of pre-encoded H.264 access units, served once per stream (benchmarks).
"""

from __future__ import annotations

import collections
import errno
import itertools
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import av
import numpy as np

from hw import framecode

# -- the kernel ABI, written down from videodev2.h for LP64 -------------------------------------

CAPABILITY = struct.Struct("<16s32s32sIII3I")  # struct v4l2_capability, 104 bytes
FMTDESC = struct.Struct("<III32sI4I")  # struct v4l2_fmtdesc, 64
FRMSIZEENUM = struct.Struct("<III6I2I")  # struct v4l2_frmsizeenum, 44
FRMIVALENUM = struct.Struct("<IIIII6I2I")  # struct v4l2_frmivalenum, 52
FORMAT_SIZE = 208  # struct v4l2_format: u32 type, 4 bytes padding, a pointer-aligned 200-byte union
PIX_FORMAT = struct.Struct("<8I")  # struct v4l2_pix_format at offset 8 of v4l2_format
PIX_OFFSET = 8
STREAMPARM_SIZE = 204  # struct v4l2_streamparm: u32 type, 200-byte union
CAPTUREPARM = struct.Struct("<6I4I")  # struct v4l2_captureparm at offset 4
REQUESTBUFFERS = struct.Struct("<III2I")  # struct v4l2_requestbuffers, 20
BUFFER = struct.Struct("<5I4x2q2I4B4s2IQ3I4x")  # struct v4l2_buffer, 88 (timeval, pointer union)
QUERYCTRL_STRUCT = struct.Struct("<II32siiiiI2I")  # struct v4l2_queryctrl, 68
CONTROL = struct.Struct("<Ii")  # struct v4l2_control, 8
INT = struct.Struct("<i")


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("V") << 8) | number


_R, _W, _RW = 2, 1, 3
QUERYCAP = _ioc(_R, 0, CAPABILITY.size)
ENUM_FMT = _ioc(_RW, 2, FMTDESC.size)
G_FMT = _ioc(_RW, 4, FORMAT_SIZE)
S_FMT = _ioc(_RW, 5, FORMAT_SIZE)
REQBUFS = _ioc(_RW, 8, REQUESTBUFFERS.size)
QUERYBUF = _ioc(_RW, 9, BUFFER.size)
QBUF = _ioc(_RW, 15, BUFFER.size)
DQBUF = _ioc(_RW, 17, BUFFER.size)
STREAMON = _ioc(_W, 18, INT.size)
STREAMOFF = _ioc(_W, 19, INT.size)
G_PARM = _ioc(_RW, 21, STREAMPARM_SIZE)
S_PARM = _ioc(_RW, 22, STREAMPARM_SIZE)
G_CTRL = _ioc(_RW, 27, CONTROL.size)
S_CTRL = _ioc(_RW, 28, CONTROL.size)
QUERYCTRL = _ioc(_RW, 36, QUERYCTRL_STRUCT.size)
ENUM_FRAMESIZES = _ioc(_RW, 74, FRMSIZEENUM.size)
ENUM_FRAMEINTERVALS = _ioc(_RW, 75, FRMIVALENUM.size)

BUF_TYPE_VIDEO_CAPTURE = 1
MEMORY_MMAP = 1
FIELD_NONE = 1
CAP_VIDEO_CAPTURE = 0x1
CAP_STREAMING = 0x04000000
CAP_DEVICE_CAPS = 0x80000000
CAP_VIDEO_M2M = 0x8000
CAP_TIMEPERFRAME = 0x1000
# v4l2-controls.h: V4L2_CID_CODEC_BASE = V4L2_CTRL_CLASS_CODEC (0x00990000) | 0x900; +207.
CID_MPEG_VIDEO_BITRATE = 0x009909CF
CID_MPEG_VIDEO_FORCE_KEY_FRAME = 0x009909E5  # V4L2_CID_CODEC_BASE + 229
CTRL_TYPE_INTEGER, CTRL_TYPE_BUTTON = 1, 4
BUTTONS = frozenset({CID_MPEG_VIDEO_FORCE_KEY_FRAME})
CTRL_FLAG_DISABLED, CTRL_FLAG_READ_ONLY, CTRL_FLAG_INACTIVE = 0x1, 0x4, 0x10
BUF_FLAG_MAPPED, BUF_FLAG_QUEUED, BUF_FLAG_DONE = 0x1, 0x2, 0x4
BUF_FLAG_KEYFRAME = 0x8
BUF_FLAG_TIMESTAMP_MONOTONIC = 0x2000
FRMSIZE_TYPE_DISCRETE = 1
FRMIVAL_TYPE_DISCRETE = 1
COLORSPACE_SRGB, COLORSPACE_JPEG = 8, 7
MAX_BUFFERS = 32
PAGE_BYTES = 4096
LATE_RESTART_SECONDS = 1.0  # a reader this far behind gets frames from now on, as the synthetic camera
FIRST_FD = 1000


def fourcc(code: str) -> int:
    return int.from_bytes(code.encode("ascii"), "little")


FORMATS = {  # input format name: (fourcc, description as uvcvideo lists it, compressed)
    "h264": (fourcc("H264"), "H.264", True),
    "mjpeg": (fourcc("MJPG"), "Motion-JPEG", True),
    "yuyv422": (fourcc("YUYV"), "YUYV 4:2:2", False),
}
_FOURCC_NAME = {code: name for name, (code, _, _) in FORMATS.items()}


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


# -- frames -------------------------------------------------------------------------------------

STRIPE_PERIOD_PX = 64
VBV_BUFFER_FRACTION = 8  # libx264's VBV buffer, as a fraction of a second at its maximum rate
QP_MAX = 40  # libx264's quantiser cap: past it the frame-number code no longer survives


def draw_yuv420(width: int, height: int, n: int) -> np.ndarray:
    """A YUV420 planar frame (H*3/2, W): scrolling stripes, frame number n in the top rows."""
    rows = np.arange(height, dtype=np.int64)[:, None]
    cols = np.arange(width, dtype=np.int64)[None, :]
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = (((rows + cols + 4 * n) % STRIPE_PERIOD_PX) * 3 + 30).astype(np.uint8)
    out[height:] = 128
    framecode.draw(out[:height], n)
    return out


class _PayloadMaker:
    """Turns frame numbers into the bytes a camera in one format and size would deliver."""

    def __init__(self, name: str, width: int, height: int, fps: float, *, gop: int,
                 repeat_headers: bool, packets: Sequence[bytes] | None,
                 bitrate: int | None = None, vbv: int | None = None) -> None:
        self.name, self.width, self.height = name, width, height
        self._packets = iter(packets) if packets else None
        self._ctx: av.CodecContext | None = None
        self._headers_pending = b""
        self.force_keyframe = False  # the next frame is an IDR (V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME)
        if name == "h264" and self._packets is None:
            ctx = av.CodecContext.create("libx264", "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
            ctx.time_base = Fraction(1, 1_000_000)
            ctx.framerate = Fraction(fps).limit_denominator(1001)
            ctx.gop_size = gop
            if not repeat_headers:
                ctx.flags |= av.codec.context.Flags.global_header
            options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1",
                       "x264-params": f"keyint={gop}:scenecut=0:repeat-headers={int(repeat_headers)}"
                                       f":qpmax={QP_MAX}"}
            if bitrate:
                # x264 changes a running encoder's bit rate only under a VBV (encoder_try_reconfig).
                ctx.bit_rate = bitrate
                cap = max(bitrate, vbv or 0)
                # A buffer of an eighth of a second: a new target shows within a few frames, as
                # a camera's hardware rate control follows it (a second's buffer took seconds).
                # It holds about one IDR at 320x240, so a forced IDR just after the camera's own
                # would starve to QP 51 (a flat grey frame, or P-frames repeating the picture
                # before them) but for the quantiser cap, as a camera's encoder has one
                # (tests/unit/test_fake_v4l2_h264.py).
                options.update(maxrate=str(cap), bufsize=str(cap // VBV_BUFFER_FRACTION))
            ctx.options = options
            ctx.open()
            self._headers_pending = b"" if repeat_headers else bytes(ctx.extradata or b"")
            self._ctx = ctx
        elif name == "mjpeg":
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj422p"
            ctx.time_base = Fraction(1, 30)
            ctx.open()
            self._ctx = ctx

    def set_bitrate(self, bitrate: int) -> None:
        """libx264's target from the next frame on (FFmpeg's wrapper reconfigures x264)."""
        if self._ctx is not None and self.name == "h264":
            self._ctx.bit_rate = bitrate

    def make(self, n: int, stamp: float | None = None) -> tuple[bytes, bool]:
        """(payload, is a keyframe) for frame n, captured `stamp` seconds into the stream."""
        if self._packets is not None:
            data = next(self._packets)
            return data, b"\x00\x00\x01\x65" in data or b"\x00\x00\x01\x25" in data
        image = draw_yuv420(self.width, self.height, n)
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        if self.name == "yuyv422":
            return frame.reformat(format="yuyv422").to_ndarray().tobytes(), False
        assert self._ctx is not None
        if self.name == "mjpeg":
            frame = frame.reformat(format="yuvj422p")
            frame.pts = n
            return b"".join(bytes(p) for p in self._ctx.encode(frame)), True
        frame.pts = round(stamp * 1e6) if stamp is not None else n * 33_333
        if self.force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I  # an IDR: forced-idr is set
            self.force_keyframe = False
        packets = self._ctx.encode(frame)
        data = b"".join(bytes(p) for p in packets)
        is_key = any(p.is_keyframe for p in packets)
        if is_key and self._headers_pending:
            data, self._headers_pending = self._headers_pending + data, b""
        return data, is_key


# -- devices ------------------------------------------------------------------------------------


@dataclass
class _Stream:
    fourcc: int
    width: int
    height: int
    fps: float
    buffers: list[mmap.mmap] = field(default_factory=list)
    queued: collections.deque[int] = field(default_factory=collections.deque)
    maker: _PayloadMaker | None = None
    next_due: float = 0.0
    started: float = 0.0
    sequence: int = 0
    streaming: bool = False
    # Frames made before dequeued (data, keyframe, stamp, sequence): see _capture_due.
    captured: collections.deque[tuple[bytes, bool, float, int]] = field(
        default_factory=collections.deque)


class FakeVideoDevice:
    """One fake camera node: what it offers, its fault switches, and its history.

    `formats` maps input format names (h264, mjpeg, yuyv422) to the sizes offered;
    `rates` are the frame rates offered at every size. `history` holds (time.monotonic(),
    event) pairs; `payloads` the H.264 access units served, when `keep_payloads` is set.
    """

    def __init__(self, kernel: FakeV4L2, path: str, *, formats: dict[str, Sequence[tuple[int, int]]],
                 rates: Sequence[float], card: str, gop: int, repeat_headers: bool, paced: bool,
                 packets: Sequence[bytes] | None, keep_payloads: bool, capture: bool,
                 controls: dict[int, tuple[str, int, int, int, int, int]] | None = None,
                 timeperframe: bool = True, live_rate: bool = False) -> None:
        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown formats {sorted(unknown)}; the fake offers {sorted(FORMATS)}")
        self.kernel = kernel
        self.path = path
        self.formats = {name: [tuple(s) for s in sizes] for name, sizes in formats.items()}
        self.rates = sorted(rates, reverse=True)
        self.card = card
        self.gop = gop
        self.repeat_headers = repeat_headers
        self.paced = paced
        self.packets = list(packets) if packets else None
        self.keep_payloads = keep_payloads
        self.capture = capture
        # VIDIOC_QUERYCTRL answers: id -> (name, minimum, maximum, step, default, flags)
        self.controls = dict(controls or {})
        self.values = {cid: spec[4] for cid, spec in self.controls.items()}  # VIDIOC_G_CTRL
        self.timeperframe = timeperframe  # G_PARM reports V4L2_CAP_TIMEPERFRAME, S_PARM sets it
        self.live_rate = live_rate  # S_PARM while streaming: applied (bcm2835-v4l2), else EBUSY
        self.history: list[tuple[float, str]] = []
        self.payloads: list[bytes] = []
        self.frames_served = 0
        self._present = True
        self._generation = 0
        self._stalled_until = 0.0
        self._losing = 0  # frames still to be lost (lose_frames)
        name = next(iter(self.formats))
        width, height = self.formats[name][0]
        self._stream = _Stream(FORMATS[name][0], width, height, self.rates[0])

    def __repr__(self) -> str:
        return (f"<FakeVideoDevice {self.path} {'present' if self._present else 'unplugged'} "
                f"frames={self.frames_served}>")

    # -- faults --------------------------------------------------------------------------------

    def unplug(self) -> None:
        """The cable is pulled: the node vanishes, open handles answer ENODEV from now on."""
        with self.kernel.cond:
            self._present = False
            self._generation += 1
            self._stream.streaming = False
            self._note("unplug")

    def replug(self) -> None:
        """The camera is back as a fresh node; handles from before stay dead."""
        with self.kernel.cond:
            self._present = True
            self._stream = _Stream(self._stream.fourcc, self._stream.width, self._stream.height,
                                   self._stream.fps)
            self._note("replug")

    def stall(self, seconds: float | None = None) -> None:
        """No frames (and no error) for `seconds`, or until resume()."""
        with self.kernel.cond:
            self._stalled_until = float("inf") if seconds is None else time.monotonic() + seconds
            self._note(f"stall seconds={seconds}")

    def lose_frames(self, count: int) -> None:
        """The next `count` frames are captured and encoded but never delivered, as when the
        reader left the driver no free buffer: their sequence numbers and frame numbers are
        used up, and the H.264 after them refers to frames that never arrive."""
        with self.kernel.cond:
            self._losing += count
            self._note(f"lose_frames {count}")

    def resume(self) -> None:
        """Frames again, from now (nothing was captured while stalled)."""
        with self.kernel.cond:
            self._stalled_until = 0.0
            self._stream.next_due = time.monotonic()
            self._note("resume")

    @property
    def is_present(self) -> bool:
        return self._present

    @property
    def is_streaming(self) -> bool:
        return self._stream.streaming

    def events(self, name: str) -> list[tuple[float, str]]:
        with self.kernel.cond:
            return [(t, e) for t, e in self.history if e.split(" ", 1)[0] == name]

    def _note(self, event: str) -> None:
        self.history.append((time.monotonic(), event))
        self.kernel.cond.notify_all()

    # -- the driver side -----------------------------------------------------------------------

    def _offered(self) -> list[tuple[str, int]]:
        return [(name, FORMATS[name][0]) for name in self.formats]

    def _nearest_size(self, name: str, width: int, height: int) -> tuple[int, int]:
        return min(self.formats[name], key=lambda s: (abs(s[0] - width) + abs(s[1] - height), -s[0]))

    def _nearest_rate(self, fps: float) -> float:
        return min(self.rates, key=lambda r: (abs(r - fps), -r))

    def _sizeimage(self, name: str, width: int, height: int) -> tuple[int, int]:
        """(bytesperline, sizeimage) as uvcvideo reports them."""
        if name == "yuyv422":
            return width * 2, width * height * 2
        return 0, max(width * height * 2, 64 * 1024)

    def ioctl(self, request: int, buf: bytearray) -> None:
        handler = self._HANDLERS.get(request)
        if handler is None:
            raise _oserror(errno.ENOTTY)
        handler(self, buf)

    def _querycap(self, buf: bytearray) -> None:
        caps = (CAP_VIDEO_CAPTURE | CAP_STREAMING) if self.capture else CAP_VIDEO_M2M | CAP_STREAMING
        CAPABILITY.pack_into(buf, 0, b"uvcvideo" if self.capture else b"fake-codec",
                             self.card.encode(), f"usb-fake-{self.path}".encode(), 0x60000,
                             caps | CAP_DEVICE_CAPS, caps, 0, 0, 0)

    def _enum_fmt(self, buf: bytearray) -> None:
        index, kind, *_ = FMTDESC.unpack_from(buf)
        offered = self._offered() if self.capture else []
        if kind != BUF_TYPE_VIDEO_CAPTURE or index >= len(offered):
            raise _oserror(errno.EINVAL)
        name, code = offered[index]
        flags = 1 if FORMATS[name][2] else 0
        FMTDESC.pack_into(buf, 0, index, kind, flags, FORMATS[name][1].encode(), code, 0, 0, 0, 0)

    def _enum_framesizes(self, buf: bytearray) -> None:
        index, code, *_ = FRMSIZEENUM.unpack_from(buf)
        name = _FOURCC_NAME.get(code)
        if name not in self.formats or index >= len(self.formats[name]):
            raise _oserror(errno.EINVAL)
        width, height = self.formats[name][index]
        FRMSIZEENUM.pack_into(buf, 0, index, code, FRMSIZE_TYPE_DISCRETE, width, height, 0, 0, 0, 0, 0, 0)

    def _enum_frameintervals(self, buf: bytearray) -> None:
        index, code, width, height, *_ = FRMIVALENUM.unpack_from(buf)
        name = _FOURCC_NAME.get(code)
        if name not in self.formats or (width, height) not in self.formats[name] or index >= len(self.rates):
            raise _oserror(errno.EINVAL)
        period = 1 / Fraction(self.rates[index]).limit_denominator(1001)
        FRMIVALENUM.pack_into(buf, 0, index, code, width, height, FRMIVAL_TYPE_DISCRETE,
                              period.numerator, period.denominator, 0, 0, 0, 0, 0, 0)

    def _write_format(self, buf: bytearray) -> None:
        s = self._stream
        name = _FOURCC_NAME[s.fourcc]
        line, size = self._sizeimage(name, s.width, s.height)
        colour = COLORSPACE_SRGB if name == "yuyv422" else COLORSPACE_JPEG
        PIX_FORMAT.pack_into(buf, PIX_OFFSET, s.width, s.height, s.fourcc, FIELD_NONE, line, size, colour, 0)

    def _g_fmt(self, buf: bytearray) -> None:
        if struct.unpack_from("<I", buf)[0] != BUF_TYPE_VIDEO_CAPTURE:
            raise _oserror(errno.EINVAL)
        self._write_format(buf)

    def _s_fmt(self, buf: bytearray) -> None:
        if struct.unpack_from("<I", buf)[0] != BUF_TYPE_VIDEO_CAPTURE:
            raise _oserror(errno.EINVAL)
        if self._stream.buffers:
            raise _oserror(errno.EBUSY)
        width, height, code = PIX_FORMAT.unpack_from(buf, PIX_OFFSET)[:3]
        name = _FOURCC_NAME.get(code)
        if name not in self.formats:
            name = next(iter(self.formats))  # as drivers do: an unknown format becomes the default
        width, height = self._nearest_size(name, width, height)
        s = self._stream
        s.fourcc, s.width, s.height = FORMATS[name][0], width, height
        self._write_format(buf)
        self._note(f"s_fmt {name} {width}x{height}")

    def _parm(self, buf: bytearray, *, write: bool) -> None:
        if struct.unpack_from("<I", buf)[0] != BUF_TYPE_VIDEO_CAPTURE:
            raise _oserror(errno.EINVAL)
        s = self._stream
        if write and self.timeperframe and s.streaming and not self.live_rate:
            raise _oserror(errno.EBUSY)  # uvcvideo: the interval is negotiated before streaming
        if write and self.timeperframe:
            self._capture_due()
            numerator, denominator = CAPTUREPARM.unpack_from(buf, 4)[2:4]
            if numerator and denominator:
                s.fps = self._nearest_rate(denominator / numerator)
                self._note(f"s_parm fps={s.fps:g}")
        period = 1 / Fraction(s.fps).limit_denominator(1001)
        CAPTUREPARM.pack_into(buf, 4, CAP_TIMEPERFRAME if self.timeperframe else 0, 0,
                              period.numerator, period.denominator, 0, len(s.buffers), 0, 0, 0, 0)

    def _queryctrl(self, buf: bytearray) -> None:
        """The control asked for by id, or EINVAL when the driver has none (as the spec says)."""
        cid = QUERYCTRL_STRUCT.unpack_from(buf)[0]
        if cid not in self.controls:
            raise _oserror(errno.EINVAL)
        name, minimum, maximum, step, default, flags = self.controls[cid]
        kind = CTRL_TYPE_BUTTON if cid in BUTTONS else CTRL_TYPE_INTEGER
        QUERYCTRL_STRUCT.pack_into(buf, 0, cid, kind, name.encode()[:31], minimum,
                                   maximum, step, default, flags, 0, 0)

    def _control(self, buf: bytearray) -> tuple[int, int]:
        cid, value = CONTROL.unpack_from(buf)
        if cid not in self.controls or self.controls[cid][5] & CTRL_FLAG_DISABLED:
            raise _oserror(errno.EINVAL)
        return cid, value

    def _active_value(self, cid: int) -> int | None:
        """A control's value where it has an effect (an inactive one has none, as the flag says)."""
        spec = self.controls.get(cid)
        if spec is None or spec[5] & (CTRL_FLAG_DISABLED | CTRL_FLAG_INACTIVE):
            return None
        return self.values[cid]

    def _g_ctrl(self, buf: bytearray) -> None:
        cid, _ = self._control(buf)
        if cid in BUTTONS:
            raise _oserror(errno.EACCES)  # a button is write-only
        CONTROL.pack_into(buf, 0, cid, self.values[cid])

    def _s_ctrl(self, buf: bytearray) -> None:
        cid, value = self._control(buf)
        _, minimum, maximum, step, _, flags = self.controls[cid]
        if flags & CTRL_FLAG_READ_ONLY:
            raise _oserror(errno.EACCES)
        self._capture_due()
        if cid in BUTTONS:
            if cid == CID_MPEG_VIDEO_FORCE_KEY_FRAME and self._stream.maker is not None:
                self._stream.maker.force_keyframe = True
            self._note(f"s_ctrl {cid:#x}")
            return
        # The control framework rounds an integer onto its step and clamps it into range.
        value = minimum + round((value - minimum) / max(step, 1)) * max(step, 1)
        value = min(maximum, max(minimum, value))
        self.values[cid] = value
        if cid == CID_MPEG_VIDEO_BITRATE and self._stream.maker is not None and \
                self._active_value(cid) is not None:
            self._stream.maker.set_bitrate(value)
        CONTROL.pack_into(buf, 0, cid, value)
        self._note(f"s_ctrl {cid:#x} {value}")

    def _reqbufs(self, buf: bytearray) -> None:
        count, kind, memory, *_ = REQUESTBUFFERS.unpack_from(buf)
        s = self._stream
        if kind != BUF_TYPE_VIDEO_CAPTURE or memory != MEMORY_MMAP:
            raise _oserror(errno.EINVAL)
        if s.streaming:
            raise _oserror(errno.EBUSY)
        s.buffers, s.queued = [], collections.deque()
        count = min(count, MAX_BUFFERS)
        if count:
            _, size = self._sizeimage(_FOURCC_NAME[s.fourcc], s.width, s.height)
            s.buffers = [mmap.mmap(-1, size) for _ in range(count)]
        REQUESTBUFFERS.pack_into(buf, 0, count, kind, memory, 0, 0)

    def _buffer_fields(self, buf: bytearray) -> list[int | bytes]:
        fields = list(BUFFER.unpack_from(buf))
        index, kind, memory = fields[0], fields[1], fields[15]
        if kind != BUF_TYPE_VIDEO_CAPTURE or memory != MEMORY_MMAP or index >= len(self._stream.buffers):
            raise _oserror(errno.EINVAL)
        return fields

    def _pack_buffer(self, buf: bytearray, index: int, *, used: int = 0, flags: int = 0,
                     stamp: float = 0.0, sequence: int = 0) -> None:
        length = len(self._stream.buffers[index])
        seconds = int(stamp)
        BUFFER.pack_into(buf, 0, index, BUF_TYPE_VIDEO_CAPTURE, used, flags | BUF_FLAG_MAPPED, FIELD_NONE,
                         seconds, round((stamp - seconds) * 1e6), 0, 0, 0, 0, 0, 0, b"\0" * 4,
                         sequence, MEMORY_MMAP, index * PAGE_BYTES, length, 0, 0)

    def _querybuf(self, buf: bytearray) -> None:
        index = int(self._buffer_fields(buf)[0])
        queued = BUF_FLAG_QUEUED if index in self._stream.queued else 0
        self._pack_buffer(buf, index, flags=queued)

    def _qbuf(self, buf: bytearray) -> None:
        index = int(self._buffer_fields(buf)[0])
        if index in self._stream.queued:
            raise _oserror(errno.EINVAL)
        self._stream.queued.append(index)
        self._pack_buffer(buf, index, flags=BUF_FLAG_QUEUED)
        self.kernel.cond.notify_all()

    def _frame_ready(self, now: float) -> bool:
        s = self._stream
        if s.captured and s.streaming and s.queued:
            return True
        if not s.streaming or not s.queued or now < self._stalled_until:
            return False
        if self.packets is not None and s.sequence >= len(self.packets):
            return False  # the pre-encoded stream is over: the camera goes quiet
        return not self.paced or now >= s.next_due

    def _capture_due(self) -> None:
        """Make now, with the settings still in effect, every frame already due that the reader
        has not taken: a camera captured and encoded those at their time, before the control
        about to change (the fake otherwise makes a frame only when it is dequeued, which for
        a late reader would give frames stamped before a change the change's settings)."""
        s = self._stream
        now = time.monotonic()
        if not (self.paced and s.streaming and s.maker is not None and self.packets is None) \
                or now < self._stalled_until or self._losing \
                or s.next_due < now - LATE_RESTART_SECONDS:  # DQBUF starts the schedule anew
            return
        while s.next_due <= now:
            data, is_key = s.maker.make(self.kernel.take_frame_number(), s.next_due - s.started)
            s.captured.append((data, is_key, s.next_due, s.sequence))
            s.sequence += 1
            s.next_due += 1.0 / s.fps

    def _dqbuf(self, buf: bytearray) -> None:
        fields = list(BUFFER.unpack_from(buf))
        if fields[1] != BUF_TYPE_VIDEO_CAPTURE or fields[15] != MEMORY_MMAP:
            raise _oserror(errno.EINVAL)
        s = self._stream
        if not s.streaming:
            raise _oserror(errno.EINVAL)
        now = time.monotonic()
        if self._stalled_until and now >= self._stalled_until:
            self._stalled_until = 0.0
            s.next_due = now  # the sensor starts again: nothing was captured meanwhile
        if not self._frame_ready(now):
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if s.captured:
            index = s.queued.popleft()
            data, is_key, stamp, sequence = s.captured.popleft()
            self._deliver(buf, index, data, is_key, stamp, sequence)
            return
        if self.paced and s.next_due < now - LATE_RESTART_SECONDS:
            s.next_due = now
        # Unpaced (a replay as fast as it is read): the stamps still say `fps`, as captured.
        stamp = s.next_due if self.paced else s.started + s.sequence / s.fps
        assert s.maker is not None
        while self._losing and self.paced:
            # Made on time and thrown away: the reader sees the next one when it is due.
            self._losing -= 1
            s.maker.make(self.kernel.take_frame_number(), stamp - s.started)
            s.sequence += 1
            s.next_due += 1.0 / s.fps
            stamp = s.next_due
            if not self._frame_ready(now):
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        index = s.queued.popleft()
        number = self.kernel.take_frame_number()
        data, is_key = s.maker.make(number, stamp - s.started)
        self._deliver(buf, index, data, is_key, stamp, s.sequence)
        s.sequence += 1
        s.next_due += 1.0 / s.fps

    def _deliver(self, buf: bytearray, index: int, data: bytes, is_key: bool, stamp: float,
                 sequence: int) -> None:
        mapped = self._stream.buffers[index]
        if len(data) > len(mapped):
            raise _oserror(errno.ENOSPC)  # the fake's sizeimage was too small: a bug in the fake
        mapped[: len(data)] = data
        flags = BUF_FLAG_DONE | BUF_FLAG_TIMESTAMP_MONOTONIC | (BUF_FLAG_KEYFRAME if is_key else 0)
        self._pack_buffer(buf, index, used=len(data), flags=flags, stamp=stamp, sequence=sequence)
        if self.keep_payloads:
            self.payloads.append(data)
        self.frames_served += 1

    def _streamon(self, buf: bytearray) -> None:
        if INT.unpack_from(buf)[0] != BUF_TYPE_VIDEO_CAPTURE:
            raise _oserror(errno.EINVAL)
        s = self._stream
        if not s.buffers:
            raise _oserror(errno.EINVAL)
        if s.streaming:
            return
        name = _FOURCC_NAME[s.fourcc]
        s.maker = _PayloadMaker(name, s.width, s.height, s.fps, gop=self.gop,
                                repeat_headers=self.repeat_headers, packets=self.packets,
                                bitrate=self._active_value(CID_MPEG_VIDEO_BITRATE),
                                vbv=self.controls.get(CID_MPEG_VIDEO_BITRATE, ("", 0, 0, 0, 0, 0))[4])
        s.streaming, s.next_due, s.started, s.sequence = True, time.monotonic(), time.monotonic(), 0
        self._note(f"streamon {name} {s.width}x{s.height}@{s.fps:g}")

    def _streamoff(self, buf: bytearray) -> None:
        s = self._stream
        if s.streaming:
            s.streaming = False
            self._note("streamoff")
        s.queued.clear()  # STREAMOFF hands every buffer back to userspace
        s.captured.clear()  # and what was captured but not dequeued is gone

    _HANDLERS: ClassVar[dict[int, Callable[[FakeVideoDevice, bytearray], None]]] = {
        QUERYCAP: _querycap, ENUM_FMT: _enum_fmt, ENUM_FRAMESIZES: _enum_framesizes,
        ENUM_FRAMEINTERVALS: _enum_frameintervals, G_FMT: _g_fmt, S_FMT: _s_fmt,
        G_PARM: lambda self, buf: self._parm(buf, write=False),
        S_PARM: lambda self, buf: self._parm(buf, write=True),
        REQBUFS: _reqbufs, QUERYBUF: _querybuf, QBUF: _qbuf, DQBUF: _dqbuf,
        STREAMON: _streamon, STREAMOFF: _streamoff, QUERYCTRL: _queryctrl,
        G_CTRL: _g_ctrl, S_CTRL: _s_ctrl,
    }


@dataclass
class _Handle:
    device: FakeVideoDevice
    generation: int


class FakeV4L2:
    """The fake kernel: device nodes by path, and the system calls hw.v4l2.device.DeviceIO asks for."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.devices: dict[str, FakeVideoDevice] = {}
        self._aliases: dict[str, str] = {}
        self._handles: dict[int, _Handle] = {}
        self._fds = itertools.count(FIRST_FD)
        self._numbers = itertools.count()

    def add_device(
        self,
        path: str = "/dev/video0",
        *,
        formats: dict[str, Sequence[tuple[int, int]]] | None = None,
        rates: Sequence[float] = (30.0,),
        card: str = "Fake UVC Camera",
        by_id: str | None = None,
        gop: int = 15,
        repeat_headers: bool = True,
        paced: bool = True,
        packets: Sequence[bytes] | None = None,
        keep_payloads: bool = False,
        capture: bool = True,
        controls: dict[int, tuple[str, int, int, int, int, int]] | None = None,
        timeperframe: bool = True,
        live_rate: bool = False,
    ) -> FakeVideoDevice:
        """Plug in a camera node (default: H.264, MJPEG and YUYV at 160x120, 30 fps).

        `by_id` adds the stable /dev/v4l/by-id/<by_id> name for it; `capture=False` makes a
        node that is no camera (a codec's, say); `paced=False` serves frames as fast as they
        are dequeued, stamped as if captured at the device's rate (a replay); `controls`
        are what VIDIOC_QUERYCTRL finds, by id: (name, minimum, maximum, step, default, flags);
        `timeperframe=False` is a driver whose frame interval cannot be set (G_PARM without
        V4L2_CAP_TIMEPERFRAME, S_PARM ignored); `live_rate` one that sets it while streaming
        (bcm2835-v4l2) where uvcvideo answers EBUSY.
        """
        offered = formats if formats is not None else {
            "h264": [(160, 120)], "mjpeg": [(160, 120)], "yuyv422": [(160, 120)]}
        with self.cond:
            device = FakeVideoDevice(self, path, formats=offered, rates=rates, card=card, gop=gop,
                                     repeat_headers=repeat_headers, paced=paced, packets=packets,
                                     keep_payloads=keep_payloads, capture=capture,
                                     controls=controls, timeperframe=timeperframe,
                                     live_rate=live_rate)
            self.devices[path] = device
            if by_id is not None:
                self._aliases[f"/dev/v4l/by-id/{by_id}"] = path
        return device

    def take_frame_number(self) -> int:
        return next(self._numbers)

    def _handle(self, fd: int) -> FakeVideoDevice:
        handle = self._handles.get(fd)
        if handle is None:
            raise _oserror(errno.EBADF)
        if not handle.device.is_present or handle.generation != handle.device._generation:
            raise _oserror(errno.ENODEV)
        return handle.device

    # -- hw.v4l2.device.DeviceIO -------------------------------------------------------------------

    def list_devices(self) -> list[str]:
        with self.cond:
            return sorted(p for p, d in self.devices.items() if d.is_present)

    def open(self, path: str) -> int:
        with self.cond:
            device = self.devices.get(self._aliases.get(path, path))
            if device is None or not device.is_present:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            fd = next(self._fds)
            self._handles[fd] = _Handle(device, device._generation)
            device._note(f"open fd={fd}")
            return fd

    def close(self, fd: int) -> None:
        with self.cond:
            handle = self._handles.pop(fd, None)
            if handle is None:
                raise _oserror(errno.EBADF)
            device = handle.device
            if handle.generation == device._generation and device.is_present:
                # Closing the streaming handle stops the stream and frees its buffers.
                device._stream.streaming = False
                device._stream.buffers, device._stream.queued = [], collections.deque()
            device._note(f"close fd={fd}")

    def ioctl(self, fd: int, request: int, buf: bytearray) -> None:
        with self.cond:
            self._handle(fd).ioctl(request, buf)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        with self.cond:
            device = self._handle(fd)
            buffers = device._stream.buffers
            index = offset // PAGE_BYTES
            if offset % PAGE_BYTES or index >= len(buffers) or length > len(buffers[index]):
                raise _oserror(errno.EINVAL)
            return buffers[index]

    def wait_readable(self, fd: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                try:
                    device = self._handle(fd)
                except OSError:
                    return True  # POLLERR: the reader finds out from its next ioctl
                now = time.monotonic()
                if device._frame_ready(now):
                    return True
                left = deadline - now
                if left <= 0:
                    return False
                s = device._stream
                if device._stalled_until > now:
                    due = device._stalled_until
                elif s.streaming and s.queued and device.paced:
                    due = s.next_due
                else:
                    due = float("inf")  # woken by QBUF, STREAMON, unplug or resume
                wake = min(left, due - now)
                self.cond.wait(max(wake, 0.0005))
