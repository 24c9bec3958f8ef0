"""JPEG snapshots of raw YUV420 frames, encoded on request with PyAV's mjpeg encoder.

Runs off the recording path (an HTTP request asks for it), so the per-pixel work of the
range conversion and the JPEG encode never costs the capture thread anything.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import av
from av.codec.context import Flags

from hw.errors import EncoderError

if TYPE_CHECKING:
    import numpy as np

# FFmpeg's qscale: 2 (best) to 31 (worst); 3 keeps the frame-number code readable.
JPEG_QSCALE = 3
_FF_QP2LAMBDA = 118  # FFmpeg's scale from a quantiser to the lambda `global_quality` takes


def encode_jpeg(data: np.ndarray, *, qscale: int = JPEG_QSCALE) -> bytes:
    """A JPEG of a YUV420 planar frame (shape (H*3/2, W), uint8)."""
    import numpy as np  # only a backend that makes arrays pays for numpy
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[0] % 3 or data.shape[1] % 2:
        raise EncoderError(f"not a YUV420 planar frame: shape {data.shape}, dtype {data.dtype}")
    height, width = data.shape[0] * 2 // 3, data.shape[1]
    # Cameras deliver limited-range YUV; JPEG wants full range (yuvj420p), so swscale converts.
    frame = av.VideoFrame.from_ndarray(data, format="yuv420p").reformat(format="yuvj420p")
    frame.pts = 0
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 1)
    ctx.flags |= Flags.qscale
    ctx.global_quality = qscale * _FF_QP2LAMBDA
    try:
        packets = [*ctx.encode(frame), *ctx.encode(None)]
    except av.FFmpegError as err:
        raise EncoderError(f"mjpeg refused a {width}x{height} frame: {err}") from err
    return b"".join(bytes(packet) for packet in packets)
