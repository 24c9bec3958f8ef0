"""libcamera's control and property ids, as the generated Python binding exposes them.

Followed: raspberrypi/libcamera @ 26bfadc66e8d7f727a993fe58174217b8a96f7f9,
src/py/libcamera/py_controls_generated.cpp.in and gen-py-controls.py (a class `controls`
whose static attributes are ControlId objects, vendor classes `draft` and `rpi` nested in
it, an `<Name>Enum` beside each enumerated control, enum value names with the common
prefix removed), and src/libcamera/control_ids_core.yaml, control_ids_draft.yaml,
control_ids_rpi.yaml, property_ids_core.yaml, property_ids_draft.yaml for names, types and
array sizes. Numeric ids follow the yaml order (core from 1, draft from 10001, rpi from
20001), as libcamera numbers them. Only the ids a Raspberry Pi camera advertises or
reports, and picamera2 names, are here.
"""

from __future__ import annotations

import enum
import sys


class ControlType(enum.IntEnum):
    """py_enums.cpp: ControlType (Null .. Point)."""

    Null = 0
    Bool = 1
    Byte = 2
    Integer32 = 3
    Integer64 = 4
    Float = 5
    String = 6
    Rectangle = 7
    Size = 8
    Point = 9


ARRAY_ANY = sys.maxsize  # libcamera's dynamic extent ([n]); repr shows it as "n"


class ControlId:
    """py_main.cpp pyControlId: id, name, vendor, type, isArray, size, enumerators()."""

    def __init__(self, id_: int, name: str, vendor: str, type_: ControlType, size: int = 0,
                 enumerators: dict[int, str] | None = None) -> None:
        self._id, self._name, self._vendor, self._type = id_, name, vendor, type_
        self._size = size
        self._enumerators = dict(enumerators or {})

    id = property(lambda self: self._id)
    name = property(lambda self: self._name)
    vendor = property(lambda self: self._vendor)
    type = property(lambda self: self._type)
    isArray = property(lambda self: self._size != 0)
    size = property(lambda self: self._size)

    def enumerators(self) -> dict[int, str]:
        return dict(self._enumerators)

    def __str__(self) -> str:
        return self._name

    def __repr__(self) -> str:
        size = ""
        if self._size:
            size = "[n]" if self._size == ARRAY_ANY else f"[{self._size}]"
        return f"libcamera.ControlId({self._id}, {self._vendor}.{self._name}{size}, {self._type})"


B, I32, I64, F, S, R, SZ = (ControlType.Bool, ControlType.Integer32, ControlType.Integer64,
                            ControlType.Float, ControlType.String, ControlType.Rectangle,
                            ControlType.Size)
N = ARRAY_ANY

