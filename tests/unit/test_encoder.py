"""The libx264 encoder takes frames from the camera's own arrays: what it encodes is what was there."""

from __future__ import annotations

import av
import numpy as np

from hw import framecode
from hw.camera import CameraMode, Frame
from hw.encoder import H264Encoder

MODE = CameraMode(160, 120, 30)


def decode_numbers(packets: list[bytes]) -> list[int]:
    codec = av.CodecContext.create("h264", "r")
    numbers = []
    for data in packets:
        for picture in codec.decode(av.Packet(data)):
            numbers.append(framecode.read_video_frame(picture))
    for picture in codec.decode(None):
        numbers.append(framecode.read_video_frame(picture))
    return numbers


def numbered_image(n: int, out: np.ndarray | None = None) -> np.ndarray:
    image = out if out is not None else np.empty(MODE.frame_shape, np.uint8)
    image[:] = 128
    framecode.draw(image[: MODE.height], n)
    return image


def encode_all(images: list[np.ndarray]) -> list[bytes]:
    encoder = H264Encoder(MODE, fragment_seconds=0.5)
    packets = []
    for i, image in enumerate(images):
        packets += [p.data for p in encoder.encode(Frame(image, i / MODE.fps, 0.0, i))]
    return packets + [p.data for p in encoder.flush()]


def test_reusing_an_array_after_encode_does_not_change_the_encoded_frames() -> None:
    # The encoder builds its frame over the array without copying; libx264 must have taken
    # the picture by the time encode() returns, or a camera reusing buffers would corrupt video.
    encoder = H264Encoder(MODE, fragment_seconds=0.5)
    buffer = np.empty(MODE.frame_shape, np.uint8)
    packets = []
    for i in range(12):
        numbered_image(i, buffer)
        packets += [p.data for p in encoder.encode(Frame(buffer, i / MODE.fps, 0.0, i))]
    packets += [p.data for p in encoder.flush()]
    assert decode_numbers(packets) == list(range(12))


def test_frames_from_non_contiguous_arrays_encode_like_contiguous_ones() -> None:
    wide = np.zeros((MODE.frame_shape[0], MODE.width + 32), np.uint8)
    views = []
    for i in range(6):
        view = wide.copy()[:, 16 : 16 + MODE.width]  # rows padded: not C-contiguous
        view[:] = numbered_image(i)
        assert not view.flags.c_contiguous
        views.append(view)
    assert decode_numbers(encode_all(views)) == list(range(6))
    assert decode_numbers(encode_all([numbered_image(i) for i in range(6)])) == list(range(6))
