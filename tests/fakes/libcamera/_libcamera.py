"""A fake of libcamera's Python binding (`libcamera._libcamera`), at the binding's own API.

Written from the pybind11 sources of raspberrypi/libcamera @
26bfadc66e8d7f727a993fe58174217b8a96f7f9, src/py/libcamera/:
- py_main.cpp: CameraManager (singleton() behind a weak pointer, version, get, cameras,
  event_fd, get_ready_requests), Camera (id, acquire, release, start(controls), stop,
  generate_configuration, configure, create_request(cookie), queue_request, streams,
  controls, properties; failures raise RuntimeError "Failed to <verb> camera: <strerror>",
  pybind's translation of std::system_error), SensorConfiguration, CameraConfiguration
  (Status Valid/Adjusted/Invalid, iteration, validate, at, size, empty, sensor_config,
  orientation), StreamConfiguration (stream, size, pixel_format, stride, frame_size,
  buffer_count, formats, color_space), StreamFormats, FrameBufferAllocator, FrameBuffer and
  FrameBuffer.Plane (fd/offset/length; setting fd keeps a duplicate, as SharedFD does),
  Stream, ControlInfo, Request (add_buffer, status, buffers, cookie, sequence,
  has_pending_buffers, set_control, metadata, reuse), FrameMetadata (status, sequence,
  timestamp, planes with bytes_used), PixelFormat;
- py_camera_manager.cpp: completed requests pushed from the camera's thread and signalled
  through an eventfd (non-blocking, so get_ready_requests() is [] when nothing is ready);
- py_helpers.cpp: Python values to ControlValues by the control's type (an int control
  refuses a float, as pybind's casters do) and back (arrays as tuples);
- py_enums.cpp, py_geometry.cpp, py_color_space.cpp, py_transform.cpp (in _geometry.py),
  py_controls_generated.cpp.in (in _ids.py).
Behaviour below the binding follows src/libcamera/camera.cpp (the state machine:
acquire/configure/start/stop/release allowed only from the states it names, -EBUSY,
-EACCES, -ENODEV once disconnected; stop() cancels queued requests) and the Raspberry Pi
pipeline handler (src/libcamera/pipeline/rpi/common/pipeline_base.cpp: validate() picks the
sensor mode from sensor_config, or Invalid when no mode matches it; raw streams take the
mode's size and packed format; YUV420 rows are 64-byte aligned).

What is fake: no kernel, ISP or IPA. A thread per started camera fills each queued
request's buffers at the configured frame rate (FrameDurationLimits, clamped to the sensor
mode) with a picture whose top 16 luma rows carry the frame's number in the synthetic
camera's code (ARCHITECTURE.md), so what is recorded can be checked frame by frame. The
sensors and faults are in system.py.
"""

from __future__ import annotations

import enum
import errno
import logging
import mmap
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

from . import system as _system
from ._geometry import (
    PIXEL_FORMATS,
    ColorSpace,
    Orientation,
    PixelFormat,
    Point,
    Rectangle,
    Size,
    SizeRange,
    StreamRole,
    Transform,
)
from ._ids import CONTROLS, PROPERTIES, ControlId, ControlType, controls, properties

__all__ = [
    "Camera", "CameraConfiguration", "CameraManager", "ColorSpace", "ControlId", "ControlInfo",
    "ControlType", "FrameBuffer", "FrameBufferAllocator", "FrameMetadata", "Orientation",
    "PixelFormat", "Point", "Rectangle", "Request", "SensorConfiguration", "Size", "SizeRange",
    "Stream", "StreamConfiguration", "StreamFormats", "StreamRole", "Transform", "controls",
    "log_set_level", "properties",
]

_log = logging.getLogger("libcamera")
THREAD_PREFIX = "libcamera-fake"
STRIDE_ALIGN = 64
CODE_ROWS, CODE_BITS = 16, 32
THREAD_JOIN_TIMEOUT_S = 5.0
MAX_LATENESS_S = 0.5  # a frame thread later than this restarts the sensor's time grid


def _fail(what: str, err: int) -> RuntimeError:
    return RuntimeError(f"{what}: {os.strerror(err)}")


def log_set_level(category: str, level: str) -> None:
    _log.debug("log_set_level(%s, %s)", category, level)


# -- control values -------------------------------------------------------------------------


def _cast(ob: Any, kind: type, ctype: str) -> Any:
    if kind is bool:
        return bool(ob)
    if kind is int:
        if isinstance(ob, float) or not hasattr(ob, "__index__"):
            raise RuntimeError(f"Unable to cast Python instance of type {type(ob)} to C++ type '{ctype}'")
        return int(ob)
    if kind is float:
        if not isinstance(ob, int | float) and not hasattr(ob, "__float__"):
            raise RuntimeError(f"Unable to cast Python instance of type {type(ob)} to C++ type '{ctype}'")
        return float(ob)
    if not isinstance(ob, kind):
        raise RuntimeError(f"Unable to cast Python instance of type {type(ob)} to C++ type '{ctype}'")
    return ob


