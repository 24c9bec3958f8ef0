"""The libx264 encoder takes frames from the camera's own arrays: what it encodes is what was there."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from hw import framecode
from hw.camera import CameraMode, Frame
from hw.encoder import H264Encoder
from hw.filecam import FileCamera
from hw.validate import FrameValidator

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


def decoded_picture(n: int) -> av.VideoFrame:
    """A frame as a decoder hands it over: its own time base and pts, picture type I (lavfi's)."""
    picture = av.VideoFrame.from_ndarray(numbered_image(n), format="yuv420p")
    picture.time_base = Fraction(1, int(MODE.fps))
    picture.pts = n
    picture.pict_type = av.video.frame.PictureType.I
    return picture


def test_a_decoders_frame_is_encoded_as_it_came_and_the_encoder_sets_its_keyframes() -> None:
    # The file camera hands over the decoder's own frame (no copy into an array). Its picture
    # type (I on every lavfi frame) and time base must not reach libx264: every frame would
    # be a keyframe, or its timestamps rescaled. Keyframes stay one per fragment (0.5 s here).
    encoder = H264Encoder(MODE, fragment_seconds=0.5)
    frames = [Frame(None, 10.0 + i / MODE.fps, 0.0, i, picture=decoded_picture(i)) for i in range(30)]
    packets = [p for frame in frames for p in encoder.encode(frame)] + encoder.flush()
    assert decode_numbers([p.data for p in packets]) == list(range(30))
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 15]
    assert [round(p.timestamp, 6) for p in packets] == [round(f.timestamp, 6) for f in frames]
    assert all(f._data is None for f in frames)  # nobody made an array of the pixels


def test_a_forced_keyframe_on_a_decoders_frame_is_kept() -> None:
    encoder = H264Encoder(MODE, fragment_seconds=1.0)
    packets = []
    for i in range(12):
        if i == 5:
            encoder.force_keyframe()
        frame = Frame(None, i / MODE.fps, 0.0, i, picture=decoded_picture(i))
        packets += encoder.encode(frame)
    packets += encoder.flush()
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 5]


def test_the_file_camera_hands_over_the_decoders_frame_and_makes_an_array_only_when_asked() -> None:
    camera = FileCamera(MODE, f"lavfi:testsrc2=size={MODE.width}x{MODE.height}:rate=30", paced=False)
    camera.open()
    try:
        frame = camera.read(1.0)
    finally:
        camera.close()
    assert frame.picture is not None and frame._data is None
    assert FrameValidator(MODE).check(frame) is None and frame._data is None
    data = frame.data  # a snapshot's reader of pixels: the same picture, as an array
    assert data is not None and data.shape == MODE.frame_shape
    assert np.array_equal(data, frame.picture.to_ndarray(format="yuv420p"))
