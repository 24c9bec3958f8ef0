"""The fake cameras behind the fake picamera2: install them, break them, read what happened.

Tests drive the fake from here, gpiozero-MockPin style; nothing in this module exists in the
real library. Typical use::

    from picamera2 import _fake
    cam = _fake.install_camera()            # an imx708 (Camera Module 3) on a Pi 4
    ...code under test opens Picamera2()...
    cam.frontend_timeout()                   # frames stop, as with a loose ribbon cable
    cam.hang_stop(None)                      # stop() now blocks until cam.release_stop()
    assert cam.wait_for_event("stop_blocked", timeout=2)
    _fake.remove_all_cameras()               # teardown: unblocks and stops everything

Frames carry the frame-number code (vigil's contract, see hw/framecode.py): the top 16
rows hold the number n as 32 cells across the width W; cell i spans columns
floor(i*W/32)..floor((i+1)*W/32)-1 and is Y=255 when bit 31-i of n is set, Y=0 otherwise.
n is 0 for the first frame this process's fake sensors produce and grows by one per frame,
across cameras, restarts and dropped frames (a dropped frame still uses up its number, so
a gap in a recording shows where frames were lost).

Faults and what the real stack does (sources in the package docstring):
- frontend_timeout(): libcamera logs "Camera frontend has timed out!" after its 1 s V4L2
  dequeue timer and no more frames arrive; captures time out. A restart (stop()+start())
  clears it unless persist=True (a camera that stays broken).
- hang_stop(seconds | None): stop() and stop_encoder() block, as they do when the kernel
  sits in VIDIOC_STREAMOFF after a frontend timeout (raspberrypi/picamera2 #1264, #1275).
- vanish() / reappear(): the camera leaves and rejoins the CameraManager's list. The open
  Picamera2 stays bound to the gone camera (libcamera marks that Camera disconnected for
  good): start/stop/configure raise RuntimeError "... No such device", captures time out;
  a new Picamera2() is needed after reappear().
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from typing import Any

import numpy as np

from .sensor_format import SensorFormat

__all__ = [
    "PLATFORMS",
    "FakeCamera",
    "cameras",
    "draw_frame_number",
    "install_camera",
    "platform_name",
    "read_frame_number",
    "remove_all_cameras",
    "reset",
    "set_platform",
]

# Platform names tests use, and the picamera2.platform.Platform member each one means.
PLATFORMS = {"pi4": "VC4", "pi5": "PISP"}

# libcamera's V4L2 dequeue timer before "Camera frontend has timed out!" (the log reads
# "Dequeue timer of 1000000.00us has expired!").
DEFAULT_DEQUEUE_TIMEOUT_S = 1.0

CODE_ROWS = 16
CODE_BITS = 32
WHITE_LUMA = 255
BLACK_LUMA = 0
STRIPE_PERIOD_PX = 64  # power of two: the uint8 pattern wraps cleanly
SCROLL_PX_PER_FRAME = 4
NEUTRAL_CHROMA = 128

# Camera Module 3 (imx708) modes as picamera2's sensor_modes lists them. Sizes and rates
# are the module's published modes; the crop and exposure limits are typical values.
IMX708_SENSOR_MODES: tuple[dict[str, Any], ...] = (
    {"format": "SBGGR10_CSI2P", "size": (1536, 864), "fps": 120.13,
     "crop_limits": (768, 432, 3072, 1728), "exposure_limits": (9, 77193582, None)},
    {"format": "SBGGR10_CSI2P", "size": (2304, 1296), "fps": 56.03,
     "crop_limits": (0, 0, 4608, 2592), "exposure_limits": (13, 112015443, None)},
    {"format": "SBGGR10_CSI2P", "size": (4608, 2592), "fps": 14.35,
     "crop_limits": (0, 0, 4608, 2592), "exposure_limits": (26, 220417486, None)},
)

# libcamera properties::ColorFilterArrangement value for each Bayer order.
_COLOUR_FILTER = {"SRGGB": 0, "SGRBG": 1, "SGBRG": 2, "SBGGR": 3, "R": 5}
_LOCATION_EXTERNAL = 2  # libcamera properties::Location; Pi CSI cameras report External

_libcamera_log = logging.getLogger("libcamera.RPI")
_log = logging.getLogger(__name__)

_registry_lock = threading.RLock()
_cameras: list[FakeCamera] = []
_platform = "pi4"

_frame_numbers = itertools.count()
_frame_numbers_lock = threading.Lock()


def _take_frame_numbers(count: int) -> list[int]:
    with _frame_numbers_lock:
        return [next(_frame_numbers) for _ in range(count)]


# ---------------------------------------------------------------------------------------
# Frame-number code


def cell_bounds(width: int) -> list[tuple[int, int]]:
    """Column ranges [start, stop) of the 32 code cells in a frame `width` pixels wide."""
    return [(i * width // CODE_BITS, (i + 1) * width // CODE_BITS) for i in range(CODE_BITS)]


def draw_frame_number(luma: np.ndarray, n: int) -> None:
    """Write n into the top 16 rows of a luma plane (H, W), in place."""
    if not 0 <= n < 2**CODE_BITS:
        raise ValueError(f"frame number {n} does not fit in {CODE_BITS} bits")
    row = np.empty(luma.shape[1], dtype=np.uint8)
    for i, (start, stop) in enumerate(cell_bounds(luma.shape[1])):
        row[start:stop] = WHITE_LUMA if (n >> (CODE_BITS - 1 - i)) & 1 else BLACK_LUMA
    luma[:CODE_ROWS, :] = row


def read_frame_number(luma: np.ndarray) -> int:
    """The number carried by a luma plane (H, W), tolerant of compression noise."""
    band = luma[2 : CODE_ROWS - 2, :]
    n = 0
    for start, stop in cell_bounds(luma.shape[1]):
        margin = max(1, (stop - start) // 4)
        cell = band[:, start + margin : max(start + margin + 1, stop - margin)]
        n = (n << 1) | int(cell.mean() > 127)
    return n


class FrameSynth:
    """Draws one sensor frame into the configured streams: the code plus moving stripes."""

    def __init__(self, main_size: tuple[int, int], lores_size: tuple[int, int] | None) -> None:
        width, height = main_size
        rows = np.arange(height, dtype=np.int64)[:, None]
        cols = np.arange(width, dtype=np.int64)[None, :]
        self._base = ((rows + cols) % STRIPE_PERIOD_PX).astype(np.uint8)
        self.main_size = main_size
        self.lores_size = lores_size
        self._lores_index = None
        if lores_size is not None:
            lw, lh = lores_size
            self._lores_index = np.ix_(
                np.arange(lh) * height // lh, np.arange(lw) * width // lw
            )

    def render(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Luma planes (main, lores or None) of frame n."""
        shift = (n * SCROLL_PX_PER_FRAME) % STRIPE_PERIOD_PX
        luma = self._base + np.uint8(shift)  # uint8 wraps mod 256, a multiple of the period
        luma &= STRIPE_PERIOD_PX - 1
        luma <<= 2  # stripes span 0..252 grey
        draw_frame_number(luma, n)
        lores = None if self._lores_index is None else luma[self._lores_index]
        return luma, lores


