"""A fake of libcamera's Python binding, for running the genuine picamera2 without a Pi.

As the real package (raspberrypi/libcamera src/py/libcamera/__init__.py), this package
re-exports everything of its `_libcamera` module; the fake binding is in _libcamera.py
(with _geometry.py and _ids.py), the sensors and faults it runs on in system.py. The
hand-written fake picamera2 (tests/fakes/picamera2) uses the same classes for its
defaults and type checks.
"""

from ._libcamera import *  # noqa: F403
