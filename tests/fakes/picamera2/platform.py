"""Which Raspberry Pi ISP the fake pretends to run on (picamera2.platform).

Real module (raspberrypi/picamera2, picamera2/platform.py @ 03b3c63616ec0aefceaf68b9ccd56eb9cc63e133)
probes /dev/video* once at import: a "pispbe" card means Platform.PISP (Pi 5), otherwise
Platform.VC4 (Pi 4 and earlier). The fake reads its choice from picamera2._fake instead;
`_fake.set_platform("pi5")` switches it and rebinds the names that depend on it.
"""

from __future__ import annotations

from enum import Enum

from . import _fake


class Platform(Enum):
    VC4 = 0
    PISP = 1


_platform = Platform[_fake.PLATFORMS[_fake.platform_name()]]


def get_platform() -> Platform:
    return _platform