def yuv420_from_luma(luma: np.ndarray) -> np.ndarray:
    """A packed YUV420 image (H*3/2, W), neutral chroma, as PyAV's yuv420p takes it."""
    height, width = luma.shape
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = luma
    out[height:] = NEUTRAL_CHROMA
    return out


# ---------------------------------------------------------------------------------------
# Platform


def platform_name() -> str:
    """The platform the fake pretends to be: "pi4" (VC4) or "pi5" (PiSP)."""
    return _platform


def set_platform(name: str) -> None:
    """Pretend to run on a Pi 4 ("pi4", VC4 ISP, hardware H.264) or Pi 5 ("pi5", PiSP).

    On a Pi 5 the real picamera2.encoders binds H264Encoder to LibavH264Encoder (software
    libx264) because /dev/video11 is not "bcm2835-codec-encode". Names the code under test
    already imported (`from picamera2.encoders import H264Encoder`) keep their old binding,
    as they would on a real machine; set the platform before the code under test imports.
    """
    global _platform
    if name not in PLATFORMS:
        raise ValueError(f"unknown platform {name!r}; choose one of {sorted(PLATFORMS)}")
    with _registry_lock:
        _platform = name
        platform_mod = sys.modules.get("picamera2.platform")
        if platform_mod is not None:
            platform_mod._platform = platform_mod.Platform[PLATFORMS[name]]
            main_mod = sys.modules.get("picamera2.picamera2")
            if main_mod is not None:
                main_mod.Picamera2.platform = platform_mod._platform
        encoders_mod = sys.modules.get("picamera2.encoders")
        if encoders_mod is not None:
            encoders_mod._rebind_for_platform()


