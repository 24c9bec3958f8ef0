"""V4L2 cameras (USB and CSI bridges on any Linux board), spoken to through the kernel's own API.

PyPI's PyAV wheels are built without FFmpeg's v4l2 input, so vigil drives the device node
itself: ioctls through fcntl and mmap'ed capture buffers (`V4L2Device`), and above that
`V4L2Camera` turns buffers into vigil's types per `camera.input_format`:
H.264 goes to the segment writer untouched (EncodedPacket), MJPEG is decoded with PyAV and
YUYV converted with swscale into YUV420 Frames that the pipeline encodes with libx264.

Struct layouts, constants and request numbers follow the kernel header
include/uapi/linux/videodev2.h (torvalds/linux @ 00419a6ab590b6cf584f704abbb56b7a5c388672):
v4l2_capability, v4l2_pix_format inside v4l2_format (whose union also holds v4l2_window with
its pointers, so it is pointer-aligned: 208 bytes on 64-bit, 204 on 32-bit), v4l2_fmtdesc,
v4l2_frmsizeenum, v4l2_frmivalenum, v4l2_requestbuffers, v4l2_buffer (struct timeval
timestamp and a pointer-sized union, so 88 bytes on 64-bit), v4l2_captureparm inside
v4l2_streamparm, and the VIDIOC_* codes built with the generic _IOC encoding (ARM and x86).
ctypes lays the structs out with this interpreter's ABI, so the sizes baked into the
request numbers match the machine.

The device IO (open, ioctl, mmap, poll) sits behind `DeviceIO` so tests can put a fake
kernel there (tests/fakes/v4l2_device.py) and run every line above it for real.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import mmap
import os
import re
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, Protocol

import av
import numpy as np
from loguru import logger

from hw.camera import CameraMode, EncodedPacket, Frame
from hw.errors import CameraError, CameraLost, CameraTimeout, CameraUnavailable
from hw.probe import BackendProbe, FoundCamera, NotACamera

if TYPE_CHECKING:
    from hw.factory import CameraSpec
    from hw.synthetic import FaultPlan

# -- constants from videodev2.h ---------------------------------------------------------------

V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
V4L2_MEMORY_MMAP = 1
V4L2_FIELD_ANY = 0
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_CAP_TIMEPERFRAME = 0x1000
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

# camera.input_format names and the fourccs that deliver them; auto prefers them in this order
# (H.264 costs no CPU at all, MJPEG a decode, YUYV the most USB bandwidth).
INPUT_FORMATS: dict[str, tuple[int, ...]] = {
    "h264": (V4L2_PIX_FMT_H264,),
    "mjpeg": (V4L2_PIX_FMT_MJPEG, V4L2_PIX_FMT_JPEG),
    "yuyv422": (V4L2_PIX_FMT_YUYV,),
}
AUTO_PREFERENCE = ("h264", "mjpeg", "yuyv422")
DEFAULT_BUFFER_COUNT = 4
FPS_TOLERANCE = 0.01  # relative: 333333/10000000 s per frame is 30 fps for our purposes
# Errors a V4L2 driver returns once its device has gone (uvcvideo gives ENODEV after unplug).
LOST_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.EIO, errno.ESHUTDOWN})
NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
START_CODE = b"\x00\x00\x01"
TIMESTAMP_NUDGE_SECONDS = 1e-4


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
VIDIOC_ENUM_FRAMESIZES = _ioc(_IOC_READ | _IOC_WRITE, 74, v4l2_frmsizeenum)
VIDIOC_ENUM_FRAMEINTERVALS = _ioc(_IOC_READ | _IOC_WRITE, 75, v4l2_frmivalenum)


def _text(field: ctypes.Array) -> str:  # type: ignore[type-arg]
    return bytes(field).split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _new(struct: type[ctypes.Structure]) -> tuple[bytearray, ctypes.Structure]:
    """A zeroed struct and the bytearray it lives in (what the ioctl reads and writes)."""
    buf = bytearray(ctypes.sizeof(struct))
    return buf, struct.from_buffer(buf)


# -- the device IO seam -----------------------------------------------------------------------


class MappedBuffer(Protocol):
    def __getitem__(self, index: slice) -> bytes: ...

    def close(self) -> None: ...


class DeviceIO(Protocol):
    """The few system calls a V4L2 device needs; LinuxDeviceIO is the real one."""

    def list_devices(self) -> list[str]: ...

    def open(self, path: str) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, request: int, buf: bytearray) -> None: ...

    def mmap(self, fd: int, length: int, offset: int) -> MappedBuffer: ...

    def wait_readable(self, fd: int, timeout: float) -> bool: ...


def _video_index(path: str) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path)
    return (int(match.group(1)) if match else -1, path)


class LinuxDeviceIO:
    """open/ioctl/mmap/poll on real device nodes."""

    def list_devices(self) -> list[str]:
        return sorted(glob.glob("/dev/video*"), key=_video_index)

    def open(self, path: str) -> int:
        # Non-blocking: DQBUF must never wait in the kernel; poll() does the waiting, bounded.
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, buf: bytearray) -> None:
        while True:
            try:
                fcntl.ioctl(fd, request, buf, True)
                return
            except InterruptedError:
                continue

    def mmap(self, fd: int, length: int, offset: int) -> MappedBuffer:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    def wait_readable(self, fd: int, timeout: float) -> bool:
        poller = select.poll()
        # POLLERR/POLLHUP come back on their own: an unplugged device wakes us, DQBUF says ENODEV.
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(0, int(timeout * 1000))))


LINUX_IO = LinuxDeviceIO()


# -- V4L2Device ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCaps:
    """What VIDIOC_QUERYCAP says about a device node."""

    driver: str
    card: str
    bus_info: str
    capabilities: int  # of this node (device_caps when the driver reports them)

    @property
    def is_capture(self) -> bool:
        wanted = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING
        return self.capabilities & wanted == wanted


@dataclass(frozen=True, slots=True)
class FormatDesc:
    """One pixel format from VIDIOC_ENUM_FMT."""

    fourcc: int
    description: str

    @property
    def input_format(self) -> str | None:
        """vigil's name for it (h264, mjpeg, yuyv422), or None when vigil cannot record it."""
        for name, codes in INPUT_FORMATS.items():
            if self.fourcc in codes:
                return name
        return None


