"""Control enums picamera2 puts into its default configurations (libcamera.controls)."""

from __future__ import annotations

import enum
from types import SimpleNamespace


class NoiseReductionModeEnum(enum.IntEnum):
    Off = 0
    Fast = 1
    HighQuality = 2
    Minimal = 3
    ZSL = 4


class AfModeEnum(enum.IntEnum):
    Manual = 0
    Auto = 1
    Continuous = 2


# picamera2 spells it libcamera.controls.draft.NoiseReductionModeEnum.
draft = SimpleNamespace(NoiseReductionModeEnum=NoiseReductionModeEnum)
