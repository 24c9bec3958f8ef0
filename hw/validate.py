"""Cheap per-frame checks: is this what the camera was configured to deliver?

Runs on every frame on the capture thread, so it looks at metadata only (type, dtype,
shape, timestamp order) and, for frozen-image detection, a coarse subsample a few times a
second. It never scans every pixel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from av import VideoFrame

from hw.camera import CameraMode, Frame

if TYPE_CHECKING:
    import numpy as np

FROZEN_SAMPLE_STRIDE = 16
FROZEN_SAMPLE_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a frame was refused: an error category and a human sentence."""

    category: str
    reason: str
    drops_frame: bool = True


class FrameValidator:
    """Checks frames against the configured mode; refusals come back as Verdicts."""

    def __init__(self, mode: CameraMode, *, frozen_seconds: float = 0.0) -> None:
        self.mode = mode
        self.shape = mode.frame_shape
        self.frozen_seconds = frozen_seconds
        self._last_timestamp = float("-inf")
        self._sample: bytes | None = None
        self._sample_at = float("-inf")
        self._unchanged_since: float | None = None
        self._frozen_reported = False

    def check(self, frame: Frame) -> Verdict | None:
        """None when the frame is good; a Verdict when it must be dropped or reported."""
        picture = frame.picture
        if picture is not None:
            return self._check_picture(frame, picture)
        data = frame.data
        # numpy is imported by whichever backend made an array; without it, this is none.
        numpy = sys.modules.get("numpy")
        if numpy is None or type(data) is not numpy.ndarray:
            return Verdict("frame_invalid", f"frame {frame.sequence} has no image ({type(data).__name__})")
        array = cast("np.ndarray", data)
        if array.dtype != numpy.uint8:
            return Verdict("frame_invalid", f"frame {frame.sequence} dtype {array.dtype}, expected uint8")
        if array.shape != self.shape:
            return Verdict(
                "frame_invalid", f"frame {frame.sequence} shape {array.shape}, expected {self.shape}"
            )
        return self._check_time(frame, array)

    def _check_picture(self, frame: Frame, picture: VideoFrame) -> Verdict | None:
        """The same checks on a decoder's own frame, from its metadata, without copying it."""
        m = self.mode
        if picture.format.name != "yuv420p":
            return Verdict("frame_invalid", f"frame {frame.sequence} pixel format {picture.format.name}, "
                                            "expected yuv420p")
        if (picture.width, picture.height) != (m.width, m.height):
            return Verdict("frame_invalid", f"frame {frame.sequence} size {picture.width}x{picture.height}, "
                                            f"expected {m.width}x{m.height}")
        return self._check_time(frame, picture)

    def _check_time(self, frame: Frame, image: np.ndarray | VideoFrame) -> Verdict | None:
        if not frame.timestamp > self._last_timestamp:
            return Verdict(
                "frame_timestamp",
                f"frame {frame.sequence} timestamp {frame.timestamp:.6f} not after "
                f"{self._last_timestamp:.6f}",
            )
        self._last_timestamp = frame.timestamp
        if self.frozen_seconds > 0 and frame.timestamp - self._sample_at >= FROZEN_SAMPLE_INTERVAL_SECONDS:
            return self._check_frozen(_subsample(image), frame.timestamp)
        return None

    def _check_frozen(self, sample: bytes, now: float) -> Verdict | None:
        self._sample_at = now
        if sample != self._sample:
            self._sample = sample
            self._unchanged_since = now
            self._frozen_reported = False
            return None
        if self._unchanged_since is None:
            self._unchanged_since = now
        frozen_for = now - self._unchanged_since
        if frozen_for >= self.frozen_seconds and not self._frozen_reported:
            self._frozen_reported = True
            return Verdict("camera_frozen", f"image unchanged for {frozen_for:.1f}s", drops_frame=False)
        return None


def _subsample(image: np.ndarray | VideoFrame) -> bytes:
    """Every FROZEN_SAMPLE_STRIDE-th pixel of every FROZEN_SAMPLE_STRIDE-th row.

    Of a decoder's frame, the luma plane's, read in place (rows may be padded past the width).
    """
    if not isinstance(image, VideoFrame):
        return bytes(image[::FROZEN_SAMPLE_STRIDE, ::FROZEN_SAMPLE_STRIDE].tobytes())
    luma = image.planes[0]
    pixels, stride = memoryview(luma), luma.line_size
    return b"".join(pixels[row * stride : row * stride + image.width : FROZEN_SAMPLE_STRIDE].tobytes()
                    for row in range(0, image.height, FROZEN_SAMPLE_STRIDE))