# (name, type, array size, enum values with the generated Python names)
_CORE_CONTROLS: list[tuple[str, ControlType, int, list[str]]] = [
    ("AeEnable", B, 0, []),
    ("AeState", I32, 0, ["Idle", "Searching", "Converged"]),
    ("AeMeteringMode", I32, 0, ["CentreWeighted", "Spot", "Matrix", "Custom"]),
    ("AeConstraintMode", I32, 0, ["Normal", "Highlight", "Shadows", "Custom"]),
    ("AeExposureMode", I32, 0, ["Normal", "Short", "Long", "Custom"]),
    ("ExposureValue", F, 0, []),
    ("ExposureTime", I32, 0, []),
    ("ExposureTimeMode", I32, 0, ["Auto", "Manual"]),
    ("AnalogueGain", F, 0, []),
    ("AnalogueGainMode", I32, 0, ["Auto", "Manual"]),
    ("AeFlickerMode", I32, 0, ["FlickerOff", "FlickerManual", "FlickerAuto"]),
    ("AeFlickerPeriod", I32, 0, []),
    ("AeFlickerDetected", I32, 0, []),
    ("Brightness", F, 0, []),
    ("Contrast", F, 0, []),
    ("Lux", F, 0, []),
    ("AwbEnable", B, 0, []),
    ("AwbMode", I32, 0, ["Auto", "Incandescent", "Tungsten", "Fluorescent", "Indoor",
                         "Daylight", "Cloudy", "Custom"]),
    ("AwbLocked", B, 0, []),
    ("ColourGains", F, 2, []),
    ("ColourTemperature", I32, 0, []),
    ("Saturation", F, 0, []),
    ("SensorBlackLevels", I32, 4, []),
    ("Sharpness", F, 0, []),
    ("FocusFoM", I32, 0, []),
    ("ColourCorrectionMatrix", F, 9, []),
    ("ScalerCrop", R, 0, []),
    ("DigitalGain", F, 0, []),
    ("FrameDuration", I64, 0, []),
    ("FrameDurationLimits", I64, 2, []),
    ("SensorTemperature", F, 0, []),
    ("SensorTimestamp", I64, 0, []),
    ("AfMode", I32, 0, ["Manual", "Auto", "Continuous"]),
    ("AfRange", I32, 0, ["Normal", "Macro", "Full"]),
    ("AfSpeed", I32, 0, ["Normal", "Fast"]),
    ("AfMetering", I32, 0, ["Auto", "Windows"]),
    ("AfWindows", R, N, []),
    ("AfTrigger", I32, 0, ["Start", "Cancel"]),
    ("AfPause", I32, 0, ["Immediate", "Deferred", "Resume"]),
    ("LensPosition", F, 0, []),
    ("AfState", I32, 0, ["Idle", "Scanning", "Focused", "Failed"]),
    ("AfPauseState", I32, 0, ["Running", "Pausing", "Paused"]),
    ("HdrMode", I32, 0, ["Off", "MultiExposureUnmerged", "MultiExposure", "SingleExposure", "Night"]),
]
_DRAFT_CONTROLS: list[tuple[str, ControlType, int, list[str]]] = [
    ("AePrecaptureTrigger", I32, 0, ["Idle", "Start", "Cancel"]),
    ("NoiseReductionMode", I32, 0, ["Off", "Fast", "HighQuality", "Minimal", "ZSL"]),
]
_RPI_CONTROLS: list[tuple[str, ControlType, int, list[str]]] = [
    ("StatsOutputEnable", B, 0, []),
    ("Bcm2835StatsOutput", ControlType.Byte, N, []),
    ("ScalerCrops", R, N, []),
    ("PispStatsOutput", ControlType.Byte, N, []),
    ("SyncMode", I32, 0, ["Off", "Server", "Client"]),
    ("SyncReady", B, 0, []),
    ("SyncTimer", I64, 0, []),
    ("SyncFrames", I32, 0, []),
]
_CORE_PROPERTIES: list[tuple[str, ControlType, int, list[str]]] = [
    ("Location", I32, 0, ["Front", "Back", "External"]),
    ("Rotation", I32, 0, []),
    ("Model", S, 0, []),
    ("UnitCellSize", SZ, 0, []),
    ("PixelArraySize", SZ, 0, []),
    ("PixelArrayOpticalBlackRectangles", R, N, []),
    ("PixelArrayActiveAreas", R, N, []),
    ("ScalerCropMaximum", R, 0, []),
    ("SensorSensitivity", F, 0, []),
    ("SystemDevices", I64, N, []),
]
_DRAFT_PROPERTIES: list[tuple[str, ControlType, int, list[str]]] = [
    ("ColorFilterArrangement", I32, 0, ["RGGB", "GRBG", "GBRG", "BGGR", "RGB", "MONO"]),
]


def _populate(klass: type, table: list[tuple[str, ControlType, int, list[str]]], vendor: str,
              first_id: int, registry: dict[str, ControlId]) -> None:
    for offset, (name, type_, size, values) in enumerate(table):
        enumerators = dict(enumerate(values))
        cid = ControlId(first_id + offset, name, vendor, type_, size, enumerators)
        setattr(klass, name, cid)
        registry[name] = cid
        if values:
            setattr(klass, f"{name}Enum", enum.IntEnum(f"{name}Enum", {v: i for i, v in enumerate(values)}))


class controls:
    """libcamera.controls: ControlIds as static attributes; vendors `draft` and `rpi` inside."""

    class draft:
        pass

    class rpi:
        pass


class properties:
    """libcamera.properties: the camera's static properties."""

    class draft:
        pass


CONTROLS: dict[str, ControlId] = {}
PROPERTIES: dict[str, ControlId] = {}
_populate(controls, _CORE_CONTROLS, "libcamera", 1, CONTROLS)
_populate(controls.draft, _DRAFT_CONTROLS, "draft", 10001, CONTROLS)
_populate(controls.rpi, _RPI_CONTROLS, "rpi", 20001, CONTROLS)
_populate(properties, _CORE_PROPERTIES, "libcamera", 1, PROPERTIES)
_populate(properties.draft, _DRAFT_PROPERTIES, "draft", 10001, PROPERTIES)
