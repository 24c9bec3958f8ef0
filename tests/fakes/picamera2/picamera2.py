"""The fake Picamera2 class: real signatures and state rules, frames from picamera2._fake.

Built from raspberrypi/picamera2 picamera2/picamera2.py @ ec9ab36d87979f4ea4fc247772da39f99f79d5d2
(the version with allocators and capture_sync_request). What it keeps from the real class:

- Picamera2(camera_num=0, verbose_console=None, tuning=None, allocator=None) first looks the
  camera up in global_camera_info(), so with no (or too few) cameras it raises IndexError;
  a failure while opening (e.g. the camera is already open) raises
  RuntimeError("Camera __init__ sequence did not complete.").
- create_{preview,still,video}_configuration return plain dicts shaped like the real ones;
  configure() checks them with the real rules and messages and fills in stride, framesize
  and the chosen sensor mode ("sensor": {"bit_depth", "output_size"}).
- start()/stop()/close() follow the real state rules: configure while started raises,
  start() without a configuration uses the preview one, stop() and close() are no-ops
  when there is nothing to do.
- capture_* go through Jobs: wait=None blocks, wait=<seconds> raises TimeoutError and
  leaves the job queued (cancel_all_and_flush() clears it), wait=False returns the Job.
- start_encoder()/stop_encoder() as the real ones, including the nominal framerate the
  encoder gets (1e6 / max(min frame duration, 33333 us)) when it has none.

What is fake: a thread per started camera draws frames at the configured rate
(FrameDurationLimits / FrameRate, clamped to the sensor mode) in place of libcamera;
there is no preview window (show_preview is accepted and ignored), no tuning, no audio,
and only YUV420, YVU420, RGB888, BGR888, XBGR8888 and XRGB8888 streams. Strides are the
row size rounded up to 64 bytes, an approximation of the ISP's alignment, so a YUV420
capture_array() is (height*3//2, width) whenever the width is a multiple of 64.
The real close() leaves running encoders running; the fake stops them, logs a warning and
records "close_stopped_encoder" so tests can catch the leak.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from enum import Enum
from functools import partial
from typing import Any, NamedTuple

import libcamera
import numpy as np

from . import _fake, formats
from . import platform as Platform
from .controls import Controls
from .encoders import Encoder
from .job import Job
from .outputs import FileOutput
from .sensor_format import SensorFormat

_log = logging.getLogger(__name__)

STRIDE_ALIGN_BYTES = 64
NOMINAL_ENCODER_FRAME_US = 33333  # start_encoder pegs the encoder's framerate at 30 fps max
FRAME_THREAD_JOIN_TIMEOUT_S = 5.0
FAKE_RENDERABLE_FORMATS = ("YUV420", "YVU420", "RGB888", "BGR888", "XBGR8888", "XRGB8888")

# Every Picamera2 the fake made that may still own threads; _fake tears them down.
_LIVE_INSTANCES: weakref.WeakSet[Picamera2] = weakref.WeakSet()


class Preview(Enum):
    """Enum that applications can pass to the start_preview method."""

    NULL = 0
    DRM = 1
    QT = 2
    QTGL = 3


class ControlInfo(NamedTuple):
    """What libcamera.ControlInfo exposes: min, max and default of one control."""

    min: Any
    max: Any
    default: Any


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _stride_for(fmt: str, width: int) -> int:
    if formats.is_raw(fmt):
        bits = SensorFormat(fmt).bit_depth
        row = -(-width * bits // 8) if fmt.endswith("_CSI2P") else width * 2
        return _align_up(row, STRIDE_ALIGN_BYTES)
    bytes_per_pixel = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}.get(fmt, 1)
    return _align_up(width * bytes_per_pixel, STRIDE_ALIGN_BYTES)


def _frame_size_for(fmt: str, stride: int, height: int) -> int:
    return stride * height * 3 // 2 if fmt in ("YUV420", "YVU420") else stride * height


class _FakeRequest:
    """One completed frame: what CompletedRequest offers, built from the fake's luma planes."""

    def __init__(
        self,
        picam2: Picamera2,
        lumas: dict[str, np.ndarray],
        metadata: dict[str, Any],
    ) -> None:
        self.picam2 = picam2
        self.config = picam2.camera_config
        self.stream_map = picam2.stream_map
        self.configure_count = picam2.configure_count
        self._lumas = lumas
        self._metadata = metadata

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def _fake_yuv420(self, name: str) -> np.ndarray:
        """The stream as packed, unpadded YUV420 (H*3/2, W): what the encoders feed PyAV."""
        return _fake.yuv420_from_luma(self._lumas[name])

    def make_buffer(self, name: str) -> np.ndarray:
        """The stream's buffer as a flat uint8 array, row padding included."""
        stream = self.config[name]
        fmt, (width, height), stride = stream["format"], stream["size"], stream["stride"]
        if name == "raw":
            return np.zeros(stride * height, dtype=np.uint8)
        luma = self._lumas[name]
        if fmt in ("YUV420", "YVU420"):
            out = np.full(stride * height * 3 // 2, _fake.NEUTRAL_CHROMA, dtype=np.uint8)
            out[: stride * height].reshape(height, stride)[:, :width] = luma
            out[: stride * height].reshape(height, stride)[:, width:] = 0
            return out
        channels = 3 if fmt in ("RGB888", "BGR888") else 4
        rows = np.zeros((height, stride), dtype=np.uint8)
        pixels = rows[:, : width * channels].reshape(height, width, channels)
        pixels[...] = luma[:, :, None]
        if channels == 4:
            pixels[:, :, 3] = 255
        return rows.reshape(-1)

    def make_array(self, name: str) -> np.ndarray:
        """A 2d (or HxWxC) image of the stream, shaped as picamera2's Helpers.make_array."""
        stream = self.config[name]
        fmt, (width, height), stride = stream["format"], stream["size"], stream["stride"]
        buffer = self.make_buffer(name)
        if name == "raw":
            return buffer.reshape(height, stride)
        if fmt in ("YUV420", "YVU420"):
            return buffer.reshape(height * 3 // 2, stride)
        channels = 3 if fmt in ("RGB888", "BGR888") else 4
        rows = buffer.reshape(height, stride)[:, : width * channels]
        return np.ascontiguousarray(rows).reshape(height, width, channels)


class Picamera2:
    """Welcome to the (fake) PiCamera2 class."""

    platform = Platform.get_platform()

    DEBUG = logging.DEBUG
    INFO = logging.INFO
    WARNING = logging.WARNING
    ERROR = logging.ERROR
    CRITICAL = logging.CRITICAL

    _raw_stream_ignore_list = ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked")

    @staticmethod
    def set_logging(level: int = logging.WARN, output: Any = sys.stderr, msg: str | None = None
                    ) -> None:
        """Configure logging of the "picamera2" logger for simple standalone use."""
        log = logging.getLogger("picamera2")
        log.handlers.clear()
        if level is not None:
            log.setLevel(level)
        if output is not None:
            handler = logging.StreamHandler(output)
            log.addHandler(handler)
            handler.setFormatter(logging.Formatter(msg or "%(name)s %(levelname)s: %(message)s"))

    @staticmethod
    def global_camera_info() -> list:
        """One dict per attached camera: Model, Location, Rotation, Id and Num."""
        cameras = []
        for num, camera in enumerate(_fake._present_cameras()):
            info = {k: v for k, v in camera.properties.items()
                    if k in ("Model", "Location", "Rotation")}
            info["Id"] = camera.camera_id
            info["Num"] = num
            cameras.append(info)
        # As the real one: deterministic order, USB cameras at the back.
        return sorted(cameras, key=lambda cam: ("/usb" not in cam["Id"], cam["Id"]), reverse=True)

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        """Open the camera: IndexError if there is no such camera, RuntimeError if it fails."""
        if verbose_console is not None:
            _log.warning("verbose_console parameter is no longer used, "
                         "use Picamera2.set_logging instead")
        self._preview = None
        self.is_open = False
        self._handle: _fake.FakeCamera | None = None
        self._generation = -1
        self._frame_thread: threading.Thread | None = None
        self._frame_stop = threading.Event()
        # Get the real libcamera internal number (IndexError when it does not exist).
        camera_num = self.global_camera_info()[camera_num]["Num"]
        self.camera_idx = camera_num
        self.tuning = tuning
        self.allocator = allocator
        self._reset_flags()
        try:
            self._open_camera()
        except Exception as err:
            _log.error("Camera __init__ sequence did not complete.")
            raise RuntimeError("Camera __init__ sequence did not complete.") from err
        _LIVE_INSTANCES.add(self)

    def _reset_flags(self) -> None:
        self.camera: _fake.FakeCamera | None = None
        self.camera_ctrl_info: dict[str, tuple[str, ControlInfo]] = {}
        self.camera_config: dict[str, Any] | None = None
        self.stream_map: dict[str, Any] | None = None
        self.started = False
        self.stop_count = 0
        self.configure_count = 0
        self.frames = 0
        self._job_list: list[Job] = []
        self._encoders: set[Encoder] = set()
        self.pre_callback = None
        self.post_callback = None
        self.completed_requests: list[_FakeRequest] = []
        self.lock = threading.Lock()
        self._max_queue_len = 0
        self.camera_properties_: dict[str, Any] = {}
        self.controls = Controls(self)
        self.sensor_modes_: list[dict[str, Any]] | None = None
        self._frame_limits_us: tuple[int, int] | None = None
        self._frame_duration_us = 0

    def __repr__(self) -> str:
        model = self._handle.model if self._handle else "?"
        state = "started" if self.started else ("open" if self.is_open else "closed")
        return f"<Picamera2 (fake) {model} num={self.camera_idx} {state}>"

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_traceback: Any) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------

    def _open_camera(self) -> None:
        present = _fake._present_cameras()
        if not present:
            _log.error("Camera(s) not found (Do not forget to disable legacy camera with "
                       "raspi-config).")
            raise RuntimeError("Camera(s) not found (Do not forget to disable legacy camera "
                               "with raspi-config).")
        handle = present[self.camera_idx]
        self._generation = handle._acquire(self)
        if self.tuning is not None:
            handle._note(f"tuning {self.tuning if isinstance(self.tuning, str) else 'dict'}")
        self._handle = handle
        self.camera = handle
        self.camera_properties_ = dict(handle.properties)
        native = max(handle.sensor_modes,
                     key=lambda m: (m["size"][0] * m["size"][1], m["bit_depth"]))
        self.sensor_resolution = native["size"]
        self.sensor_format = str(native["format"])
        self._load_controls_for_mode(native)
        self.is_open = True
        _log.info("Camera now open.")

    def _load_controls_for_mode(self, mode: dict[str, Any]) -> None:
        min_frame_us = round(1e6 / mode["fps"])
        exposure_min, exposure_max = mode["exposure_limits"][:2]
        crop = tuple(mode["crop_limits"])
        infos = {
            "FrameDurationLimits": ControlInfo(min_frame_us, max(exposure_max, min_frame_us),
                                               max(min_frame_us, NOMINAL_ENCODER_FRAME_US)),
            "ExposureTime": ControlInfo(exposure_min, exposure_max, None),
            "AnalogueGain": ControlInfo(1.0, 16.0, None),
            "AeEnable": ControlInfo(False, True, None),
            "AwbEnable": ControlInfo(False, True, None),
            "ColourGains": ControlInfo(0.0, 32.0, None),
            "ExposureValue": ControlInfo(-8.0, 8.0, 0.0),
            "Brightness": ControlInfo(-1.0, 1.0, 0.0),
            "Contrast": ControlInfo(0.0, 32.0, 1.0),
            "Saturation": ControlInfo(0.0, 32.0, 1.0),
            "Sharpness": ControlInfo(0.0, 16.0, 1.0),
            "NoiseReductionMode": ControlInfo(0, 4, 0),
            "ScalerCrop": ControlInfo((0, 0, 64, 64), crop, crop),
            "AfMode": ControlInfo(0, 2, 0),
            "AfTrigger": ControlInfo(0, 1, 0),
            "LensPosition": ControlInfo(0.0, 15.0, 1.0),
        }
        self.camera_ctrl_info = {name: (name, info) for name, info in infos.items()}

    @property
    def camera_properties(self) -> dict:
        return {} if self.camera is None else self.camera_properties_

    @property
    def camera_controls(self) -> dict:
        return {k: (v[1].min, v[1].max, v[1].default) for k, v in self.camera_ctrl_info.items()}

    @property
    def sensor_modes(self) -> list:
        """The sensor modes; the first call reconfigures the camera once per mode, as the real one."""
        if self.sensor_modes_ is not None:
            return self.sensor_modes_
        assert self._handle is not None
        modes = []
        for mode in self._handle.sensor_modes:
            temp_config = self.create_preview_configuration(
                raw={"format": str(mode["format"]), "size": mode["size"]})
            self.configure(temp_config)
            modes.append(dict(mode))
        self.sensor_modes_ = modes
        return self.sensor_modes_

    def _is_rpi_camera(self) -> bool:
        return "ColorFilterArrangement" in self.camera_properties

    # -- configurations --------------------------------------------------------------------

    @staticmethod
    def _make_initial_stream_config(stream_config: dict, updates: dict | None,
                                    ignore_list: list | tuple = ()) -> dict | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if isinstance(value, SensorFormat):
                value = str(value)
            if key in valid:
                stream_config[key] = value
            elif key in ignore_list:
                pass  # lets a sensor_modes entry be passed as the raw stream
            else:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
        return stream_config

    @staticmethod
    def _add_display_and_encode(config: dict, display: str | None, encode: str | None) -> None:
        if display is not None and config.get(display) is None:
            raise RuntimeError(f"Display stream {display} was not defined")
        if encode is not None and config.get(encode) is None:
            raise RuntimeError(f"Encode stream {encode} was not defined")
        config["display"] = display
        config["encode"] = encode

    def _make_config(self, *, use_case, main, main_default, lores, raw, transform, colour_space,
                     buffer_count, controls, display, encode, queue, sensor) -> dict:
        if self.camera is None:
            raise RuntimeError("Camera not opened")
        if not self._is_rpi_camera():
            raw = None
            sensor = None
        main = self._make_initial_stream_config(main_default, main)
        self.align_stream(main, optimal=False)
        lores = self._make_initial_stream_config(
            {"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores)
        if lores is not None:
            self.align_stream(lores, optimal=False)
        raw = self._make_initial_stream_config(
            {"format": self.sensor_format, "size": main["size"]}, raw,
            self._raw_stream_ignore_list)
        config = {"use_case": use_case, "transform": transform, "colour_space": colour_space,
                  "buffer_count": buffer_count, "queue": queue, "main": main, "lores": lores,
                  "raw": raw, "controls": controls, "sensor": sensor}
        self._add_display_and_encode(config, display, encode)
        return config

    def create_preview_configuration(self, main={}, lores=None, raw={},  # noqa: B006
                                     transform=libcamera.Transform(),  # noqa: B008
                                     colour_space=libcamera.ColorSpace.Sycc(),  # noqa: B008
                                     buffer_count=4, controls={}, display="main",  # noqa: B006
                                     encode="main", queue=True, sensor={},  # noqa: B006
                                     use_case="preview") -> dict:
        """Make a configuration suitable for camera preview."""
        controls = {"NoiseReductionMode": libcamera.controls.draft.NoiseReductionModeEnum.Minimal,
                    "FrameDurationLimits": (100, 83333)} | controls
        return self._make_config(
            use_case=use_case, main=main,
            main_default={"format": "XBGR8888", "size": (640, 480), "preserve_ar": True},
            lores=lores, raw=raw, transform=transform, colour_space=colour_space,
            buffer_count=buffer_count, controls=controls, display=display, encode=encode,
            queue=queue, sensor=sensor)

    def create_still_configuration(self, main={}, lores=None, raw={},  # noqa: B006
                                   transform=libcamera.Transform(),  # noqa: B008
                                   colour_space=libcamera.ColorSpace.Sycc(),  # noqa: B008
                                   buffer_count=1, controls={}, display=None,  # noqa: B006
                                   encode=None, queue=True, sensor={},  # noqa: B006
                                   use_case="still") -> dict:
        """Make a configuration suitable for still image capture."""
        controls = {
            "NoiseReductionMode": libcamera.controls.draft.NoiseReductionModeEnum.HighQuality,
            "FrameDurationLimits": (100, 1000000 * 1000)} | controls
        return self._make_config(
            use_case=use_case, main=main,
            main_default={"format": "BGR888", "size": self.sensor_resolution,
                          "preserve_ar": True},
            lores=lores, raw=raw, transform=transform, colour_space=colour_space,
            buffer_count=buffer_count, controls=controls, display=display, encode=encode,
            queue=queue, sensor=sensor)

    def create_video_configuration(self, main={}, lores=None, raw={},  # noqa: B006
                                   transform=libcamera.Transform(),  # noqa: B008
                                   colour_space=None, buffer_count=6, controls={},  # noqa: B006
                                   display="main", encode="main", queue=True,
                                   sensor={}, use_case="video") -> dict:  # noqa: B006
        """Make a configuration suitable for video recording."""
        controls = {"NoiseReductionMode": libcamera.controls.draft.NoiseReductionModeEnum.Fast,
                    "FrameDurationLimits": (33333, 33333)} | controls
        config = self._make_config(
            use_case=use_case, main=main,
            main_default={"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True},
            lores=lores, raw=raw, transform=transform, colour_space=colour_space,
            buffer_count=buffer_count, controls=controls, display=display, encode=encode,
            queue=queue, sensor=sensor)
        if config["colour_space"] is None:
            # Choose the default colour space according to the video resolution.
            width, height = config["main"]["size"]
            config["colour_space"] = (libcamera.ColorSpace.Smpte170m()
                                      if width < 1280 or height < 720
                                      else libcamera.ColorSpace.Rec709())
        return config

    @staticmethod
    def align_stream(stream_config: dict, optimal: bool = True) -> None:
        if optimal:
            align = 32 if Picamera2.platform == Platform.Platform.VC4 else 64
            if stream_config["format"] in ("YUV420", "YVU420"):
                align *= 2
            elif stream_config["format"] in ("XBGR8888", "XRGB8888", "RGB161616", "BGR161616"):
                align //= 2
        else:
            align = 2
        size = stream_config["size"]
        stream_config["size"] = (size[0] - size[0] % align, size[1] - size[1] % 2)

    @staticmethod
    def align_configuration(config: dict, optimal: bool = True) -> None:
        Picamera2.align_stream(config["main"], optimal=optimal)
        if config.get("lores") is not None:
            Picamera2.align_stream(config["lores"], optimal=optimal)

    def check_stream_config(self, stream_config, name) -> None:
        """Raise RuntimeError, with the real messages, if one stream's config is invalid."""
        if type(stream_config) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        if "format" not in stream_config:
            raise RuntimeError("format not found in " + name + " stream")
        if "size" not in stream_config:
            raise RuntimeError("size not found in " + name + " stream")
        fmt = stream_config["format"]
        if type(fmt) is not str:
            raise RuntimeError("format in " + name + " stream should be a string")
        if name == "raw":
            if not formats.is_raw(fmt):
                raise RuntimeError("Unrecognised raw format " + fmt)
        elif not formats.is_YUV(fmt) and not formats.is_RGB(fmt) and fmt != "MJPEG":
            raise RuntimeError("Bad format " + fmt + " in stream " + name)
        size = stream_config["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def check_camera_config(self, camera_config: dict) -> None:
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in camera_config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        if not isinstance(camera_config["colour_space"], libcamera.ColorSpace):
            raise RuntimeError("Colour space has incorrect type")
        if not isinstance(camera_config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        if camera_config.get("sensor") is not None:
            bad_keys = set(camera_config["sensor"]).difference({"bit_depth", "output_size"})
            if bad_keys:
                raise RuntimeError(f"Unexpected keys {bad_keys} in sensor configuration")
        self.check_stream_config(camera_config["main"], "main")
        if camera_config["lores"] is not None:
            self.check_stream_config(camera_config["lores"], "lores")
            main_w, main_h = camera_config["main"]["size"]
            lores_w, lores_h = camera_config["lores"]["size"]
            if lores_w > main_w or lores_h > main_h:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if (Picamera2.platform == Platform.Platform.VC4
                    and not formats.is_YUV(camera_config["lores"]["format"])):
                raise RuntimeError("lores stream must be YUV")
        if camera_config["raw"] is not None:
            self.check_stream_config(camera_config["raw"], "raw")

    def _select_sensor_mode(self, camera_config: dict) -> dict[str, Any]:
        """The sensor mode libcamera would pick: the real picamera2/libcamera scoring."""
        assert self._handle is not None
        sensor = camera_config.get("sensor") or {}
        raw = camera_config.get("raw")
        if sensor.get("bit_depth") is not None:
            bit_depth = sensor["bit_depth"]
        elif raw is not None and "format" in raw:
            bit_depth = SensorFormat(raw["format"]).bit_depth
        else:
            bit_depth = SensorFormat(self.sensor_format).bit_depth
        if sensor.get("output_size") is not None:
            output_size = sensor["output_size"]
        elif raw is not None and "size" in raw:
            output_size = raw["size"]
        else:
            output_size = camera_config["main"]["size"]

        def score_format(desired: float, actual: float) -> float:
            score = desired - actual
            return -score / 4 if score < 0 else score * 2

        def score_mode(mode: dict[str, Any]) -> float:
            mode_size = mode["size"]
            score = score_format(output_size[0], mode_size[0])
            score += score_format(output_size[1], mode_size[1])
            score += 1500 * score_format(output_size[0] / output_size[1],
                                         mode_size[0] / mode_size[1])
            score += 500 * abs(bit_depth - mode["bit_depth"])
            return score

        return min(self._handle.sensor_modes, key=score_mode)

    def configure_(self, camera_config="preview") -> None:
        """Configure the camera system with the given configuration."""
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if isinstance(camera_config, str):
            camera_config = {"preview": self.create_preview_configuration,
                             "still": self.create_still_configuration}.get(
                camera_config, self.create_video_configuration)()
        elif isinstance(camera_config, dict):
            camera_config = camera_config.copy()
        if camera_config is None:
            camera_config = self.create_preview_configuration()
        if not self._is_rpi_camera():
            camera_config["raw"] = None
        self.camera_config = None
        self.check_camera_config(camera_config)
        for name in ("main", "lores"):
            stream = camera_config[name]
            if stream is not None and stream["format"] not in FAKE_RENDERABLE_FORMATS:
                raise NotImplementedError(
                    f"the fake picamera2 cannot render {stream['format']} ({name} stream); "
                    f"it renders {', '.join(FAKE_RENDERABLE_FORMATS)}")
        mode = self._select_sensor_mode(camera_config)
        assert self._handle is not None
        if not self._handle._connected(self._generation):
            raise RuntimeError(f"Configuration failed: {camera_config}")
        if camera_config["raw"] is not None:
            camera_config["raw"]["size"] = mode["size"]
        for name in ("main", "lores", "raw"):
            stream = camera_config[name]
            if stream is not None:
                stream["stride"] = _stride_for(stream["format"], stream["size"][0])
                stream["framesize"] = _frame_size_for(stream["format"], stream["stride"],
                                                      stream["size"][1])
        camera_config["sensor"] = {"bit_depth": mode["bit_depth"], "output_size": mode["size"]}
        self._load_controls_for_mode(mode)
        self.stream_map = {name: (name if camera_config[name] is not None else None)
                           for name in ("main", "lores", "raw")}
        self.display_stream_name = camera_config["display"]
        self.encode_stream_name = camera_config["encode"]
        self._max_queue_len = 1 if camera_config["queue"] and camera_config["buffer_count"] > 1 \
            else 0
        self.camera_config = camera_config
        self._handle._note(
            "configure main={}x{}/{} lores={} sensor={}x{}".format(
                *camera_config["main"]["size"], camera_config["main"]["format"],
                "{}x{}/{}".format(*camera_config["lores"]["size"],
                                  camera_config["lores"]["format"])
                if camera_config["lores"] else None,
                *mode["size"]))
        # As the real one: the controls are set last, so an unknown control raises with
        # the camera already configured.
        self.controls = Controls(self, controls=self.camera_config["controls"])
        self.configure_count += 1

    def configure(self, camera_config=None) -> None:
        """Configure the camera; defaults to the preview configuration."""
        self.configure_("preview" if camera_config is None else camera_config)

    def camera_configuration(self) -> dict:
        return self.camera_config

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    # -- running ---------------------------------------------------------------------------

    def start_(self) -> None:
        """Start the camera system running."""
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        assert self._handle is not None
        self._handle._require_connected(self._generation, "start")
        requested = self.controls.make_dict()
        if "FrameDurationLimits" in requested:
            self._frame_limits_us = tuple(requested["FrameDurationLimits"])
        self.controls = Controls(self)
        self._frame_duration_us = self._effective_frame_duration_us()
        self._handle._camera_started()
        self._frame_stop = threading.Event()
        self._frame_thread = threading.Thread(
            target=self._frame_loop,
            args=(self._frame_stop,),
            name=f"picamera2-fake-frames-{self._handle.model}-cam{self.camera_idx}",
            daemon=True,
        )
        self.started = True
        self._frame_thread.start()
        _log.info("Camera started")

    def start(self, config=None, show_preview=False) -> None:
        """Start the camera, configuring it first if `config` is given or nothing was."""
        if self.camera_config is None and config is None:
            config = "preview"
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.start_()

    def _halt_frames(self) -> None:
        thread = self._frame_thread
        self._frame_stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(FRAME_THREAD_JOIN_TIMEOUT_S)
            if thread.is_alive():
                _log.error("fake camera thread %s did not stop within %.0fs; an encoder "
                           "output is probably blocked", thread.name, FRAME_THREAD_JOIN_TIMEOUT_S)
        self._frame_thread = None

    def stop_(self, request=None) -> tuple[bool, None]:
        """Stop the camera (from within the event loop in the real library)."""
        if self.started:
            assert self._handle is not None
            self.stop_count += 1
            self._halt_frames()
            # camera.stop() is where the real library blocks when the kernel hangs.
            self._handle._block_while_stop_hung("stop")
            self._handle._require_connected(self._generation, "stop")
            self.started = False
            with self.lock:
                self.completed_requests = []
            self._handle._note("stop")
            _log.info("Camera stopped")
        return (True, None)

    def stop(self) -> None:
        """Stop the camera."""
        if not self.started:
            _log.debug("Camera was not started")
            return
        self.stop_()

    def close(self) -> None:
        """Close the camera; a second call does nothing."""
        if not self.is_open:
            return
        self.stop()
        for encoder in list(self._encoders):
            if encoder.running:
                _log.warning("fake picamera2: close() stopped %r that the caller left "
                             "running (the real close() leaves it running)", encoder)
                assert self._handle is not None
                self._handle._note(f"close_stopped_encoder {type(encoder).__name__}")
                encoder.stop()
        self._encoders.clear()
        assert self._handle is not None
        self._handle._release(self, self._generation)
        self.is_open = False
        self.stream_map = None
        self.camera = None
        self.camera_ctrl_info = {}
        self.camera_config = None
        _LIVE_INSTANCES.discard(self)
        _log.info("Camera closed successfully.")

    def _fake_shutdown(self) -> None:
        """Teardown used by _fake.remove_all_cameras(): stop every thread, skip every fault."""
        self._halt_frames()
        for encoder in list(self._encoders):
            if encoder.running:
                try:
                    encoder.stop()
                except Exception:
                    _log.exception("fake teardown: stopping %r failed", encoder)
        self._encoders.clear()
        self.started = False
        self.is_open = False
        self.camera = None
        self.camera_config = None
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []
        _LIVE_INSTANCES.discard(self)

    def set_controls(self, controls) -> None:
        """Set camera controls; a running camera applies frame-rate changes to the next frame."""
        self.controls.set_controls(controls)
        if self.started:
            requested = self.controls.make_dict()
            if "FrameDurationLimits" in requested:
                self._frame_limits_us = tuple(requested["FrameDurationLimits"])
                self._frame_duration_us = self._effective_frame_duration_us()
            self.controls = Controls(self)

    def _effective_frame_duration_us(self) -> int:
        info = self.camera_ctrl_info["FrameDurationLimits"][1]
        low, high = self._frame_limits_us or (info.default, info.default)
        # The sensor mode bounds what is possible; within that, run as fast as allowed.
        low = min(max(low, info.min), info.max)
        high = min(max(high, info.min), info.max)
        return min(low, high) if high < low else low

    def _frame_loop(self, stop: threading.Event) -> None:
        """Produce frames at the frame duration until stopped, vanished or stalled."""
        handle = self._handle
        assert handle is not None and self.camera_config is not None
        lores = self.camera_config["lores"]
        synth = _fake.FrameSynth(self.camera_config["main"]["size"],
                                 lores["size"] if lores is not None else None)
        buffer_count = max(1, self.camera_config["buffer_count"])
        next_due_ns = time.monotonic_ns()
        while True:
            delay_s = (next_due_ns - time.monotonic_ns()) / 1e9
            if stop.wait(max(0.0, delay_s)):
                return
            if not handle._connected(self._generation):
                handle._note("frames_stopped reason=disconnected")
                return
            if handle.is_stalled:
                # A frontend timeout: no frame arrives again on this run; libcamera notices
                # when its dequeue timer expires.
                handle._note("frames_stopped reason=frontend_timeout")
                if not stop.wait(handle.dequeue_timeout_s):
                    handle._log_frontend_timeout()
                return
            duration_ns = self._frame_duration_us * 1000
            lag_ns = time.monotonic_ns() - next_due_ns
            if lag_ns > buffer_count * duration_ns:
                # No free buffer for these: the sensor's frames are lost, numbers and all.
                missed = lag_ns // duration_ns
                handle._frames_dropped(missed)
                next_due_ns += missed * duration_ns
            number = handle._take_frame_number()
            try:
                self._deliver(synth, number, next_due_ns)
            except Exception as err:
                _log.exception("fake picamera2 camera thread: handling frame %d failed; "
                               "no more frames until restart", number)
                handle._note(f"event_loop_died error={type(err).__name__}")
                return
            handle._frame_delivered(number)
            next_due_ns += duration_ns

    def _deliver(self, synth: _fake.FrameSynth, number: int, timestamp_ns: int) -> None:
        main_luma, lores_luma = synth.render(number)
        lumas = {"main": main_luma}
        if lores_luma is not None:
            lumas["lores"] = lores_luma
        duration_us = self._frame_duration_us
        metadata = {
            "SensorTimestamp": timestamp_ns,
            "FrameDuration": duration_us,
            "ExposureTime": max(1, duration_us - 1000),
            "AnalogueGain": 1.0,
            "DigitalGain": 1.0,
        }
        request = _FakeRequest(self, lumas, metadata)
        finished: list[Job] = []
        with self.lock:
            self.frames += 1
            self.completed_requests.append(request)
            if self.pre_callback:
                self.pre_callback(request)
            while self._job_list:
                if self._job_list[0].execute():
                    finished.append(self._job_list.pop(0))
                else:
                    break
            if self.post_callback:
                self.post_callback(request)
            for encoder in list(self._encoders):
                if encoder.name in self.stream_map:
                    encoder.encode(encoder.name, request)
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()
        for job in finished:
            job.signal()

    # -- jobs and captures -----------------------------------------------------------------

    def wait(self, job, timeout=None):
        """Wait for a job (from wait=False or a signal_function) and return its result."""
        return job.get_result(timeout=timeout)

    def dispatch_functions(self, functions, wait, signal_function=None, immediate=False):
        """Queue functions for the frame loop; wait as the real one does (see module doc)."""
        if wait is None:
            wait = signal_function is None
        timeout = wait
        if timeout is True:
            timeout = None
        finished: list[Job] = []
        with self.lock:
            job = Job(functions, signal_function)
            self._job_list.append(job)
            # The real one prods its event loop here when a frame is already waiting.
            if len(self._job_list) == 1 and self.completed_requests and job.execute():
                finished.append(self._job_list.pop(0))
        for done in finished:
            done.signal()
        return job.get_result(timeout=timeout) if wait else job

    def cancel_all_and_flush(self) -> None:
        """Cancel every queued job: waiting callers get CancelledError."""
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []

    def capture_array_(self, name):
        if not self.completed_requests:
            return (False, None)
        request = self.completed_requests.pop(0)
        result = request.make_array(name)
        request.release()
        return (True, result)

    def capture_array(self, name="main", wait=None, signal_function=None):
        """Make a 2d image from the next frame in the named stream."""
        return self.dispatch_functions([partial(self.capture_array_, name)], wait,
                                       signal_function)

    def capture_buffer_(self, name):
        if not self.completed_requests:
            return (False, None)
        request = self.completed_requests.pop(0)
        result = request.make_buffer(name)
        request.release()
        return (True, result)

    def capture_buffer(self, name="main", wait=None, signal_function=None):
        """Make a 1d numpy array from the next frame in the named stream."""
        return self.dispatch_functions([partial(self.capture_buffer_, name)], wait,
                                       signal_function)

    def capture_metadata_(self):
        if not self.completed_requests:
            return (False, None)
        request = self.completed_requests.pop(0)
        result = request.get_metadata()
        request.release()
        return (True, result)

    def capture_metadata(self, wait=None, signal_function=None):
        """Fetch the metadata from the next camera frame."""
        return self.dispatch_functions([self.capture_metadata_], wait, signal_function)

    def capture_request_(self):
        if not self.completed_requests:
            return (False, None)
        return (True, self.completed_requests.pop(0))

    def capture_request(self, wait=None, signal_function=None, flush=None):
        """Fetch the next completed request; release() it when done."""
        if flush is True:
            flush = time.monotonic_ns()

        def wait_for_timestamp_():
            if not flush:
                return (True, None)
            while self.completed_requests:
                if self.completed_requests[0].get_metadata()["SensorTimestamp"] >= flush:
                    return (True, None)
                self.completed_requests.pop(0).release()
            return (False, None)

        return self.dispatch_functions([wait_for_timestamp_, self.capture_request_], wait,
                                       signal_function)

    # -- encoders --------------------------------------------------------------------------

    def start_encoder(self, encoder=None, output=None, pts=None, quality=None, name=None) -> None:
        """Start an encoder on a stream (default: the configuration's "encode" stream)."""
        _encoder = None
        if encoder is not None:
            _encoder = encoder
        elif len(self._encoders) > 1:
            raise RuntimeError("Multiple possible encoders, need to pass encoder")
        elif len(self._encoders) == 1:
            _encoder = next(iter(self._encoders))
        if _encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            if isinstance(output, str):
                output = FileOutput(output, pts=pts)
            _encoder.output = output
        streams = self.camera_configuration()
        if name is None:
            name = self.encode_stream_name
        if streams.get(name, None) is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        _encoder.name = name
        _encoder.width, _encoder.height = streams[name]["size"]
        _encoder.format = streams[name]["format"]
        _encoder.stride = streams[name]["stride"]
        # A nominal framerate for the encoder, pegged at 30fps max.
        min_frame_duration = self.camera_ctrl_info["FrameDurationLimits"][1].min
        min_frame_duration = max(min_frame_duration, NOMINAL_ENCODER_FRAME_US)
        try:
            if _encoder.framerate is None:
                _encoder.framerate = 1000000 / min_frame_duration
        except AttributeError:
            pass
        _encoder.start(quality=quality)
        with self.lock:
            self._encoders.add(_encoder)
        assert self._handle is not None
        self._handle._note(
            f"start_encoder {type(_encoder).__name__} stream={name} "
            f"iperiod={getattr(_encoder, 'iperiod', None)} "
            f"framerate={getattr(_encoder, 'framerate', None)}")

    def stop_encoder(self, encoders=None) -> None:
        """Stop the given encoder(s), or all of them."""
        assert self._handle is not None
        self._handle._block_while_stop_hung("stop_encoder")
        remove = []
        if encoders is None:
            for encoder in list(self._encoders):
                encoder.stop()
                remove.append(encoder)
        elif isinstance(encoders, Encoder):
            encoders.stop()
            remove.append(encoders)
        elif isinstance(encoders, list | set):
            for encoder in encoders:
                encoder.stop()
                remove.append(encoder)
        with self.lock:
            for encoder in remove:
                self._encoders.remove(encoder)
        self._handle._note(f"stop_encoder count={len(remove)}")

    @property
    def encoders(self) -> set:
        return self._encoders

    @encoders.setter
    def encoders(self, value) -> None:
        if isinstance(value, Encoder):
            self._encoders.add(value)
        elif isinstance(value, set):
            self._encoders.update(value)
        else:
            raise RuntimeError("Must pass Encoder or set of")

    def start_recording(self, encoder, output, pts=None, config=None, quality=None,
                        name=None) -> None:
        """Configure if needed, start the encoder, then the camera."""
        if self.camera_config is None and config is None:
            config = "video"
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_recording(self) -> None:
        """Stop the camera, then the encoders."""
        self.stop()
        self.stop_encoder()
