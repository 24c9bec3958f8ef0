"""Geometry, colour spaces, transforms and pixel formats of libcamera's Python binding.

Followed (raspberrypi/libcamera @ 26bfadc66e8d7f727a993fe58174217b8a96f7f9):
- src/py/libcamera/py_geometry.cpp: Point, Size, SizeRange, Rectangle (constructors,
  read-write fields, ==, str/repr);
- src/py/libcamera/py_color_space.cpp: ColorSpace(primaries, transferFunction,
  ycbcrEncoding, range) or a copy, the nested enums, the static presets, str
  "<libcamera.ColorSpace 'NAME'>"; like the pybind class it has no __eq__ (picamera2 adds one);
- src/py/libcamera/py_transform.cpp: Transform(rotation=0, hflip=False, vflip=False,
  transpose=False) or a copy, "Invalid rotation" (ValueError, from std::invalid_argument),
  the flag properties, str "<libcamera.Transform 'NAME'>"; no __eq__ either;
- src/py/libcamera/py_enums.cpp: StreamRole, Orientation;
- src/libcamera/formats.yaml and py_main.cpp pyPixelFormat: PixelFormat(str), fourcc,
  modifier, ==, str/repr.
"""

from __future__ import annotations

import enum
from typing import Any


class StreamRole(enum.IntEnum):
    StillCapture = 0
    Raw = 1
    VideoRecording = 2
    Viewfinder = 3


class Orientation(enum.IntEnum):
    Rotate0 = 1
    Rotate0Mirror = 2
    Rotate180 = 3
    Rotate180Mirror = 4
    Rotate90Mirror = 5
    Rotate270 = 6
    Rotate270Mirror = 7
    Rotate90 = 8


class Point:
    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = int(x), int(y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment] - pybind: a class with == and no hash

    def __neg__(self) -> Point:
        return Point(-self.x, -self.y)

    def __str__(self) -> str:
        return f"({self.x}, {self.y})"

    def __repr__(self) -> str:
        return f"libcamera.Point({self.x}, {self.y})"


class Size:
    def __init__(self, width: int = 0, height: int = 0) -> None:
        if width < 0 or height < 0:
            raise TypeError("__init__(): incompatible constructor arguments (unsigned int)")
        self.width, self.height = int(width), int(height)

    @property
    def is_null(self) -> bool:
        return not self.width and not self.height

    def bounded_to(self, bound: Size) -> Size:
        return Size(min(self.width, bound.width), min(self.height, bound.height))

    def expanded_to(self, expand: Size) -> Size:
        return Size(max(self.width, expand.width), max(self.height, expand.height))

    def aligned_up_to(self, h: int, v: int) -> Size:
        return Size((self.width + h - 1) // h * h, (self.height + v - 1) // v * v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Size) and (self.width, self.height) == (other.width, other.height)

    def __lt__(self, other: Size) -> bool:
        return (self.width * self.height, self.width) < (other.width * other.height, other.width)

    def __le__(self, other: Size) -> bool:
        return self == other or self < other

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    def __repr__(self) -> str:
        return f"libcamera.Size({self.width}, {self.height})"


class SizeRange:
    def __init__(self, min: Size | None = None, max: Size | None = None,
                 hStep: int = 1, vStep: int = 1) -> None:
        self.min = min if min is not None else Size()
        self.max = max if max is not None else self.min
        self.hStep, self.vStep = hStep, vStep

    def contains(self, size: Size) -> bool:
        return (self.min.width <= size.width <= self.max.width
                and self.min.height <= size.height <= self.max.height)

    def __str__(self) -> str:
        return f"({self.min})-({self.max})/(+{self.hStep},+{self.vStep})"


class Rectangle:
    def __init__(self, *args: Any) -> None:
        if not args:
            x, y, w, h = 0, 0, 0, 0
        elif len(args) == 1 and isinstance(args[0], Size):
            x, y, w, h = 0, 0, args[0].width, args[0].height
        elif len(args) == 3 and isinstance(args[2], Size):
            x, y, w, h = args[0], args[1], args[2].width, args[2].height
        elif len(args) == 4:
            x, y, w, h = args
        else:
            raise TypeError(f"__init__(): incompatible constructor arguments: {args!r}")
        self.x, self.y, self.width, self.height = int(x), int(y), int(w), int(h)

    @property
    def is_null(self) -> bool:
        return not self.width and not self.height

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rectangle) and (self.x, self.y, self.width, self.height) == (
            other.x, other.y, other.width, other.height)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"({self.x}, {self.y})/{self.width}x{self.height}"

    def __repr__(self) -> str:
        return f"libcamera.Rectangle({self.x}, {self.y}, {self.width}, {self.height})"


