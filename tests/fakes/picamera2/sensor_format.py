"""A raw sensor format name with its bit depth and packing (picamera2.sensor_format)."""

from __future__ import annotations

import re

_PATTERN = re.compile(r"^(S(?:RGGB|GRBG|GBRG|BGGR)|R)(\d+)(?:_(CSI2P|PISP_COMP1))?$")


class SensorFormat:
    """Parses names such as "SBGGR10_CSI2P"; str() and repr() give the name back."""

    def __init__(self, fmt_string: str) -> None:
        match = _PATTERN.match(str(fmt_string))
        if match is None:
            raise ValueError(f"Unrecognised raw format {fmt_string}")
        self.bayer_order = match.group(1)
        self.bit_depth = int(match.group(2))
        self.packing = match.group(3)

    @property
    def format(self) -> str:
        return f"{self.unpacked}_{self.packing}" if self.packing else self.unpacked

    @property
    def unpacked(self) -> str:
        return f"{self.bayer_order}{self.bit_depth}"

    def __str__(self) -> str:
        return self.format

    def __repr__(self) -> str:
        return self.format

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))
