"""The genuine picamera2, loaded for one test over the fake libcamera binding.

`make test` installs picamera2 (the version Raspberry Pi OS Bookworm shipped, see
tests/requirements-picamera2.txt) into .venv/picamera2-real, a directory nothing else puts
on sys.path: the rest of the suite, and vigil's own auto-detection there, never see a
picamera2 that cannot find libcamera. The fixture `real_picamera2` puts it on the path for
one test, with exactly these stand-ins, each for something that cannot exist here:
- `libcamera` (a C++ library and its pybind11 binding): tests/fakes/libcamera;
- `pykms` (kms++'s binding, Raspberry Pi OS apt only; imported for the DRM preview):
  tests/fakes/pykms.py;
- /dev/dma_heap, where DmaAllocator gets its buffers: tests/fakes/dma_heap.py, answering
  those system calls with memfds;
- the Pi 5 itself: picamera2.platform decides VC4 or PISP at import by asking every
  /dev/video* for a "pispbe" card. No such device exists here, so it would say VC4 (a Pi 4,
  whose H.264 encoder is the V4L2 M2M device /dev/video11, absent too). The fixture loads
  picamera2's own platform.py first and sets its result to PISP, as a Pi 5 answers, before
  the rest of picamera2 imports: picamera2.encoders then binds H264Encoder to
  LibavH264Encoder (libx264 through the real PyAV), as on a Pi 5.
Everything else is the genuine library. Afterwards every open Picamera2 is closed, the
fake cameras' threads end, and the modules are gone again.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_DIR = Path(os.environ.get("VIGIL_PICAMERA2_REAL", REPO / ".venv" / "picamera2-real"))
PURGED = ("picamera2", "libcamera", "pykms", "tests.fakes.libcamera", "tests.fakes.pykms",
          "tests.fakes.dma_heap")
CLOSE_TIMEOUT_S = 10.0
THREAD_EXIT_TIMEOUT_S = 5.0


@dataclass
class RealPicamera2:
    """What a test gets: the genuine module, the fake hardware, the fake dma-heap kernel."""

    module: ModuleType
    system: object  # tests.fakes.libcamera.system.CameraSystem
    dma_heap: object  # tests.fakes.dma_heap.DmaHeapKernel
    version: str
    threads_before: set[int | None]

    def install_camera(self, sensor: str = "imx708", **kwargs: float):  # type: ignore[no-untyped-def]
        return self.system.install_camera(sensor, **kwargs)  # type: ignore[attr-defined]


def _purge() -> None:
    """Forget the fakes and everything imported from REAL_DIR (simplejpeg, PIL, ... too)."""
    for name, module in sys.modules.copy().items():  # a copy: another thread may import meanwhile
        origin = getattr(module, "__file__", None) or ""
        if any(name == p or name.startswith(p + ".") for p in PURGED) \
                or origin.startswith(str(REAL_DIR) + os.sep):
            del sys.modules[name]


def _new_threads(real: RealPicamera2) -> list[threading.Thread]:
    """Threads started since the library loaded (picamera2's, the fake's, vigil's) still alive."""
    return [t for t in threading.enumerate() if t.ident not in real.threads_before]


def _close_open_cameras(pc2: ModuleType) -> list[str]:
    """Close every Picamera2 the test left open, each in a thread so a hung one cannot stall us."""
    hung = []
    for camera in list(pc2.Picamera2._cm.cameras.values()):
        closer = threading.Thread(target=camera.close, name="test-picamera2-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            hung.append(repr(camera))
    return hung


def load(platform: str = "pisp") -> RealPicamera2:
    """Import the genuine picamera2 over the fakes (see the module docstring)."""
    threads_before = {t.ident for t in threading.enumerate()}
    if not (REAL_DIR / "picamera2" / "__init__.py").exists():
        pytest.skip(f"the genuine picamera2 is not installed in {REAL_DIR} (`make test` installs "
                    "it from tests/requirements-picamera2.txt)")
    if any(n == "picamera2" or n == "libcamera" for n in sys.modules.copy()):
        pytest.fail("picamera2 or libcamera is already imported; the genuine library would not load fresh")
    fake_libcamera = importlib.import_module("tests.fakes.libcamera")
    sys.modules["libcamera"] = fake_libcamera
    sys.modules["libcamera._libcamera"] = importlib.import_module("tests.fakes.libcamera._libcamera")
    sys.modules["pykms"] = importlib.import_module("tests.fakes.pykms")
    sys.path.insert(0, str(REAL_DIR))
    spec = importlib.util.spec_from_file_location("picamera2.platform",
                                                  REAL_DIR / "picamera2" / "platform.py")
    assert spec is not None and spec.loader is not None
    platform_module = importlib.util.module_from_spec(spec)
    sys.modules["picamera2.platform"] = platform_module
    spec.loader.exec_module(platform_module)
    if platform == "pisp":
        platform_module._platform = platform_module.Platform.PISP  # type: ignore[attr-defined]
    pc2 = importlib.import_module("picamera2")
    dma_heap = importlib.import_module("tests.fakes.dma_heap")
    kernel = dma_heap.install(importlib.import_module("picamera2.dma_heap"),
                              importlib.import_module("picamera2.allocators.dmaallocator"))
    system = importlib.import_module("tests.fakes.libcamera.system").SYSTEM
    system.reset()
    return RealPicamera2(pc2, system, kernel, _dist_version(), threads_before)


def _dist_version() -> str:
    found = sorted(REAL_DIR.glob("picamera2-*.dist-info"))
    return found[0].name.removeprefix("picamera2-").removesuffix(".dist-info") if found else "?"


def _stop_event_loop(pc2: ModuleType) -> None:
    """End picamera2's CameraManager thread, which outlives a camera whose close() failed.

    The genuine close() raises before `_cm.cleanup()` when libcamera's stop() fails (a
    vanished camera: "No such device"), so the listener keeps polling; on a Pi it lives on
    for the next Picamera2. Between tests it must not.
    """
    cm = pc2.Picamera2._cm
    with cm._lock:
        cm.cameras.clear()
        cm.running = False
    thread = getattr(cm, "thread", None)
    if thread is not None:
        thread.join(THREAD_EXIT_TIMEOUT_S)


def unload(real: RealPicamera2) -> None:
    hung = _close_open_cameras(real.module)
    real.system.reset()  # type: ignore[attr-defined] - also releases stops held by a fault
    hung += _close_open_cameras(real.module)
    _stop_event_loop(real.module)
    deadline = time.monotonic() + THREAD_EXIT_TIMEOUT_S
    while _new_threads(real) and time.monotonic() < deadline:
        _new_threads(real)[0].join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in _new_threads(real)]
    if str(REAL_DIR) in sys.path:
        sys.path.remove(str(REAL_DIR))
    _purge()
    assert not hung, f"Picamera2 objects whose close() hung at teardown: {hung}"
    assert not leaked, f"threads still running after teardown: {leaked}"


@pytest.fixture
def real_picamera2() -> Iterator[RealPicamera2]:
    """The genuine picamera2 as on a Pi 5, over the fake libcamera, with no camera plugged in."""
    real = load("pisp")
    try:
        yield real
    finally:
        unload(real)
