"""The hardware under the fake libcamera binding: sensors, their faults, what happened.

This is the test's side of the fake (picamera2 never imports it): `install_camera()` plugs
a sensor in, the handle it returns drives the faults the Pi camera shows, and keeps a
timestamped history, as gpiozero's MockPin does.

Sensors, as `rpicam-hello --list-cameras` and libcamera's Raspberry Pi pipeline handler
report them (src/libcamera/pipeline/rpi/common/pipeline_base.cpp, the cam_helper_imx708 /
imx219 sensor tables in src/ipa/rpi/cam_helper/ of raspberrypi/libcamera):
- imx708 (Camera Module 3), mounted rotated by 180 degrees as the module reports, so BGGR:
  SBGGR10_CSI2P 1536x864 @ 120.13 fps, 2304x1296 @ 56.03, 4608x2592 @ 14.35;
- imx219 (Camera Module 2): SRGGB10_CSI2P and SRGGB8 at 640x480 @ 206.65 fps (103.33 on
  8 bit), 1640x1232 @ 41.85, 1920x1080 @ 47.57, 3280x2464 @ 21.19.
A mode's fastest rate is its minimum frame duration (1e6 / fps microseconds, rounded), so
picamera2's sensor_modes, which reads FrameDurationLimits after configuring each mode,
reports exactly these rates.

Faults (what the real stack does, and what the fake does instead):
- frontend_timeout(): the sensor stops sending; the pipeline handler logs "Camera frontend
  has timed out!" after its dequeue timer, and queued requests never complete, until the
  camera is stopped (a restarted sensor streams again);
- hang_stop(): Camera.stop() blocks until release_stop() (raspberrypi/picamera2 #1264:
  stop() hanging after a frontend timeout);
- vanish()/reappear(): the camera is unplugged (the CameraManager stops listing it, the
  Camera is disconnected: queue_request, stop, release fail with ENODEV, nothing completes)
  and plugged back as a new Camera;
- sensor configurations that match no mode make CameraConfiguration.validate() Invalid;
- slow_event_loop(seconds): whoever takes the completed requests (picamera2's event loop,
  whose process_requests also runs every encoder on the frame: libx264 on a Pi 5's CPU)
  spends that long on each, as a Pi 5 whose cores are busy. On the real stack the
  requests then come back late, libcamera has no free buffer when a frame is due, and the
  frame is lost (the sensor's timestamps jump); the fake does the same: a frame with no
  queued request is counted (its number is used up) and recorded as frame_dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

_libcamera_log = logging.getLogger("libcamera.RPI")
DEFAULT_DEQUEUE_TIMEOUT_S = 1.0  # libcamera's V4L2 dequeue watchdog on the Pi frontend
VANISH_WAIT_S = 2.0  # a streaming sensor completes a frame well within this


@dataclass(frozen=True)
class SensorMode:
    format: str  # the packed raw format name, e.g. SBGGR10_CSI2P
    width: int
    height: int
    fps: float
    crop: tuple[int, int, int, int]  # the sensor area this mode reads, in pixel array units

    @property
    def bit_depth(self) -> int:
        return int("".join(c for c in self.format.split("_")[0] if c.isdigit()))

    @property
    def min_frame_us(self) -> int:
        return round(1e6 / self.fps)


@dataclass(frozen=True)
class Sensor:
    model: str
    modes: tuple[SensorMode, ...]
    pixel_array: tuple[int, int]
    unit_cell_nm: tuple[int, int]
    rotation: int
    cfa: int  # properties.draft.ColorFilterArrangement: 0 RGGB, 3 BGGR
    i2c: str
    max_frame_us: int
    exposure_limits: tuple[int, int, int]
    has_autofocus: bool


IMX708 = Sensor(
    "imx708",
    (SensorMode("SBGGR10_CSI2P", 1536, 864, 120.13, (768, 432, 3072, 1728)),
     SensorMode("SBGGR10_CSI2P", 2304, 1296, 56.03, (0, 0, 4608, 2592)),
     SensorMode("SBGGR10_CSI2P", 4608, 2592, 14.35, (0, 0, 4608, 2592))),
    (4608, 2592), (1400, 1400), 180, 3, "i2c@88000/imx708@1a", 220_417_486,
    (26, 220_417_486, 20_000), True)
IMX219 = Sensor(
    "imx219",
    (SensorMode("SRGGB10_CSI2P", 640, 480, 206.65, (1000, 752, 1280, 960)),
     SensorMode("SRGGB10_CSI2P", 1640, 1232, 41.85, (0, 0, 3280, 2464)),
     SensorMode("SRGGB10_CSI2P", 1920, 1080, 47.57, (680, 692, 1920, 1080)),
     SensorMode("SRGGB10_CSI2P", 3280, 2464, 21.19, (0, 0, 3280, 2464)),
     SensorMode("SRGGB8", 640, 480, 103.33, (1000, 752, 1280, 960)),
     SensorMode("SRGGB8", 1640, 1232, 41.85, (0, 0, 3280, 2464)),
     SensorMode("SRGGB8", 1920, 1080, 47.57, (680, 692, 1920, 1080)),
     SensorMode("SRGGB8", 3280, 2464, 21.19, (0, 0, 3280, 2464))),
    (3280, 2464), (1120, 1120), 180, 0, "i2c@80000/imx219@10", 11_767_556,
    (75, 11_767_556, 20_000), False)
SENSORS = {"imx708": IMX708, "imx219": IMX219}


@dataclass
class FakeCameraHardware:
    """One plugged-in sensor: what libcamera's pipeline handler would see, with faults to drive."""

    sensor: Sensor
    camera_id: str
    dequeue_timeout_s: float = DEFAULT_DEQUEUE_TIMEOUT_S
    connected: bool = True
    generation: int = 0  # +1 per reappear(): a new libcamera Camera each time
    frames_produced: int = 0  # never reset: the frame-number code of the next frame
    streaming: int = 0  # cameras of this sensor started and not stopped
    request_cost_s: float = 0.0  # slow_event_loop(): time taken per completed request
    _vanish_pending: bool = False
    history: list[tuple[float, str, str]] = field(default_factory=list)
    _stalled: threading.Event = field(default_factory=threading.Event)
    _stop_gate: threading.Event = field(default_factory=threading.Event)
    _frame: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self._stop_gate.set()

    # -- history ------------------------------------------------------------------------------

    def record(self, event: str, detail: str = "") -> None:
        self.history.append((time.monotonic(), event, detail))

    def events(self, name: str) -> list[tuple[float, str]]:
        return [(t, d) for t, e, d in self.history if e == name]

    def count_frame(self) -> int:
        with self._frame:
            n = self.frames_produced
            self.frames_produced += 1
            self._frame.notify_all()
        return n

    def wait_for_frames(self, count: int, timeout: float) -> bool:
        """True once the sensor has produced at least `count` frames in all."""
        with self._frame:
            return self._frame.wait_for(lambda: self.frames_produced >= count, timeout)

    # -- faults -------------------------------------------------------------------------------

    @property
    def is_stalled(self) -> bool:
        return self._stalled.is_set()

    def frontend_timeout(self) -> None:
        """The sensor goes quiet: queued requests stay pending; libcamera logs the timeout."""
        self.record("frontend_timeout")
        self._stalled.set()

    def log_frontend_timeout(self) -> None:
        _libcamera_log.warning("Dequeue timer of %.2fs has expired!", self.dequeue_timeout_s)
        _libcamera_log.error("Camera frontend has timed out!")
        _libcamera_log.error("Please check that your camera sensor connector is attached securely.")
        _libcamera_log.error("Alternatively, try another cable and/or sensor.")
        self.record("frontend_timeout_logged")

    def clear_stall(self) -> None:
        self._stalled.clear()

    def slow_event_loop(self, seconds: float) -> None:
        """Each completed request costs its taker `seconds` from now on (0: none)."""
        self.record("slow_event_loop", f"{seconds:g}")
        self.request_cost_s = seconds

    def dropped_numbers(self) -> list[int]:
        """Numbers of the frames the sensor made with no request to put them in."""
        return [int(d.split(":")[0].removeprefix("n=")) for _, d in self.events("frame_dropped")]

    def hang_stop(self) -> None:
        """Camera.stop() blocks from now on until release_stop()."""
        self.record("hang_stop")
        self._stop_gate.clear()

    def release_stop(self) -> None:
        self.record("release_stop")
        self._stop_gate.set()

    def wait_stop_gate(self) -> None:
        if not self._stop_gate.is_set():
            self.record("stop_blocked")
            self._stop_gate.wait()

    def vanish(self) -> None:
        """Unplugged: libcamera drops the camera, the open Camera object is disconnected.

        While it streams, the unplug lands just after a frame completes, so that frame is in
        picamera2's hands when the camera goes, as with a cable pulled mid-stream: queueing
        it again fails with ENODEV. Returns once the camera is gone.
        """
        self.record("vanish")
        with self._frame:
            if self.streaming:
                self._vanish_pending = True
                if self._frame.wait_for(lambda: not self.connected, VANISH_WAIT_S):
                    return
            self._vanish_pending = False
            self.connected = False

    def frame_completed(self) -> None:
        """The frame thread finished a frame: a pending unplug happens now."""
        with self._frame:
            if self._vanish_pending:
                self._vanish_pending = False
                self.connected = False
                self.record("vanished", "after a completed frame")
                self._frame.notify_all()

    def reappear(self) -> None:
        """Plugged back: listed again as a new, healthy Camera."""
        self.record("reappear")
        self._stalled.clear()
        self._vanish_pending = False
        self.generation += 1
        self.connected = True