@dataclass(frozen=True, slots=True)
class FrameSizes:
    """VIDIOC_ENUM_FRAMESIZES for one format: a list of sizes, or a stepwise range."""

    discrete: tuple[tuple[int, int], ...] = ()
    stepwise: tuple[int, int, int, int, int, int] | None = None  # min/max/step width, height

    def allows(self, width: int, height: int) -> bool:
        if self.stepwise is not None:
            w0, w1, ws, h0, h1, hs = self.stepwise
            return (w0 <= width <= w1 and h0 <= height <= h1
                    and (width - w0) % max(ws, 1) == 0 and (height - h0) % max(hs, 1) == 0)
        return (width, height) in self.discrete

    def describe(self) -> str:
        if self.stepwise is not None:
            w0, w1, _, h0, h1, _ = self.stepwise
            return f"{w0}x{h0} to {w1}x{h1}"
        return ", ".join(f"{w}x{h}" for w, h in self.discrete) or "no sizes listed"


@dataclass(frozen=True, slots=True)
class GrantedFormat:
    """What the driver gave after VIDIOC_S_FMT and VIDIOC_S_PARM (it may differ from the ask)."""

    fourcc: int
    width: int
    height: int
    bytesperline: int
    sizeimage: int
    fps: float | None  # None: the driver cannot set or report its frame rate


@dataclass(frozen=True, slots=True)
class CapturedBuffer:
    """One dequeued buffer's payload, copied out before the buffer went back to the driver."""

    data: bytes
    sequence: int
    flags: int
    timestamp: float | None  # CLOCK_MONOTONIC seconds, when the driver stamps that clock