# ---------------------------------------------------------------------------------------
# Cameras


def _default_camera_id(model: str, slot: int) -> str:
    if _platform == "pi5":
        port = ("i2c@88000", "i2c@80000")[slot % 2]
        return f"/base/axi/pcie@120000/rp1/{port}/{model}@1a"
    port = ("i2c@1", "i2c@0")[slot % 2]
    return f"/base/soc/i2c0mux/{port}/{model}@1a"


def install_camera(
    model: str = "imx708",
    *,
    sensor_modes: list[dict[str, Any]] | None = None,
    camera_id: str | None = None,
    rotation: int = 180,
    platform: str | None = None,
    dequeue_timeout_s: float = DEFAULT_DEQUEUE_TIMEOUT_S,
) -> FakeCamera:
    """Plug in a fake camera and return its handle; it joins global_camera_info().

    `sensor_modes` are dicts with "format", "size", "fps" and optionally "crop_limits" and
    "exposure_limits" (default: the imx708's three modes). `platform` ("pi4"/"pi5") is a
    machine-wide setting and simply calls set_platform(); pass it here or there.
    """
    if platform is not None:
        set_platform(platform)
    modes = [dict(m) for m in (IMX708_SENSOR_MODES if sensor_modes is None else sensor_modes)]
    if not modes:
        raise ValueError("a camera needs at least one sensor mode")
    with _registry_lock:
        camera = FakeCamera(
            model=model,
            camera_id=camera_id or _default_camera_id(model, len(_cameras)),
            sensor_modes=modes,
            rotation=rotation,
            dequeue_timeout_s=dequeue_timeout_s,
        )
        _cameras.append(camera)
    camera._note(f"install id={camera.camera_id}")
    return camera


def cameras() -> list[FakeCamera]:
    """Every installed camera, present or vanished, in installation order."""
    with _registry_lock:
        return list(_cameras)


def _present_cameras() -> list[FakeCamera]:
    """Cameras the CameraManager lists now, in its (libcamera index) order."""
    with _registry_lock:
        return [c for c in _cameras if c.is_present]


def remove_all_cameras() -> None:
    """Teardown: release hung stops, stop every open camera's threads, forget all cameras.

    A stop() still blocked in hang_stop() wakes up and raises RuntimeError ("No such
    device"): the camera it was stopping is gone.
    """
    with _registry_lock:
        installed = list(_cameras)
        _cameras.clear()
    for camera in installed:
        camera._tear_down()


def reset() -> None:
    """remove_all_cameras() and back to the default platform ("pi4")."""
    remove_all_cameras()
    set_platform("pi4")


