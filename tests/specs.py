"""Hardware specs for tests: the config schema's defaults, with a test's own changes.

The hw specs carry no defaults of their own (the schema is the one place they live), so a
test that wants "the defaults, but 160x120" asks here: `camera_spec(width=160, height=120)`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.config import VigilConfig
from controller.daemon import camera_spec_from_config, gpio_from_config, recording_spec_from_config
from hw.factory import CameraSpec, RecordingSpec
from hw.gpio import GpioSpec

DEFAULTS = VigilConfig()


def camera_spec(**changes: Any) -> CameraSpec:
    return replace(camera_spec_from_config(DEFAULTS), **changes)


def recording_spec(**changes: Any) -> RecordingSpec:
    return replace(recording_spec_from_config(DEFAULTS), **changes)


def gpio_spec(**changes: Any) -> GpioSpec:
    return replace(gpio_from_config(DEFAULTS), **changes)