_KINDS: dict[ControlType, tuple[type, str]] = {
    ControlType.Bool: (bool, "bool"), ControlType.Byte: (int, "unsigned char"),
    ControlType.Integer32: (int, "int"), ControlType.Integer64: (int, "long"),
    ControlType.Float: (float, "float"), ControlType.String: (str, "std::string_view"),
    ControlType.Rectangle: (Rectangle, "libcamera::Rectangle"), ControlType.Size: (Size, "libcamera::Size"),
    ControlType.Point: (Point, "libcamera::Point"),
}


def py_to_control_value(ob: Any, type_: ControlType) -> Any:
    """py_helpers.cpp pyToControlValue: a list or tuple is an array, else one value."""
    if type_ == ControlType.Null:
        return None
    kind, ctype = _KINDS[type_]
    if isinstance(ob, list | tuple) and type_ not in (ControlType.Bool, ControlType.String, ControlType.Size):
        return tuple(_cast(v, kind, ctype) for v in ob)
    return _cast(ob, kind, ctype)


class ControlInfo:
    """py_main.cpp pyControlInfo: min, max, default, values."""

    def __init__(self, min: Any, max: Any, default: Any = None, values: list[Any] | None = None) -> None:
        self._min, self._max, self._default = min, max, default
        self._values = list(values or [])

    min = property(lambda self: self._min)
    max = property(lambda self: self._max)
    default = property(lambda self: self._default)
    values = property(lambda self: list(self._values))

    def __str__(self) -> str:
        return f"[{self._min}..{self._max}]"

    def __repr__(self) -> str:
        return f"libcamera.ControlInfo({self})"


# -- buffers ----------------------------------------------------------------------------------


class _SharedFD:
    """libcamera's SharedFD: a duplicate of the fd it was given, closed with its last copy."""

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd) if fd >= 0 else -1
        if self.fd >= 0:
            weakref.finalize(self, os.close, self.fd)


class FrameMetadata:
    class Status(enum.IntEnum):
        Success = 0
        Error = 1
        Cancelled = 2

    class Plane:
        def __init__(self, bytes_used: int = 0) -> None:
            self.bytes_used = bytes_used

    def __init__(self) -> None:
        self._status = FrameMetadata.Status.Success
        self._sequence = 0
        self._timestamp = 0
        self._planes: list[FrameMetadata.Plane] = []

    status = property(lambda self: self._status)
    sequence = property(lambda self: self._sequence)
    timestamp = property(lambda self: self._timestamp)

    @property
    def planes(self) -> list[FrameMetadata.Plane]:
        return [FrameMetadata.Plane(p.bytes_used) for p in self._planes]


class FrameBuffer:
    class Plane:
        def __init__(self, fd: int | None = None, offset: int = 0, length: int = 0) -> None:
            self._shared = _SharedFD(-1 if fd is None else fd)
            self.offset, self.length = offset, length

        @property
        def fd(self) -> int:
            return self._shared.fd

        @fd.setter
        def fd(self, fd: int) -> None:
            self._shared = _SharedFD(fd)

        def _copy(self) -> FrameBuffer.Plane:
            plane = FrameBuffer.Plane()
            plane._shared, plane.offset, plane.length = self._shared, self.offset, self.length
            return plane

    def __init__(self, planes: list[FrameBuffer.Plane], cookie: int = 0) -> None:
        self._planes = [p._copy() for p in planes]
        self._metadata = FrameMetadata()
        self.cookie = cookie

    @property
    def metadata(self) -> FrameMetadata:
        return self._metadata

    @property
    def planes(self) -> list[FrameBuffer.Plane]:
        return [p._copy() for p in self._planes]


