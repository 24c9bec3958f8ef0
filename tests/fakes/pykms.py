"""Stands in for pykms (kms++'s Python binding), which exists only in Raspberry Pi OS's apt.

picamera2 imports it at `import picamera2` (picamera2/previews/drm_preview.py @ v0.3.31,
4a8e3d93546470e411b0ac637d174259e8a79142: `import kms as pykms`, else `import pykms`) and
reads `pykms.PixelFormat.<NAME>` while defining DrmPreview. vigil never opens a DRM preview
(picamera2 runs its NULL preview), so the format names are enough; opening a card fails as it
would on a machine without a display, naming why.
"""

from __future__ import annotations

from typing import Any


class _Formats:
    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return name


PixelFormat = _Formats()


class Card:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no DRM card: this machine has no display (tests/fakes/pykms.py)")


class ResourceManager:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no DRM card: this machine has no display (tests/fakes/pykms.py)")