class ColorSpace:
    class Primaries(enum.IntEnum):
        Raw = 0
        Smpte170m = 1
        Rec709 = 2
        Rec2020 = 3

    class TransferFunction(enum.IntEnum):
        Linear = 0
        Srgb = 1
        Rec709 = 2

    class YcbcrEncoding(enum.IntEnum):
        Null = 0
        Rec601 = 1
        Rec709 = 2
        Rec2020 = 3

    class Range(enum.IntEnum):
        Full = 0
        Limited = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs and isinstance(args[0], ColorSpace):
            other = args[0]
            values = (other.primaries, other.transferFunction, other.ycbcrEncoding, other.range)
        else:
            names = ("primaries", "transferFunction", "ycbcrEncoding", "range")
            given = dict(zip(names, args, strict=False)) | kwargs
            if set(given) != set(names):
                raise TypeError("__init__(): incompatible constructor arguments")
            values = tuple(given[n] for n in names)  # type: ignore[assignment]
        self.primaries, self.transferFunction, self.ycbcrEncoding, self.range = values

    def _key(self) -> tuple[int, int, int, int]:
        return (self.primaries, self.transferFunction, self.ycbcrEncoding, self.range)

    @staticmethod
    def Raw() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Raw, c.TransferFunction.Linear, c.YcbcrEncoding.Null, c.Range.Full)

    @staticmethod
    def Srgb() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Rec709, c.TransferFunction.Srgb, c.YcbcrEncoding.Null, c.Range.Full)

    @staticmethod
    def Sycc() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Rec709, c.TransferFunction.Srgb, c.YcbcrEncoding.Rec601, c.Range.Full)

    @staticmethod
    def Smpte170m() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Smpte170m, c.TransferFunction.Rec709, c.YcbcrEncoding.Rec601,
                 c.Range.Limited)

    @staticmethod
    def Rec709() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Rec709, c.TransferFunction.Rec709, c.YcbcrEncoding.Rec709,
                 c.Range.Limited)

    @staticmethod
    def Rec2020() -> ColorSpace:
        c = ColorSpace
        return c(c.Primaries.Rec2020, c.TransferFunction.Rec709, c.YcbcrEncoding.Rec2020,
                 c.Range.Limited)

    def _name(self) -> str:
        for name, preset in (("Raw", ColorSpace.Raw), ("sRGB", ColorSpace.Srgb),
                             ("sYCC", ColorSpace.Sycc), ("SMPTE170M", ColorSpace.Smpte170m),
                             ("Rec709", ColorSpace.Rec709), ("Rec2020", ColorSpace.Rec2020)):
            if preset()._key() == self._key():
                return name
        return "/".join(e.name for e in (ColorSpace.Primaries(self.primaries),
                                         ColorSpace.TransferFunction(self.transferFunction),
                                         ColorSpace.YcbcrEncoding(self.ycbcrEncoding),
                                         ColorSpace.Range(self.range)))

    def __str__(self) -> str:
        return f"<libcamera.ColorSpace '{self._name()}'>"