class V4L2Device:
    """One V4L2 capture node: caps, formats, format and rate, mmap streaming, dequeue.

    Every failure comes out as vigil's exceptions: a device that went away (ENODEV, EIO)
    as CameraLost, one that cannot be used as CameraUnavailable, no frame in time as
    CameraTimeout. `close()` is idempotent.
    """

    def __init__(self, path: str, *, io: DeviceIO = LINUX_IO) -> None:
        self.path = path
        self._io = io
        self._fd: int | None = None
        self._maps: list[MappedBuffer] = []
        self._streaming = False

    def __repr__(self) -> str:
        state = "streaming" if self._streaming else ("open" if self._fd is not None else "closed")
        return f"<V4L2Device {self.path} {state}>"

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # -- plumbing --------------------------------------------------------------------------

    def _translate(self, err: OSError, what: str) -> CameraError:
        reason = err.strerror or str(err)
        if err.errno in LOST_ERRNOS:
            return CameraLost(f"{self.path}: {what} failed: {reason}; the camera is gone (unplugged?)")
        if err.errno == errno.EBUSY:
            return CameraUnavailable(f"{self.path}: {what} failed: the device is busy; another "
                                     "program is using it")
        if self._streaming:
            return CameraLost(f"{self.path}: {what} failed: {reason}")
        return CameraUnavailable(f"{self.path}: {what} failed: {reason}")

    def _fd_or_raise(self) -> int:
        if self._fd is None:
            raise CameraLost(f"{self.path} is not open")
        return self._fd

    def _ioctl(self, request: int, buf: bytearray, what: str) -> None:
        fd = self._fd_or_raise()
        try:
            self._io.ioctl(fd, request, buf)
        except OSError as err:
            raise self._translate(err, what) from err

    def _enumerate(self, request: int, buf: bytearray, what: str) -> bool:
        """One ENUM ioctl; False at the end of the list (EINVAL, as the API defines)."""
        fd = self._fd_or_raise()
        try:
            self._io.ioctl(fd, request, buf)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOTTY):
                return False
            raise self._translate(err, what) from err
        return True

    # -- setup -----------------------------------------------------------------------------

    def open(self) -> None:
        if self._fd is not None:
            return
        try:
            self._fd = self._io.open(self.path)
        except FileNotFoundError as err:
            raise CameraUnavailable(f"{self.path} does not exist (camera unplugged, or another "
                                    "device name?)") from err
        except PermissionError as err:
            raise CameraUnavailable(f"{self.path}: permission denied; add the vigil user to the "
                                    "'video' group") from err
        except OSError as err:
            raise CameraUnavailable(f"{self.path} did not open: {err.strerror or err}") from err

    def capabilities(self) -> DeviceCaps:
        buf, cap = _new(v4l2_capability)
        self._ioctl(VIDIOC_QUERYCAP, buf, "VIDIOC_QUERYCAP")
        caps = cap.device_caps if cap.capabilities & V4L2_CAP_DEVICE_CAPS else cap.capabilities
        return DeviceCaps(_text(cap.driver), _text(cap.card), _text(cap.bus_info), caps)

    def formats(self) -> list[FormatDesc]:
        found = []
        for index in range(256):
            buf, desc = _new(v4l2_fmtdesc)
            desc.index, desc.type = index, V4L2_BUF_TYPE_VIDEO_CAPTURE
            if not self._enumerate(VIDIOC_ENUM_FMT, buf, "VIDIOC_ENUM_FMT"):
                break
            found.append(FormatDesc(desc.pixelformat, _text(desc.description)))
        return found

    def frame_sizes(self, code: int) -> FrameSizes:
        sizes = []
        for index in range(1024):
            buf, size = _new(v4l2_frmsizeenum)
            size.index, size.pixel_format = index, code
            if not self._enumerate(VIDIOC_ENUM_FRAMESIZES, buf, "VIDIOC_ENUM_FRAMESIZES"):
                break
            if size.type != V4L2_FRMSIZE_TYPE_DISCRETE:
                s = size.stepwise
                return FrameSizes(stepwise=(s.min_width, s.max_width, s.step_width,
                                            s.min_height, s.max_height, s.step_height))
            sizes.append((size.discrete.width, size.discrete.height))
        return FrameSizes(discrete=tuple(sizes))

    def frame_rates(self, code: int, width: int, height: int) -> list[float]:
        """Discrete frame rates for one size, fastest first ([] when the driver lists none)."""
        rates = []
        for index in range(256):
            buf, ival = _new(v4l2_frmivalenum)
            ival.index, ival.pixel_format, ival.width, ival.height = index, code, width, height
            if not self._enumerate(VIDIOC_ENUM_FRAMEINTERVALS, buf, "VIDIOC_ENUM_FRAMEINTERVALS"):
                break
            if ival.type != V4L2_FRMIVAL_TYPE_DISCRETE:
                slowest = ival.stepwise.max
                fastest = ival.stepwise.min
                return [r for r in (_fps(fastest), _fps(slowest)) if r]
            rate = _fps(ival.discrete)
            if rate:
                rates.append(rate)
        return sorted(set(rates), reverse=True)

    def set_format(self, code: int, width: int, height: int, fps: float) -> GrantedFormat:
        """Ask for a format, size and rate; returns what the driver actually granted."""
        buf, fmt = _new(v4l2_format)
        fmt.type = V4L2_BUF_TYPE_VIDEO_CAPTURE
        pix = fmt.fmt.pix
        pix.width, pix.height, pix.pixelformat, pix.field = width, height, code, V4L2_FIELD_ANY
        self._ioctl(VIDIOC_S_FMT, buf, "VIDIOC_S_FMT")
        granted_fps = self._set_rate(fps)
        return GrantedFormat(pix.pixelformat, pix.width, pix.height, pix.bytesperline,
                             pix.sizeimage, granted_fps)

    def _set_rate(self, fps: float) -> float | None:
        buf, parm = _new(v4l2_streamparm)
        parm.type = V4L2_BUF_TYPE_VIDEO_CAPTURE
        if not self._enumerate(VIDIOC_G_PARM, buf, "VIDIOC_G_PARM"):
            return None
        if not parm.parm.capture.capability & V4L2_CAP_TIMEPERFRAME:
            return _fps(parm.parm.capture.timeperframe)
        period = 1 / Fraction(fps).limit_denominator(1001)
        parm.parm.capture.timeperframe.numerator = period.numerator
        parm.parm.capture.timeperframe.denominator = period.denominator
        self._ioctl(VIDIOC_S_PARM, buf, "VIDIOC_S_PARM")
        return _fps(parm.parm.capture.timeperframe)

    # -- streaming -------------------------------------------------------------------------

    def start_streaming(self, buffer_count: int = DEFAULT_BUFFER_COUNT) -> int:
        """Allocate and map buffers, queue them all, STREAMON; returns the buffer count granted."""
        fd = self._fd_or_raise()
        buf, req = _new(v4l2_requestbuffers)
        req.count, req.type, req.memory = buffer_count, V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
        self._ioctl(VIDIOC_REQBUFS, buf, "VIDIOC_REQBUFS")
        if req.count < 1:
            raise CameraUnavailable(f"{self.path}: the driver granted no capture buffers")
        for index in range(req.count):
            qbuf, vbuf = _new(v4l2_buffer)
            vbuf.index, vbuf.type, vbuf.memory = index, V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
            self._ioctl(VIDIOC_QUERYBUF, qbuf, "VIDIOC_QUERYBUF")
            try:
                self._maps.append(self._io.mmap(fd, vbuf.length, vbuf.m.offset))
            except OSError as err:
                raise self._translate(err, "mmap") from err
            self._ioctl(VIDIOC_QBUF, qbuf, "VIDIOC_QBUF")
        kind = bytearray(ctypes.c_int(V4L2_BUF_TYPE_VIDEO_CAPTURE))
        self._ioctl(VIDIOC_STREAMON, kind, "VIDIOC_STREAMON")
        self._streaming = True
        return int(req.count)

    def dequeue(self, timeout: float) -> CapturedBuffer:
        """The next filled buffer's payload (copied), the buffer handed straight back.

        CameraTimeout when none comes within `timeout`; CameraLost when the device is gone.
        """
        fd = self._fd_or_raise()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CameraTimeout(f"{self.path}: no frame within {timeout:.2f}s")
            try:
                ready = self._io.wait_readable(fd, left)
            except OSError as err:
                raise self._translate(err, "poll") from err
            if not ready:
                continue
            buf, vbuf = _new(v4l2_buffer)
            vbuf.type, vbuf.memory = V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
            try:
                self._io.ioctl(fd, VIDIOC_DQBUF, buf)
            except BlockingIOError:
                continue
            except OSError as err:
                raise self._translate(err, "VIDIOC_DQBUF") from err
            data = self._maps[vbuf.index][: vbuf.bytesused]
            stamp = None
            if vbuf.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC:
                stamp = vbuf.timestamp.tv_sec + vbuf.timestamp.tv_usec / 1e6
            captured = CapturedBuffer(bytes(data), vbuf.sequence, vbuf.flags, stamp or None)
            self._ioctl(VIDIOC_QBUF, buf, "VIDIOC_QBUF")
            return captured

    def close(self) -> None:
        """Stop streaming, unmap, release the buffers and the node; idempotent, never raises."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._streaming:
            self._streaming = False
            try:
                self._io.ioctl(fd, VIDIOC_STREAMOFF, bytearray(ctypes.c_int(V4L2_BUF_TYPE_VIDEO_CAPTURE)))
            except OSError as err:
                logger.debug("STREAMOFF failed device={} error={}", self.path, err)
        maps, self._maps = self._maps, []
        for mapped in maps:
            try:
                mapped.close()
            except (OSError, BufferError) as err:
                logger.debug("unmapping a buffer failed device={} error={}", self.path, err)
        if maps:
            buf, req = _new(v4l2_requestbuffers)
            req.count, req.type, req.memory = 0, V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
            try:
                self._io.ioctl(fd, VIDIOC_REQBUFS, buf)
            except OSError as err:
                logger.debug("releasing buffers failed device={} error={}", self.path, err)
        try:
            self._io.close(fd)
        except OSError as err:
            logger.debug("closing failed device={} error={}", self.path, err)


def _fps(fract: v4l2_fract) -> float | None:
    """Frames per second from a time-per-frame fraction (None for 0/0)."""
    if not fract.numerator or not fract.denominator:
        return None
    return float(fract.denominator) / float(fract.numerator)


# -- H.264 Annex-B ------------------------------------------------------------------------------


def nal_units(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of every NAL unit in an Annex-B byte string, start past the start code."""
    starts = []
    pos = data.find(START_CODE)
    while pos >= 0:
        starts.append(pos + 3)
        pos = data.find(START_CODE, pos + 3)
    units = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        if i + 1 < len(starts) and end > start and data[end - 1] == 0:
            end -= 1  # the zero byte of a four-byte start code belongs to the next unit
        if start < len(data):
            units.append((data[start] & 0x1F, start, end))
    return units


