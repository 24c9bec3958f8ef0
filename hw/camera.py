"""What a camera backend hands the recorder, and the small protocol every backend follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from av import VideoFrame

Output = Literal["frames", "packets"]


@dataclass(frozen=True, slots=True)
class CameraMode:
    """The mode a camera actually delivers: size, rate and what it hands over."""

    width: int
    height: int
    fps: float
    output: Output = "frames"

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of a YUV420 planar frame: the luma rows followed by the chroma rows."""
        return (self.height * 3 // 2, self.width)


class Frame:
    """A raw frame in YUV420 planar layout (shape (H*3/2, W), uint8).

    `data` may be None or malformed when a camera misbehaves; the validator catches that.
    `timestamp` is the capture time on the monotonic clock, `wallclock` the same instant on
    the wall clock (UTC seconds), `sequence` the backend's own frame counter.

    `picture` is the decoder's own YUV420 frame, for a backend that has one (the file
    camera): the encoder takes it as it is, so the pixels are never copied on the way to
    libx264. `data` is then made from it on first use only (a copy, for the rare reader of
    pixels: a snapshot); the validator checks such a frame without it.
    """

    __slots__ = ("_data", "picture", "sequence", "timestamp", "wallclock")

    def __init__(self, data: np.ndarray | None, timestamp: float, wallclock: float, sequence: int,
                 *, picture: VideoFrame | None = None) -> None:
        self._data = data
        self.timestamp = timestamp
        self.wallclock = wallclock
        self.sequence = sequence
        self.picture = picture

    @property
    def data(self) -> np.ndarray | None:
        if self._data is None and self.picture is not None:
            self._data = self.picture.to_ndarray(format="yuv420p")
        return self._data

    def __repr__(self) -> str:
        what = "picture" if self.picture is not None else type(self._data).__name__
        return f"<Frame {self.sequence} t={self.timestamp:.6f} {what}>"


@dataclass(slots=True)
class EncodedPacket:
    """One H.264 access unit in Annex-B form, as hardware encoders hand them over."""

    data: bytes
    is_keyframe: bool
    timestamp: float
    wallclock: float


@runtime_checkable
class Camera(Protocol):
    """A source of frames or encoded packets.

    `read` blocks for at most `timeout` seconds and raises CameraTimeout when nothing came,
    CameraLost when the device is gone. `close` is idempotent.
    """

    name: str

    @property
    def mode(self) -> CameraMode: ...

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame | EncodedPacket: ...

    def close(self) -> None: ...