_TRANSFORM_NAMES = {(False, False, False): "identity", (True, False, False): "hflip",
                    (False, True, False): "vflip", (True, True, False): "rot180",
                    (False, False, True): "transpose", (True, False, True): "rot270",
                    (False, True, True): "rot90", (True, True, True): "rot180transpose"}
# libcamera's transformFromRotation: 90 is Rot90 = Transpose|HFlip... as flips
_ROTATION_FLIPS = {0: (False, False, False), 90: (False, True, True),
                   180: (True, True, False), 270: (True, False, True)}


class Transform:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs and isinstance(args[0], Transform):
            self.hflip, self.vflip, self.transpose = args[0].hflip, args[0].vflip, args[0].transpose
            return
        names = ("rotation", "hflip", "vflip", "transpose")
        given = {"rotation": 0, "hflip": False, "vflip": False, "transpose": False}
        given |= dict(zip(names, args, strict=False)) | kwargs
        if set(given) != set(names):
            raise TypeError("__init__(): incompatible constructor arguments")
        if given["rotation"] not in _ROTATION_FLIPS:
            raise ValueError("Invalid rotation")
        h, v, t = _ROTATION_FLIPS[given["rotation"]]
        self.hflip = h ^ bool(given["hflip"])
        self.vflip = v ^ bool(given["vflip"])
        self.transpose = t ^ bool(given["transpose"])

    def __str__(self) -> str:
        return f"<libcamera.Transform '{_TRANSFORM_NAMES[(self.hflip, self.vflip, self.transpose)]}'>"


# name -> (fourcc, bits per pixel of the first plane or packed raw, kind)
PIXEL_FORMATS: dict[str, tuple[str, int, str]] = {
    "YUV420": ("YU12", 8, "yuv420"), "YVU420": ("YV12", 8, "yuv420"),
    "NV12": ("NV12", 8, "yuv420"), "NV21": ("NV21", 8, "yuv420"),
    "YUYV": ("YUYV", 16, "packed"), "RGB888": ("RG24", 24, "rgb"), "BGR888": ("BG24", 24, "rgb"),
    "XRGB8888": ("XR24", 32, "rgb"), "XBGR8888": ("XB24", 32, "rgb"),
    "SBGGR10_CSI2P": ("pBAA", 10, "raw"), "SRGGB10_CSI2P": ("pRAA", 10, "raw"),
    "SRGGB8": ("RGGB", 8, "raw"), "SBGGR8": ("BA81", 8, "raw"),
    "SBGGR10": ("BG10", 16, "raw"), "SRGGB10": ("RG10", 16, "raw"),
}
_FOURCC_NAMES = {fourcc: name for name, (fourcc, _, _) in PIXEL_FORMATS.items()}


def _fourcc_code(text: str) -> int:
    return int.from_bytes(text.encode("ascii"), "little")


class PixelFormat:
    def __init__(self, *args: Any) -> None:
        self._name = ""
        self._modifier = 0
        if len(args) == 1 and isinstance(args[0], str):
            self._name = args[0] if args[0] in PIXEL_FORMATS else ""
        elif len(args) in (1, 2) and isinstance(args[0], int):
            self._name = _FOURCC_NAMES.get(args[0].to_bytes(4, "little").decode("ascii", "replace"), "")
            self._modifier = int(args[1]) if len(args) == 2 else 0
        elif args:
            raise TypeError("__init__(): incompatible constructor arguments")

    @property
    def fourcc(self) -> int:
        return _fourcc_code(PIXEL_FORMATS[self._name][0]) if self._name else 0

    @property
    def modifier(self) -> int:
        return self._modifier

    @property
    def is_valid(self) -> bool:
        return bool(self._name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PixelFormat) and (self._name, self._modifier) == (
            other._name, other._modifier)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return self._name or "<INVALID>"

    def __repr__(self) -> str:
        return f"libcamera.PixelFormat('{self}')"
