"""Fixtures that load the fake picamera2 for one test and remove every trace afterwards."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FAKES_DIR = Path(__file__).resolve().parent
FAKE_PACKAGES = ("picamera2", "libcamera")
FAKE_THREAD_PREFIX = "picamera2-fake"
THREAD_EXIT_TIMEOUT_S = 2.0


def _purge_fake_modules() -> None:
    for name in sys.modules.copy():
        if name.split(".", 1)[0] in FAKE_PACKAGES:
            del sys.modules[name]


def _fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(FAKE_THREAD_PREFIX)]


@pytest.fixture
def fake_picamera2() -> Iterator[ModuleType]:
    """The fake `picamera2` package, freshly imported, with no camera installed.

    While the test runs `import picamera2` (and `libcamera`) resolve to the fakes; after it,
    every fake camera is torn down, no fake thread may remain, and the modules are gone.
    """
    if any(name in sys.modules for name in FAKE_PACKAGES):
        pytest.fail("a picamera2/libcamera module is already imported; the fake would not load")
    sys.path.insert(0, str(FAKES_DIR))
    try:
        import picamera2
        from picamera2 import _fake

        _fake.reset()
        yield picamera2
        _fake.reset()
        deadline = time.monotonic() + THREAD_EXIT_TIMEOUT_S
        while _fake_threads() and time.monotonic() < deadline:
            _fake_threads()[0].join(max(0.0, deadline - time.monotonic()))
        leaked = [t.name for t in _fake_threads()]
        assert not leaked, f"fake picamera2 threads still running after teardown: {leaked}"
    finally:
        sys.path.remove(str(FAKES_DIR))
        _purge_fake_modules()
