"""What probing a camera backend found: for `camera.backend: auto` and for `vigil doctor`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FoundCamera:
    """One camera a backend can see: where it is, what it is, the modes it offers."""

    backend: str
    address: str  # /dev/video0, or libcamera's camera id
    name: str  # the card or sensor model
    modes: tuple[str, ...] = ()
    encoder: str = ""  # what would turn its pictures into H.264

    def describe(self) -> str:
        text = f"{self.name} at {self.address}"
        if self.modes:
            text += ": " + "; ".join(self.modes)
        if self.encoder:
            text += f" (encoder: {self.encoder})"
        return text


@dataclass(frozen=True, slots=True)
class NotACamera:
    """Something a backend looked at and cannot record from, and why (for doctor's listing)."""

    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class BackendProbe:
    """What probing one backend found; `summary` is the line auto-detection logs.

    `failure` is set when the backend's library is installed but cannot load or start (the
    library's own message): not the same as "no camera", and `vigil doctor` reports it.
    """

    backend: str
    cameras: tuple[FoundCamera, ...]
    summary: str
    skipped: tuple[NotACamera, ...] = ()
    failure: str = ""

    @property
    def is_found(self) -> bool:
        return bool(self.cameras)
