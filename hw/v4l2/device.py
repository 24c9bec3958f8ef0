"""One V4L2 capture node driven through the kernel's API: caps, formats, mmap streaming, dequeue.

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
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from loguru import logger

from hw.errors import CameraError, CameraLost, CameraTimeout, CameraUnavailable
from hw.v4l2.abi import (
    V4L2_BUF_FLAG_TIMESTAMP_MASK,
    V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC,
    V4L2_BUF_TYPE_VIDEO_CAPTURE,
    V4L2_CAP_DEVICE_CAPS,
    V4L2_CAP_STREAMING,
    V4L2_CAP_TIMEPERFRAME,
    V4L2_CAP_VIDEO_CAPTURE,
    V4L2_CID_MPEG_VIDEO_BITRATE,
    V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
    V4L2_CTRL_FLAG_DISABLED,
    V4L2_CTRL_FLAG_INACTIVE,
    V4L2_CTRL_FLAG_READ_ONLY,
    V4L2_FIELD_ANY,
    V4L2_FRMIVAL_TYPE_DISCRETE,
    V4L2_FRMSIZE_TYPE_DISCRETE,
    V4L2_MEMORY_MMAP,
    V4L2_PIX_FMT_H264,
    V4L2_PIX_FMT_JPEG,
    V4L2_PIX_FMT_MJPEG,
    V4L2_PIX_FMT_YUYV,
    VIDIOC_DQBUF,
    VIDIOC_ENUM_FMT,
    VIDIOC_ENUM_FRAMEINTERVALS,
    VIDIOC_ENUM_FRAMESIZES,
    VIDIOC_G_CTRL,
    VIDIOC_G_PARM,
    VIDIOC_QBUF,
    VIDIOC_QUERYBUF,
    VIDIOC_QUERYCAP,
    VIDIOC_QUERYCTRL,
    VIDIOC_REQBUFS,
    VIDIOC_S_CTRL,
    VIDIOC_S_FMT,
    VIDIOC_S_PARM,
    VIDIOC_STREAMOFF,
    VIDIOC_STREAMON,
    v4l2_buffer,
    v4l2_capability,
    v4l2_control,
    v4l2_fmtdesc,
    v4l2_format,
    v4l2_fract,
    v4l2_frmivalenum,
    v4l2_frmsizeenum,
    v4l2_queryctrl,
    v4l2_requestbuffers,
    v4l2_streamparm,
)

# camera.input_format names and the fourccs that deliver them; auto prefers them in this order
# (H.264 costs no CPU at all, MJPEG a decode, YUYV the most USB bandwidth).
INPUT_FORMATS: dict[str, tuple[int, ...]] = {
    "h264": (V4L2_PIX_FMT_H264,),
    "mjpeg": (V4L2_PIX_FMT_MJPEG, V4L2_PIX_FMT_JPEG),
    "yuyv422": (V4L2_PIX_FMT_YUYV,),
}
AUTO_PREFERENCE = ("h264", "mjpeg", "yuyv422")
DEFAULT_BUFFER_COUNT = 4
# Errors a V4L2 driver returns once its device has gone (uvcvideo gives ENODEV after unplug).
LOST_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.EIO, errno.ESHUTDOWN})


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
class ControlRange:
    """One control as VIDIOC_QUERYCTRL describes it."""

    cid: int
    name: str
    minimum: int
    maximum: int
    step: int
    default: int
    flags: int

    @property
    def is_settable(self) -> bool:
        return not self.flags & (V4L2_CTRL_FLAG_DISABLED | V4L2_CTRL_FLAG_READ_ONLY
                                 | V4L2_CTRL_FLAG_INACTIVE)

    def nearest(self, value: int) -> int:
        """`value` as the control can hold it: within minimum..maximum, on its step."""
        step = max(self.step, 1)
        on_step = self.minimum + round((value - self.minimum) / step) * step
        return min(self.maximum, max(self.minimum, on_step))


@dataclass(frozen=True, slots=True)
class RateKnobs:
    """What the driver lets vigil set to make an H.264 stream cheaper while it streams."""

    bitrate: ControlRange | None  # V4L2_CID_MPEG_VIDEO_BITRATE, when settable
    bitrate_now: int | None  # its value now (VIDIOC_G_CTRL)
    timeperframe: bool  # V4L2_CAP_TIMEPERFRAME: VIDIOC_S_PARM sets the frame interval
    force_keyframe: bool  # V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, when settable


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

    def query_control(self, cid: int) -> ControlRange | None:
        """VIDIOC_QUERYCTRL for one control; None when the driver has no such control (EINVAL)."""
        buf, ctrl = _new(v4l2_queryctrl)
        ctrl.id = cid
        if not self._enumerate(VIDIOC_QUERYCTRL, buf, "VIDIOC_QUERYCTRL"):
            return None
        return ControlRange(ctrl.id, _text(ctrl.name), ctrl.minimum, ctrl.maximum, ctrl.step,
                            ctrl.default_value, ctrl.flags)

    def rate_knobs(self) -> RateKnobs:
        """The bit-rate control, keyframe button and frame-interval capability the driver offers."""
        bitrate = self.query_control(V4L2_CID_MPEG_VIDEO_BITRATE)
        if bitrate is not None and not bitrate.is_settable:
            bitrate = None
        now = self.get_control(V4L2_CID_MPEG_VIDEO_BITRATE) if bitrate is not None else None
        key = self.query_control(V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME)
        buf, parm = _new(v4l2_streamparm)
        parm.type = V4L2_BUF_TYPE_VIDEO_CAPTURE
        timeperframe = bool(self._enumerate(VIDIOC_G_PARM, buf, "VIDIOC_G_PARM")
                            and parm.parm.capture.capability & V4L2_CAP_TIMEPERFRAME)
        return RateKnobs(bitrate, now, timeperframe, key is not None and key.is_settable)

    def adaptive_knobs(self) -> list[str]:
        """The knobs this camera offers that could lower an encoded stream's cost, in words:
        an H.264 bit-rate control (V4L2_CID_MPEG_VIDEO_BITRATE) and a settable frame interval
        (V4L2_CAP_TIMEPERFRAME in VIDIOC_G_PARM)."""
        knobs = self.rate_knobs()
        words = []
        if knobs.bitrate is not None:
            b = knobs.bitrate
            words.append(f"bit rate ({b.minimum}..{b.maximum} bit/s, now {knobs.bitrate_now})")
        if knobs.timeperframe:
            words.append("frame interval (VIDIOC_S_PARM timeperframe)")
        return words

    def get_control(self, cid: int) -> int | None:
        """VIDIOC_G_CTRL: the control's value now; None when it cannot be read (write-only)."""
        buf, ctrl = _new(v4l2_control)
        ctrl.id = cid
        if not self._enumerate(VIDIOC_G_CTRL, buf, "VIDIOC_G_CTRL"):
            return None
        return int(ctrl.value)

    def set_control(self, cid: int, value: int) -> None:
        """VIDIOC_S_CTRL (the control framework routes it to codec-class controls too)."""
        buf, ctrl = _new(v4l2_control)
        ctrl.id, ctrl.value = cid, value
        self._ioctl(VIDIOC_S_CTRL, buf, "VIDIOC_S_CTRL")

    def set_frame_rate(self, fps: float) -> tuple[float | None, bool]:
        """A new frame interval while streaming: (the rate granted, whether streaming restarted).

        Drivers that apply VIDIOC_S_PARM live (bcm2835-v4l2) answer at once; uvcvideo refuses
        it while streaming (EBUSY, uvc_ioctl_s_parm), so the stream is stopped, the interval
        set and the same buffers queued and streamed again: the camera's encoder starts over
        with an IDR, and the frames of that pause are not made.
        """
        buf, parm = _new(v4l2_streamparm)
        parm.type = V4L2_BUF_TYPE_VIDEO_CAPTURE
        period = 1 / Fraction(fps).limit_denominator(1001)
        parm.parm.capture.timeperframe.numerator = period.numerator
        parm.parm.capture.timeperframe.denominator = period.denominator
        fd = self._fd_or_raise()
        try:
            self._io.ioctl(fd, VIDIOC_S_PARM, buf)
            return _fps(parm.parm.capture.timeperframe), False
        except OSError as err:
            if err.errno != errno.EBUSY or not self._streaming:
                raise self._translate(err, "VIDIOC_S_PARM") from err
        kind = bytearray(ctypes.c_int(V4L2_BUF_TYPE_VIDEO_CAPTURE))
        self._ioctl(VIDIOC_STREAMOFF, kind, "VIDIOC_STREAMOFF")
        try:
            self._ioctl(VIDIOC_S_PARM, buf, "VIDIOC_S_PARM")
        finally:  # refused or not, the camera streams again (STREAMOFF handed every buffer back)
            self._queue_all_and_stream()
        return _fps(parm.parm.capture.timeperframe), True

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
        self._queue_all_and_stream()
        self._streaming = True
        return int(req.count)

    def _queue_all_and_stream(self) -> None:
        """QBUF every mapped buffer, then STREAMON."""
        for index in range(len(self._maps)):
            qbuf, vbuf = _new(v4l2_buffer)
            vbuf.index, vbuf.type, vbuf.memory = index, V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
            self._ioctl(VIDIOC_QBUF, qbuf, "VIDIOC_QBUF")
        kind = bytearray(ctypes.c_int(V4L2_BUF_TYPE_VIDEO_CAPTURE))
        self._ioctl(VIDIOC_STREAMON, kind, "VIDIOC_STREAMON")

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