class FrameBufferAllocator:
    """Buffers for a configured stream: memfds, as /dev/dma_heap is absent here."""

    def __init__(self, camera: Camera) -> None:
        self._camera = camera
        self._buffers: dict[Stream, list[FrameBuffer]] = {}

    def allocate(self, stream: Stream) -> int:
        if stream not in self._camera._streams:
            raise _fail("Failed to allocate buffers", errno.EINVAL)
        config = stream.configuration
        buffers = []
        for i in range(config.buffer_count):
            fd = os.memfd_create(f"libcamera-{i}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, config.frame_size)
                buffers.append(FrameBuffer([FrameBuffer.Plane(fd, 0, config.frame_size)]))
            finally:
                os.close(fd)  # the plane holds its own duplicate
        self._buffers[stream] = buffers
        return len(buffers)

    @property
    def allocated(self) -> bool:
        return bool(self._buffers)

    def buffers(self, stream: Stream) -> list[FrameBuffer]:
        return list(self._buffers.get(stream, []))


# -- configurations ---------------------------------------------------------------------------


class StreamFormats:
    def __init__(self, formats: dict[str, list[SizeRange]]) -> None:
        self._formats = formats

    @property
    def pixel_formats(self) -> list[PixelFormat]:
        return [PixelFormat(name) for name in self._formats]

    def sizes(self, pixel_format: PixelFormat) -> list[Size]:
        return [r.min for r in self._formats.get(str(pixel_format), []) if r.min == r.max]

    def range(self, pixel_format: PixelFormat) -> SizeRange:
        ranges = self._formats.get(str(pixel_format), [])
        if not ranges:
            return SizeRange()
        return SizeRange(min(ranges, key=lambda r: r.min.width * r.min.height).min,
                         max(ranges, key=lambda r: r.max.width * r.max.height).max)


class Stream:
    def __init__(self, configuration: StreamConfiguration) -> None:
        self._configuration = configuration

    @property
    def configuration(self) -> StreamConfiguration:
        return self._configuration

    def __repr__(self) -> str:
        return f"<libcamera._libcamera.Stream {self._configuration}>"


class StreamConfiguration:
    def __init__(self, role: StreamRole, formats: StreamFormats, size: Size, pixel_format: str,
                 buffer_count: int, color_space: ColorSpace | None) -> None:
        self._role = role
        self._formats = formats
        self._stream: Stream | None = None
        self.size = size
        self.pixel_format = PixelFormat(pixel_format)
        self.stride = 0
        self.frame_size = 0
        self.buffer_count = buffer_count
        self.color_space = color_space

    @property
    def stream(self) -> Stream | None:
        return self._stream

    @property
    def formats(self) -> StreamFormats:
        return self._formats

    def __str__(self) -> str:
        return f"{self.size}-{self.pixel_format}"


class SensorConfiguration:
    def __init__(self) -> None:
        self.bit_depth = 0
        self.analog_crop = Rectangle()
        self._binning = (1, 1)
        self._skipping = (1, 1, 1, 1)
        self.output_size = Size()

    @property
    def binning(self) -> tuple[int, int]:
        return self._binning

    @binning.setter
    def binning(self, value: Any) -> None:
        vec = [int(v) for v in value]
        if len(vec) != 2:
            raise RuntimeError("binning requires iterable of 2 values")
        self._binning = (vec[0], vec[1])

    @property
    def skipping(self) -> tuple[int, int, int, int]:
        return self._skipping

    @skipping.setter
    def skipping(self, value: Any) -> None:
        vec = [int(v) for v in value]
        if len(vec) != 4:
            raise RuntimeError("skipping requires iterable of 4 values")
        self._skipping = (vec[0], vec[1], vec[2], vec[3])

    def is_valid(self) -> bool:
        return self.bit_depth > 0 and not self.output_size.is_null


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _layout(fmt: str, width: int, height: int) -> tuple[int, int]:
    """(stride, frame_size) of one buffer, as the Pi's ISP and CSI-2 receiver lay them out."""
    bits, kind = PIXEL_FORMATS[fmt][1], PIXEL_FORMATS[fmt][2]
    if kind == "yuv420":
        stride = _align(width, STRIDE_ALIGN)
        return stride, stride * height * 3 // 2
    if kind == "raw":
        stride = _align(width * bits // 8, 16)
        return stride, stride * height
    stride = _align(width * bits // 8, STRIDE_ALIGN)
    return stride, stride * height


class CameraConfiguration:
    class Status(enum.IntEnum):
        Valid = 0
        Adjusted = 1
        Invalid = 2

    def __init__(self, camera: Camera, streams: list[StreamConfiguration]) -> None:
        self._camera = camera
        self._streams = streams
        self.sensor_config: SensorConfiguration | None = None
        self.orientation = Orientation.Rotate0
        self._mode: _system.SensorMode | None = None

    def __iter__(self) -> Any:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def size(self) -> int:
        return len(self._streams)

    @property
    def empty(self) -> bool:
        return not self._streams

    def at(self, index: int) -> StreamConfiguration:
        if not 0 <= index < len(self._streams):
            raise IndexError("list index out of range")
        return self._streams[index]

    def _pick_mode(self) -> _system.SensorMode | None:
        modes = self._camera._hardware.sensor.modes
        sc = self.sensor_config
        if sc is not None:
            for mode in modes:
                if (mode.width, mode.height) == (sc.output_size.width, sc.output_size.height) \
                        and mode.bit_depth == sc.bit_depth:
                    return mode
            _log.error("Invalid sensor configuration: %s/%d bit matches no sensor mode",
                       sc.output_size, sc.bit_depth)
            return None
        # No sensor configuration: libcamera scores modes against the largest stream.
        target = max((s.size for s in self._streams), key=lambda s: s.width * s.height)

        def score(mode: _system.SensorMode) -> float:
            def one(desired: float, actual: float) -> float:
                d = desired - actual
                return -d / 4 if d < 0 else d * 2
            ar = target.width / max(1, target.height)
            return (one(target.width, mode.width) + one(target.height, mode.height)
                    + 1500 * one(ar, mode.width / mode.height))
        return min((m for m in modes if m.bit_depth == modes[0].bit_depth), key=score)

    def validate(self) -> CameraConfiguration.Status:
        status = CameraConfiguration.Status.Valid
        if not self._streams:
            return CameraConfiguration.Status.Invalid
        raw = [s for s in self._streams if s.pixel_format.is_valid
               and PIXEL_FORMATS[str(s.pixel_format)][2] == "raw"]
        processed = [s for s in self._streams if s not in raw]
        if len(raw) > 1 or len(processed) > 2:
            _log.error("Invalid number of streams requested")
            return CameraConfiguration.Status.Invalid
        mode = self._pick_mode()
        if mode is None:
            return CameraConfiguration.Status.Invalid
        self._mode = mode
        for s in raw:
            wanted = (s.size.width, s.size.height, str(s.pixel_format))
            if wanted != (mode.width, mode.height, mode.format):
                status = CameraConfiguration.Status.Adjusted
            s.size, s.pixel_format = Size(mode.width, mode.height), PixelFormat(mode.format)
            s.color_space = ColorSpace.Raw()
        pixel_array = self._camera._hardware.sensor.pixel_array
        for s in processed:
            fmt = str(s.pixel_format)
            if not s.pixel_format.is_valid or PIXEL_FORMATS[fmt][2] == "packed":
                s.pixel_format, fmt = PixelFormat("YUV420"), "YUV420"
                status = CameraConfiguration.Status.Adjusted
            width = min(max(64, s.size.width - s.size.width % 2), pixel_array[0])
            height = min(max(64, s.size.height - s.size.height % 2), pixel_array[1])
            if (width, height) != (s.size.width, s.size.height):
                s.size = Size(width, height)
                status = CameraConfiguration.Status.Adjusted
            if s.color_space is None:
                s.color_space = ColorSpace.Sycc()
                status = CameraConfiguration.Status.Adjusted
        for s in self._streams:
            stride, frame_size = _layout(str(s.pixel_format), s.size.width, s.size.height)
            if s.stride and s.stride >= stride:
                stride = s.stride
                planar = PIXEL_FORMATS[str(s.pixel_format)][2] == "yuv420"
                frame_size = stride * s.size.height * (3 if planar else 2) // 2
            s.stride, s.frame_size = stride, frame_size
            if s.buffer_count <= 0:
                s.buffer_count = 4
                status = CameraConfiguration.Status.Adjusted
        sc = SensorConfiguration()
        sc.bit_depth, sc.output_size = mode.bit_depth, Size(mode.width, mode.height)
        self.sensor_config = sc
        return status


# -- requests ---------------------------------------------------------------------------------


class Request:
    class Status(enum.IntEnum):
        Pending = 0
        Complete = 1
        Cancelled = 2

    class Reuse(enum.IntEnum):
        Default = 0
        ReuseBuffers = 1

    def __init__(self, camera: Camera, cookie: int) -> None:
        self._camera = camera
        self._cookie = cookie
        self._status = Request.Status.Pending
        self._buffers: dict[Stream, FrameBuffer] = {}
        self._controls: dict[ControlId, Any] = {}
        self._metadata: dict[ControlId, Any] = {}
        self._sequence = 0

    def add_buffer(self, stream: Stream, buffer: FrameBuffer) -> None:
        if stream not in self._camera._streams:
            raise _fail("Failed to add buffer", errno.EINVAL)
        if stream in self._buffers:
            raise _fail("Failed to add buffer", errno.EEXIST)
        self._buffers[stream] = buffer

    status = property(lambda self: self._status)
    cookie = property(lambda self: self._cookie)
    sequence = property(lambda self: self._sequence)

    @property
    def buffers(self) -> dict[Stream, FrameBuffer]:
        return dict(self._buffers)

    @property
    def has_pending_buffers(self) -> bool:
        return self._status == Request.Status.Pending and bool(self._buffers)

    def set_control(self, id: ControlId, value: Any) -> None:
        self._controls[id] = py_to_control_value(value, id.type)

    @property
    def metadata(self) -> dict[ControlId, Any]:
        return dict(self._metadata)

    def reuse(self) -> None:
        self._status = Request.Status.Pending
        self._controls = {}
        self._metadata = {}
        for buffer in self._buffers.values():
            buffer._metadata = FrameMetadata()

    def __str__(self) -> str:
        state = {0: "P", 1: "C", 2: "X"}[int(self._status)]
        return f"Request({self._sequence}:{state}:{self._cookie}/{len(self._buffers)}:0)"


# -- the camera -------------------------------------------------------------------------------


class Camera:
    """One libcamera Camera: a plugged-in sensor of system.py, behind camera.cpp's state rules."""

    def __init__(self, manager: CameraManager, hardware: _system.FakeCameraHardware) -> None:
        self._manager = manager
        self._hardware = hardware
        self._generation = hardware.generation
        self._state = "available"
        self._lock = threading.Lock()
        self._queue: list[Request] = []
        self._queued = threading.Condition(self._lock)
        self._streams: list[Stream] = []
        self._config: CameraConfiguration | None = None
        self._mode: _system.SensorMode = hardware.sensor.modes[-1]
        self._frame_limits = (33333, 33333)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._sequence = 0

    # -- identity and state -------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._hardware.camera_id

    @property
    def is_disconnected(self) -> bool:
        return not self._hardware.connected or self._hardware.generation != self._generation

    def __str__(self) -> str:
        return f"<libcamera.Camera '{self.id}'>"

    def _check(self, what: str, allowed: tuple[str, ...], err: int) -> None:
        if self.is_disconnected:
            raise _fail(what, errno.ENODEV)
        if self._state not in allowed:
            raise _fail(what, err)

    def acquire(self) -> None:
        self._check("Failed to acquire camera", ("available",), errno.EBUSY)
        self._state = "acquired"
        self._hardware.record("acquire", self.id)

    def release(self) -> None:
        self._check("Failed to release camera", ("available", "acquired", "configured"), errno.EBUSY)
        self._state = "available"
        self._streams, self._config = [], None
        self._hardware.record("release", self.id)

    # -- properties and controls --------------------------------------------------------------

    @property
    def properties(self) -> dict[ControlId, Any]:
        s = self._hardware.sensor
        p = PROPERTIES
        return {
            p["Location"]: 2, p["Rotation"]: s.rotation, p["Model"]: s.model,
            p["UnitCellSize"]: Size(*s.unit_cell_nm), p["PixelArraySize"]: Size(*s.pixel_array),
            p["PixelArrayActiveAreas"]: (Rectangle(0, 0, *s.pixel_array),),
            p["ScalerCropMaximum"]: Rectangle(*self._mode.crop),
            p["SystemDevices"]: (20749, 20737, 20738, 20739),
            p["ColorFilterArrangement"]: s.cfa,
        }

    @property
    def controls(self) -> dict[ControlId, ControlInfo]:
        s, mode, c = self._hardware.sensor, self._mode, CONTROLS
        exp_min, exp_max, exp_default = s.exposure_limits
        info = {
            c["AeEnable"]: ControlInfo(False, True, None),
            c["AeMeteringMode"]: ControlInfo(0, 3, 0),
            c["AeConstraintMode"]: ControlInfo(0, 3, 0),
            c["AeExposureMode"]: ControlInfo(0, 3, 0),
            c["AeFlickerMode"]: ControlInfo(0, 1, 0),
            c["AeFlickerPeriod"]: ControlInfo(100, 1_000_000, None),
            c["ExposureValue"]: ControlInfo(-8.0, 8.0, 0.0),
            c["ExposureTime"]: ControlInfo(exp_min, exp_max, exp_default),
            c["ExposureTimeMode"]: ControlInfo(0, 1, 0),
            c["AnalogueGain"]: ControlInfo(1.0, 16.0, None),
            c["AnalogueGainMode"]: ControlInfo(0, 1, 0),
            c["AwbEnable"]: ControlInfo(False, True, None),
            c["AwbMode"]: ControlInfo(0, 7, 0),
            c["Brightness"]: ControlInfo(-1.0, 1.0, 0.0),
            c["Contrast"]: ControlInfo(0.0, 32.0, 1.0),
            c["Saturation"]: ControlInfo(0.0, 32.0, 1.0),
            c["Sharpness"]: ControlInfo(0.0, 16.0, 1.0),
            c["ColourGains"]: ControlInfo(0.0, 32.0, None),
            c["ColourTemperature"]: ControlInfo(100, 100_000, None),
            c["ScalerCrop"]: ControlInfo(Rectangle(0, 0, 64, 64), Rectangle(*mode.crop),
                                         Rectangle(*mode.crop)),
            c["FrameDurationLimits"]: ControlInfo(mode.min_frame_us, s.max_frame_us, 33333),
            c["NoiseReductionMode"]: ControlInfo(0, 4, 0),
            c["HdrMode"]: ControlInfo(0, 4, 0),
            c["StatsOutputEnable"]: ControlInfo(False, True, False),
            c["SyncMode"]: ControlInfo(0, 2, 0),
        }
        if s.has_autofocus:
            info |= {c["AfMode"]: ControlInfo(0, 2, 0), c["AfRange"]: ControlInfo(0, 2, 0),
                     c["AfSpeed"]: ControlInfo(0, 1, 0), c["AfMetering"]: ControlInfo(0, 1, 0),
                     c["AfTrigger"]: ControlInfo(0, 1, 0), c["AfPause"]: ControlInfo(0, 2, 0),
                     c["AfWindows"]: ControlInfo(Rectangle(0, 0, 0, 0), Rectangle(65535, 65535, 65535, 65535),
                                                 Rectangle(0, 0, 0, 0)),
                     c["LensPosition"]: ControlInfo(0.0, 15.0, 1.0)}
        return info

    @property
    def streams(self) -> set[Stream]:
        return set(self._streams)

    # -- configuration ------------------------------------------------------------------------

    def generate_configuration(self, roles: list[StreamRole]) -> CameraConfiguration | None:
        if self.is_disconnected:
            return None
        s = self._hardware.sensor
        raw_formats: dict[str, list[SizeRange]] = {}
        for mode in s.modes:
            raw_formats.setdefault(mode.format, []).append(
                SizeRange(Size(mode.width, mode.height), Size(mode.width, mode.height)))
        full = Size(*s.pixel_array)
        isp_range = [SizeRange(Size(64, 64), full, 2, 2)]
        isp_formats = {name: isp_range for name, (_, _, kind) in PIXEL_FORMATS.items()
                       if kind in ("yuv420", "rgb")}
        streams = []
        for role in roles:
            if role == StreamRole.Raw:
                biggest = s.modes[0]
                for mode in s.modes:
                    if mode.width * mode.height > biggest.width * biggest.height:
                        biggest = mode
                streams.append(StreamConfiguration(role, StreamFormats(raw_formats),
                                                   Size(biggest.width, biggest.height), biggest.format,
                                                   2, ColorSpace.Raw()))
            elif role == StreamRole.StillCapture:
                streams.append(StreamConfiguration(role, StreamFormats(isp_formats), Size(*s.pixel_array),
                                                   "YUV420", 1, ColorSpace.Sycc()))
            elif role == StreamRole.VideoRecording:
                streams.append(StreamConfiguration(role, StreamFormats(isp_formats), Size(1920, 1080),
                                                   "YUV420", 4, ColorSpace.Rec709()))
            else:
                streams.append(StreamConfiguration(role, StreamFormats(isp_formats), Size(800, 600),
                                                   "YUV420", 4, ColorSpace.Sycc()))
        return CameraConfiguration(self, streams)

    def configure(self, config: CameraConfiguration) -> None:
        self._check("Failed to configure camera", ("acquired", "configured"), errno.EACCES)
        if config.validate() == CameraConfiguration.Status.Invalid:
            raise _fail("Failed to configure camera", errno.EINVAL)
        for stream_config in config:
            stream_config._stream = Stream(stream_config)
        self._streams = [sc.stream for sc in config if sc.stream is not None]
        self._config = config
        assert config._mode is not None
        self._mode = config._mode
        self._state = "configured"
        self._hardware.record("configure", ", ".join(
            f"{sc.size}/{sc.pixel_format}/stride={sc.stride}" for sc in config) + f" mode={self._mode}")

    def create_request(self, cookie: int = 0) -> Request:
        if self.is_disconnected or self._state not in ("configured", "running"):
            raise _fail("Failed to create request", errno.ENOMEM)
        return Request(self, cookie)

    # -- streaming ----------------------------------------------------------------------------

    def start(self, controls: dict[ControlId, Any] | None = None) -> None:
        self._check("Failed to start camera", ("configured",), errno.EACCES)
        advertised = self.controls
        for cid, value in (controls or {}).items():
            converted = py_to_control_value(value, cid.type)
            if cid not in advertised:
                _log.error("Control %s is not valid for %s", cid.name, self.id)
                continue
            if cid is CONTROLS["FrameDurationLimits"]:
                self._frame_limits = (int(converted[0]), int(converted[1]))
        self._state = "running"
        self._sequence = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stopping,),
                                        name=f"{THREAD_PREFIX}-{self._hardware.sensor.model}", daemon=True)
        self._manager._running.add(self)
        self._hardware.streaming += 1
        self._hardware.record("start", f"frame_limits={self._frame_limits}")
        self._thread.start()

    def stop(self) -> None:
        if self.is_disconnected:
            self._end_thread()
            raise _fail("Failed to stop camera", errno.ENODEV)
        if self._state != "running":
            return
        self._hardware.wait_stop_gate()
        self._end_thread()
        self._hardware.clear_stall()  # a stopped and restarted sensor streams again
        with self._lock:
            cancelled, self._queue = self._queue, []
        for request in cancelled:
            self._finish(request, Request.Status.Cancelled, FrameMetadata.Status.Cancelled, 0)
        self._state = "configured"
        self._hardware.record("stop", f"cancelled={len(cancelled)}")

    def _end_thread(self) -> None:
        if self._thread is not None:
            self._hardware.streaming -= 1
        self._stopping.set()
        with self._lock:
            self._queued.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(THREAD_JOIN_TIMEOUT_S)
        self._thread = None
        self._manager._running.discard(self)

    def queue_request(self, request: Request) -> None:
        if self.is_disconnected:
            raise _fail("Failed to queue request", errno.ENODEV)
        if self._state != "running":
            raise _fail("Failed to queue request", errno.EACCES)
        if not request._buffers:
            _log.error("Request contains no buffers")
            raise _fail("Failed to queue request", errno.EINVAL)
        if request._status != Request.Status.Pending:
            raise _fail("Failed to queue request", errno.EBUSY)
        with self._lock:
            if CONTROLS["FrameDurationLimits"] in request._controls:
                limits = request._controls[CONTROLS["FrameDurationLimits"]]
                before, self._frame_limits = self._frame_limits, (int(limits[0]), int(limits[1]))
                if self._frame_limits != before:
                    # Controls travel with the request that carries them (a running camera's
                    # set_controls reaches libcamera on the next request picamera2 queues).
                    # libcamera applies a frame duration a few frames later (the Raspberry Pi
                    # pipeline's DelayedControls); the fake applies it from the next frame.
                    self._hardware.record("frame_limits", f"{self._frame_limits} at frame "
                                          f"{self._hardware.frames_produced}")
            self._queue.append(request)
            self._queued.notify_all()

    def _frame_seconds(self) -> float:
        low, _high = self._frame_limits
        return min(max(low, self._mode.min_frame_us), self._hardware.sensor.max_frame_us) / 1e6

    def _run(self, stopping: threading.Event) -> None:
        hardware = self._hardware
        due = time.monotonic() + self._frame_seconds()  # the first frame ends one period after start
        quiet_since: float | None = None
        while not stopping.is_set():
            delay = due - time.monotonic()
            if delay > 0 and stopping.wait(delay):
                return
            period = self._frame_seconds()
            # A sensor keeps its own time: a frame thread the host scheduled late still
            # stamps its frames on the sensor's grid (they are delivered late, as from a
            # busy machine); only after a long absence does the grid start again from now.
            now = time.monotonic()
            due = due + period if now - due < MAX_LATENESS_S else now
            if self.is_disconnected:
                return  # unplugged: nothing more completes
            if hardware.is_stalled:
                hardware.frame_completed()  # nothing in flight: a pending unplug lands now
                if quiet_since is None:
                    quiet_since = time.monotonic()
                elif quiet_since != -1.0 and time.monotonic() - quiet_since >= hardware.dequeue_timeout_s:
                    hardware.log_frontend_timeout()
                    quiet_since = -1.0
                continue
            quiet_since = None
            n = hardware.count_frame()
            with self._lock:
                request = self._queue.pop(0) if self._queue else None
            if request is None:
                hardware.record("frame_dropped", f"n={n}: no request queued")
                continue
            timestamp = int((due - period) * 1e9)
            try:
                for stream, buffer in request._buffers.items():
                    _fill(buffer, stream.configuration, n)
            except OSError as err:  # a buffer closed under a queued request
                hardware.record("frame_error", repr(err))
                self._finish(request, Request.Status.Complete, FrameMetadata.Status.Error, timestamp)
                continue
            c = CONTROLS
            request._metadata = {
                c["SensorTimestamp"]: timestamp, c["FrameDuration"]: round(period * 1e6),
                c["ExposureTime"]: min(round(period * 1e6) - 100, 20000), c["AnalogueGain"]: 1.0,
                c["DigitalGain"]: 1.0, c["ColourGains"]: (1.8, 1.6), c["ColourTemperature"]: 4500,
                c["Lux"]: 400.0, c["ScalerCrop"]: Rectangle(*self._mode.crop),
                c["SensorBlackLevels"]: (4096, 4096, 4096, 4096),
            }
            request._sequence = self._sequence
            self._sequence += 1
            self._finish(request, Request.Status.Complete, FrameMetadata.Status.Success, timestamp)
            hardware.frame_completed()

    def _finish(self, request: Request, status: Request.Status, frame_status: FrameMetadata.Status,
                timestamp: int) -> None:
        for buffer in request._buffers.values():
            md = FrameMetadata()
            md._status, md._sequence, md._timestamp = frame_status, request._sequence, timestamp
            md._planes = [FrameMetadata.Plane(p.length) for p in buffer._planes]
            buffer._metadata = md
        request._status = status
        self._manager._complete(request)


def _fill(buffer: FrameBuffer, config: StreamConfiguration, n: int) -> None:
    """Draw frame n into a buffer: a moving pattern, n's code in the top rows."""
    if PIXEL_FORMATS[str(config.pixel_format)][2] == "raw":
        return  # nobody looks at the Bayer data here; leave the buffer as it is
    plane = buffer._planes[0]
    mm = mmap.mmap(plane.fd, plane.offset + plane.length)
    try:
        _draw(mm, plane.offset, plane.length, config, n)  # its numpy views end with it
    finally:
        mm.close()


def _draw(mm: mmap.mmap, offset: int, length: int, config: StreamConfiguration, n: int) -> None:
    fmt = str(config.pixel_format)
    width, height, stride = config.size.width, config.size.height, config.stride
    data = np.frombuffer(mm, dtype=np.uint8, count=length, offset=offset)
    code = np.zeros(width, dtype=np.uint8)
    for i in range(CODE_BITS):
        if (n >> (CODE_BITS - 1 - i)) & 1:
            code[i * width // CODE_BITS:(i + 1) * width // CODE_BITS] = 255
    pattern = ((np.arange(width, dtype=np.int32) + 4 * n) % 64 * 3 + 30).astype(np.uint8)
    if PIXEL_FORMATS[fmt][2] == "yuv420":
        luma = data[: stride * height].reshape(height, stride)
        luma[:CODE_ROWS, :width] = code
        luma[CODE_ROWS:, :width] = pattern
        data[stride * height : stride * height * 3 // 2] = 128
    else:
        bpp = PIXEL_FORMATS[fmt][1] // 8
        rows = data[: stride * height].reshape(height, stride)[:, : width * bpp].reshape(height, width, bpp)
        rows[:CODE_ROWS] = code[:, None]
        rows[CODE_ROWS:] = pattern[:, None]


# -- the manager ------------------------------------------------------------------------------


class CameraManager:
    version = "v0.5.0+rpt20250429"
    _singleton: weakref.ReferenceType[CameraManager] | None = None
    _singleton_lock = threading.Lock()

    @staticmethod
    def singleton() -> CameraManager:
        with CameraManager._singleton_lock:
            ref = CameraManager._singleton
            cm = ref() if ref is not None else None
            if cm is None:
                cm = CameraManager()
                CameraManager._singleton = weakref.ref(cm)
            return cm

    def __init__(self) -> None:
        self._event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        weakref.finalize(self, os.close, self._event_fd)
        self._cameras: dict[tuple[int, int], Camera] = {}
        self._completed: list[Request] = []
        self._completed_lock = threading.Lock()
        self._running: set[Camera] = set()
        _system.SYSTEM.managers.add(self)

    @property
    def cameras(self) -> list[Camera]:
        listed = []
        for hardware in _system.SYSTEM.connected():
            key = (id(hardware), hardware.generation)
            if key not in self._cameras:
                self._cameras[key] = Camera(self, hardware)
            listed.append(self._cameras[key])
        return listed

    def get(self, camera_id: str) -> Camera | None:
        return next((c for c in self.cameras if c.id == camera_id), None)

    @property
    def event_fd(self) -> int:
        return self._event_fd

    def get_ready_requests(self) -> list[Request]:
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            return []
        with self._completed_lock:
            ready, self._completed = self._completed, []
        # system.py's slow_event_loop(): the thread that takes the completed requests
        # (picamera2's event loop, which also runs its encoders) needs this long for each.
        cost = sum(r._camera._hardware.request_cost_s for r in ready)
        if cost > 0:
            time.sleep(cost)
        return ready

    def _complete(self, request: Request) -> None:
        with self._completed_lock:
            self._completed.append(request)
        os.eventfd_write(self._event_fd, 1)

    def _shutdown(self) -> None:
        """Test teardown: end every camera thread this manager started."""
        for camera in list(self._running):
            camera._end_thread()