def nal_types(data: bytes) -> list[int]:
    return [kind for kind, _, _ in nal_units(data)]


class ParameterSets:
    """The stream's latest SPS and PPS, to put in front of IDRs that come without them."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.inserted = 0

    def complete(self, data: bytes) -> tuple[bytes, bool]:
        """(the access unit, ready for the segment writer; whether a segment may start with it).

        An IDR before any SPS/PPS was seen cannot start a decodable segment, so it does not
        count as a keyframe; the writer skips ahead to the next one.
        """
        units = nal_units(data)
        kinds = {kind for kind, _, _ in units}
        for kind, start, end in units:
            if kind == NAL_SPS:
                self.sps = data[start:end]
            elif kind == NAL_PPS:
                self.pps = data[start:end]
        if NAL_IDR not in kinds or not (self.sps and self.pps):
            return data, False
        if NAL_SPS not in kinds or NAL_PPS not in kinds:
            # A camera that sends its headers once: every segment must start decodable.
            self.inserted += 1
            data = b"\x00\x00\x00\x01" + self.sps + b"\x00\x00\x00\x01" + self.pps + data
        return data, True


# -- V4L2Camera ---------------------------------------------------------------------------------


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
        self._headers = ParameterSets()
        self._decoder = av.CodecContext.create("mjpeg", "r") if name == "mjpeg" else None
        self._last_timestamp = float("-inf")
        output: Literal["frames", "packets"] = "packets" if name == "h264" else "frames"
        self._mode = CameraMode(asked.width, asked.height, asked.fps, output)
        logger.info("v4l2 camera open device={} card={} driver={} format={} size={}x{} fps={}",
                    self.device, caps.card, caps.driver, name, granted.width, granted.height,
                    f"{granted.fps:g}" if granted.fps else "unknown")

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
        while True:
            captured = dev.dequeue(max(0.0, deadline - time.monotonic()))
            if captured.flags & V4L2_BUF_FLAG_ERROR or not captured.data:
                self.buffers_skipped += 1  # the driver says the payload is damaged or empty
                continue
            return self._convert(captured)

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
            dev.close()
            logger.info("v4l2 camera closed device={}", self.device)
        self._decoder = None


# -- probing, for auto-detection and `vigil doctor` ---------------------------------------------


def describe_device(path: str, *, io: DeviceIO = LINUX_IO, detail: bool = False) -> FoundCamera | NotACamera:
    """What is at `path`: a camera vigil can record (with its modes when `detail`), or why not."""
    dev = V4L2Device(path, io=io)
    try:
        dev.open()
        caps = dev.capabilities()
        if not caps.is_capture:
            return NotACamera(path, f"{caps.card} ({caps.driver}) is not a capture device")
        usable = [f for f in dev.formats() if f.input_format]
        if not usable:
            return NotACamera(path, f"{caps.card} ({caps.driver}) offers no h264, mjpeg or yuyv422")
        modes = tuple(_describe_modes(dev, f) if detail else str(f.input_format) for f in usable)
        best = choose_input_format("auto", usable, path)
        encoder = ("pass-through (the camera's own H.264)" if best.input_format == "h264"
                   else f"libx264 from {best.input_format}")
        return FoundCamera("v4l2", path, f"{caps.card} ({caps.driver}, {caps.bus_info})", modes, encoder)
    except CameraError as err:
        return NotACamera(path, str(err))
    finally:
        dev.close()


def _describe_modes(dev: V4L2Device, desc: FormatDesc) -> str:
    sizes = dev.frame_sizes(desc.fourcc)
    parts = []
    for width, height in sizes.discrete:
        rates = dev.frame_rates(desc.fourcc, width, height)
        parts.append(f"{width}x{height}" + (f"@{rates[0]:g}" if rates else ""))
    if sizes.stepwise is not None:
        parts.append(sizes.describe())
    return f"{desc.input_format} {', '.join(parts) or '(no sizes listed)'}"


@dataclass(frozen=True)
class V4L2Maker:
    """Makes V4L2 cameras for the factory and probes the machine's /dev/video* nodes."""

    io: DeviceIO = LINUX_IO

    def __call__(self, spec: CameraSpec, faults: FaultPlan) -> V4L2Camera:
        return V4L2Camera(spec.mode, spec.device, input_format=spec.input_format, io=self.io)

    def probe(self, *, detail: bool = False) -> BackendProbe:
        paths = self.io.list_devices()
        if not paths:
            return BackendProbe("v4l2", (), "no /dev/video* device")
        found: list[FoundCamera] = []
        skipped: list[NotACamera] = []
        for path in paths:
            result = describe_device(path, io=self.io, detail=detail)
            if isinstance(result, FoundCamera):
                found.append(result)
            else:
                skipped.append(result)
        if found:
            summary = "found " + "; ".join(f"{c.address} {c.name}" for c in found)
        else:
            summary = (f"{', '.join(paths)}: no capture device offering h264, mjpeg or yuyv422")
        return BackendProbe("v4l2", tuple(found), summary, tuple(skipped))