class CameraSystem:
    """The sensors plugged into this fake machine, in libcamera's enumeration order."""

    def __init__(self) -> None:
        self.cameras: list[FakeCameraHardware] = []
        self.lock = threading.Lock()
        self.managers: weakref.WeakSet[Any] = weakref.WeakSet()  # the binding's CameraManagers

    def install_camera(self, sensor: str = "imx708", *, dequeue_timeout_s: float = 0.2,
                       port: int = 0) -> FakeCameraHardware:
        spec = SENSORS[sensor]
        # A Pi 5's two CSI ports sit on RP1's i2c@88000 (CAM/DISP 0) and i2c@80000 (1).
        bus = "i2c@88000" if port == 0 else "i2c@80000"
        camera_id = f"/base/axi/pcie@1000120000/rp1/{bus}/{spec.i2c.split('/', 1)[1]}"
        hardware = FakeCameraHardware(spec, camera_id, dequeue_timeout_s=dequeue_timeout_s)
        with self.lock:
            self.cameras.append(hardware)
        return hardware

    def connected(self) -> list[FakeCameraHardware]:
        with self.lock:
            return [c for c in self.cameras if c.connected]

    def reset(self) -> None:
        """Unplug everything; end every camera thread a CameraManager started."""
        with self.lock:
            cameras, self.cameras = self.cameras, []
        for camera in cameras:
            camera.release_stop()
        for manager in list(self.managers):
            manager._shutdown()


SYSTEM = CameraSystem()


def install_camera(sensor: str = "imx708", **kwargs: float) -> FakeCameraHardware:
    return SYSTEM.install_camera(sensor, **kwargs)  # type: ignore[arg-type]
