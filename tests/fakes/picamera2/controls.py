"""Camera controls as picamera2 holds them, with FrameRate as a virtual control.

Mirrors raspberrypi/picamera2 picamera2/controls.py @ 9c44552836aa721b730fafd904923b39ddb86201:
"FrameRate" f becomes FrameDurationLimits (int(1e6/f), int(1e6/f)); a (lo, hi) rate pair
becomes (int(1e6/hi), int(1e6/lo)); a name the camera does not advertise raises
RuntimeError("Control X is not advertised by libcamera").
"""

from __future__ import annotations

import threading
from typing import Any


def _framerates_to_durations(framerates: Any) -> tuple[int, int]:
    if not isinstance(framerates, tuple | list):
        framerates = (framerates, framerates)
    return (int(1000000 / framerates[1]), int(1000000 / framerates[0]))


def _durations_to_framerates(durations: tuple[int, int]) -> Any:
    if durations[0] == durations[1]:
        return 1000000 / durations[0]
    return (1000000 / durations[1], 1000000 / durations[0])


_VIRTUAL_FIELDS = {"FrameRate": ("FrameDurationLimits", _framerates_to_durations)}


class Controls:
    """Named control values waiting to go to the camera with the next request."""

    def __init__(self, picam2: Any, controls: dict[str, Any] | None = None) -> None:
        self._picam2 = picam2
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.set_controls({} if controls is None else controls)

    def _set(self, name: str, value: Any) -> None:
        if name in _VIRTUAL_FIELDS:
            name, convert = _VIRTUAL_FIELDS[name]
            value = convert(value)
        if name not in self._picam2.camera_ctrl_info:
            raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self._values[name] = value

    def set_controls(self, controls: dict[str, Any] | Controls) -> None:
        with self._lock:
            if isinstance(controls, dict):
                for name, value in controls.items():
                    self._set(name, value)
            elif isinstance(controls, Controls):
                for name, value in controls.make_dict().items():
                    self._set(name, value)
            else:
                raise RuntimeError(f"Cannot update controls with {type(controls)} type")

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name == "FrameRate" and "FrameDurationLimits" in values:
            return _durations_to_framerates(values["FrameDurationLimits"])
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        with self._lock:
            self._set(name, value)

    def make_dict(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def __repr__(self) -> str:
        return f"<Controls: {self.make_dict()}>"