class FakeCamera:
    """One fake camera: its description, its fault switches and its history.

    `history` is a list of (time.monotonic(), event) pairs; an event is a short string whose
    first word names it ("start", "stop_blocked", "frontend_timeout", ...).
    """

    def __init__(
        self,
        *,
        model: str,
        camera_id: str,
        sensor_modes: list[dict[str, Any]],
        rotation: int,
        dequeue_timeout_s: float,
    ) -> None:
        self.model = model
        self.camera_id = camera_id
        self.dequeue_timeout_s = dequeue_timeout_s
        self.sensor_modes = [self._complete_mode(m) for m in sensor_modes]
        native = max(self.sensor_modes, key=lambda m: (m["size"][0] * m["size"][1],
                                                       m["format"].bit_depth))
        bayer = native["format"].bayer_order
        self.properties: dict[str, Any] = {
            "Model": model,
            "Location": _LOCATION_EXTERNAL,
            "Rotation": rotation,
            "ColorFilterArrangement": _COLOUR_FILTER.get(bayer, 0),
            "PixelArraySize": native["size"],
            "PixelArrayActiveAreas": [(0, 0, *native["size"])],
        }
        self.history: list[tuple[float, str]] = []
        self.frames_produced = 0
        self.frames_dropped = 0
        self.last_frame_number: int | None = None
        self._cond = threading.Condition(threading.RLock())
        self._present = True
        self._generation = 0
        self._owner: Any = None
        self._stalled = False
        self._stall_persists = False
        self._stop_hang_until: float | None = None  # monotonic deadline; math.inf = forever

    @staticmethod
    def _complete_mode(mode: dict[str, Any]) -> dict[str, Any]:
        fmt = SensorFormat(str(mode["format"]))
        size = tuple(mode["size"])
        frame_us = round(1e6 / mode["fps"])
        return {
            "format": fmt,
            "unpacked": fmt.unpacked,
            "bit_depth": fmt.bit_depth,
            "size": size,
            "fps": round(float(mode["fps"]), 2),
            "crop_limits": tuple(mode.get("crop_limits", (0, 0, *size))),
            "exposure_limits": tuple(mode.get("exposure_limits", (1, frame_us * 1000, None))),
        }

    def __repr__(self) -> str:
        state = [
            "present" if self._present else "vanished",
            "open" if self._owner is not None else "closed",
        ]
        if self._stalled:
            state.append("frontend-timed-out")
        if self._stop_hang_until is not None:
            state.append("stop-hangs")
        return (
            f"<FakeCamera {self.model} id={self.camera_id} {' '.join(state)} "
            f"frames={self.frames_produced}>"
        )

    # -- state tests can read ------------------------------------------------------------

    @property
    def is_present(self) -> bool:
        return self._present

    @property
    def is_open(self) -> bool:
        return self._owner is not None

    @property
    def is_stalled(self) -> bool:
        return self._stalled

    def events(self, name: str) -> list[tuple[float, str]]:
        """History entries whose event is named `name` (its first word)."""
        with self._cond:
            return [(t, e) for t, e in self.history if e.split(" ", 1)[0] == name]

    def wait_for_event(self, name: str, timeout: float, *, since: float = -math.inf) -> bool:
        """Block until an event named `name` is recorded at or after `since`; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(t >= since for t, _ in self.events(name)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_frames(self, count: int, timeout: float) -> bool:
        """Block until `count` more frames were delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self.frames_produced + count
            while self.frames_produced < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- faults --------------------------------------------------------------------------

    def frontend_timeout(self, *, persist: bool = False) -> None:
        """Frames stop arriving; libcamera logs the frontend timeout after its dequeue timer.

        A restart (stop() then start()) brings frames back unless `persist` is set, in which
        case only reappear() (a reseated cable) does.
        """
        with self._cond:
            self._stalled = True
            self._stall_persists = persist
            self._note(f"frontend_timeout persist={persist}")

    def hang_stop(self, seconds: float | None = None) -> None:
        """From now, stop() and stop_encoder() block for `seconds` (None: until release_stop())."""
        with self._cond:
            self._stop_hang_until = math.inf if seconds is None else time.monotonic() + seconds
            self._note(f"hang_stop seconds={seconds}")

    def release_stop(self) -> None:
        """Disarm hang_stop() and let calls blocked in it carry on."""
        with self._cond:
            self._stop_hang_until = None
            self._note("release_stop")

    def vanish(self) -> None:
        """The camera disappears: unlisted, frames stop, the open Picamera2 is left broken."""
        with self._cond:
            if not self._present:
                return
            self._present = False
            self._generation += 1
            self._owner = None  # libcamera drops the Camera; its acquisition goes with it
            self._note("vanish")

    def reappear(self) -> None:
        """The camera comes back (a new libcamera Camera): listed again, healthy, unowned."""
        with self._cond:
            if self._present:
                return
            self._present = True
            self._stalled = False
            self._stall_persists = False
            self._note("reappear")

    # -- used by the fake Picamera2 ----------------------------------------------------------

    def _note(self, event: str) -> None:
        with self._cond:
            self.history.append((time.monotonic(), event))
            self._cond.notify_all()

    def _acquire(self, owner: Any) -> int:
        with self._cond:
            if not self._present:
                raise RuntimeError("Failed to acquire camera: No such device")
            if self._owner is not None:
                _libcamera_log.error(
                    "Camera in Acquired state trying acquire() requiring state Available"
                )
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            self._owner = owner
            self._note("open")
            return self._generation

    def _release(self, owner: Any, generation: int) -> None:
        with self._cond:
            if self._owner is owner and self._generation == generation:
                self._owner = None
            self._note("close")

    def _connected(self, generation: int) -> bool:
        with self._cond:
            return self._present and self._generation == generation

    def _require_connected(self, generation: int, action: str) -> None:
        if not self._connected(generation):
            raise RuntimeError(f"Failed to {action} camera: No such device")

    def _camera_started(self) -> None:
        with self._cond:
            if self._stalled and not self._stall_persists:
                self._stalled = False
                self._note("frontend_recovered")
            self._note("start")

    def _block_while_stop_hung(self, what: str) -> None:
        """Model a stop stuck in the kernel: wait out the armed hang, or until released."""
        with self._cond:
            if self._stop_hang_until is None or time.monotonic() >= self._stop_hang_until:
                return
            self._note(f"stop_blocked in={what}")
            while self._stop_hang_until is not None:
                remaining = self._stop_hang_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(None if math.isinf(remaining) else remaining)
            self._note(f"stop_unblocked in={what}")

    def _log_frontend_timeout(self) -> None:
        _libcamera_log.warning(
            "%s: Dequeue timer of %.2fus has expired!", self.camera_id,
            self.dequeue_timeout_s * 1e6,
        )
        _libcamera_log.error("Camera frontend has timed out!")
        _libcamera_log.error(
            "Please check that your camera sensor connector is attached securely."
        )
        self._note("frontend_timeout_logged")

    def _frames_dropped(self, count: int) -> None:
        numbers = _take_frame_numbers(count)
        with self._cond:
            self.frames_dropped += count
            self._note(f"frames_dropped count={count} first={numbers[0]}")

    def _take_frame_number(self) -> int:
        return _take_frame_numbers(1)[0]

    def _frame_delivered(self, number: int) -> None:
        with self._cond:
            self.frames_produced += 1
            self.last_frame_number = number
            self._cond.notify_all()

    def _tear_down(self) -> None:
        with self._cond:
            self._stop_hang_until = None
            owner = self._owner
            self._present = False
            self._generation += 1
            self._owner = None
            self._cond.notify_all()
        if owner is not None:
            self._note("teardown_closed_open_instance")
        for instance in _orphans_of(self):
            instance._fake_shutdown()


def _orphans_of(camera: FakeCamera) -> list[Any]:
    """Picamera2 objects still bound to `camera` after it vanished (they keep threads)."""
    main_mod = sys.modules.get("picamera2.picamera2")
    if main_mod is None:
        return []
    return [p for p in list(main_mod._LIVE_INSTANCES) if p._handle is camera]
