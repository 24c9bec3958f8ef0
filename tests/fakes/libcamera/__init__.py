"""The few libcamera types the fake picamera2 needs for its defaults and type checks.

Real picamera2 uses `libcamera.Transform()` and `libcamera.ColorSpace.*()` as default
arguments and checks a configuration's "transform" and "colour_space" by type, so the fake
needs stand-ins with the same names and constructors. Sources (raspberrypi/libcamera,
src/py/libcamera/py_main.cpp @ a17f0eddc61486989a375e34dcdcbb15c3152a4a): Transform(
rotation=0, hflip=False, vflip=False, transpose=False); ColorSpace.Raw/Srgb/Sycc/Smpte170m/
Rec709/Rec2020 static constructors. Nothing else of libcamera is faked.
"""

from __future__ import annotations

from . import controls

__all__ = ["ColorSpace", "Transform", "controls"]

_VALID_ROTATIONS = (0, 90, 180, 270)


class Transform:
    """A flip/transpose of the image, as libcamera.Transform; compares by value."""

    def __init__(
        self, rotation: int = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False
    ) -> None:
        if rotation not in _VALID_ROTATIONS:
            raise ValueError("Invalid rotation")
        # A rotation is expressed as flips, as libcamera's transformFromRotation does.
        rot_hflip, rot_vflip, rot_transpose = {
            0: (False, False, False),
            90: (True, False, True),
            180: (True, True, False),
            270: (False, True, True),
        }[rotation]
        self.hflip = bool(hflip) ^ rot_hflip
        self.vflip = bool(vflip) ^ rot_vflip
        self.transpose = bool(transpose) ^ rot_transpose

    def _key(self) -> tuple[bool, bool, bool]:
        return (self.hflip, self.vflip, self.transpose)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"<libcamera.Transform hflip={int(self.hflip)} vflip={int(self.vflip)} "
            f"transpose={int(self.transpose)}>"
        )


class ColorSpace:
    """A named colour space, as libcamera.ColorSpace's static constructors give them."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def Raw() -> ColorSpace:
        return ColorSpace("Raw")

    @staticmethod
    def Srgb() -> ColorSpace:
        return ColorSpace("Srgb")

    @staticmethod
    def Sycc() -> ColorSpace:
        return ColorSpace("Sycc")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("Smpte170m")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")

    @staticmethod
    def Rec2020() -> ColorSpace:
        return ColorSpace("Rec2020")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColorSpace) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"
