"""The frame-number code: what is drawn reads back, raw and through H.264."""

from __future__ import annotations

import numpy as np
import pytest

from hw import framecode
from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.synthetic import FrameCounter, SyntheticCamera


@pytest.mark.parametrize("width", [64, 66, 96, 160, 641, 1920])
@pytest.mark.parametrize("number", [0, 1, 12345, 2**31 + 7, 2**32 - 1])
def test_drawn_number_reads_back(width: int, number: int) -> None:
    luma = np.full((48, width), 77, dtype=np.uint8)
    framecode.draw(luma, number)
    assert framecode.read(luma) == number


def test_cells_follow_the_contract() -> None:
    luma = np.zeros((16, 100), dtype=np.uint8)
    framecode.draw(luma, 1 << 31 | 1)  # leftmost and rightmost bits set
    assert framecode.cell_bounds(100)[0] == (0, 3) and framecode.cell_bounds(100)[31] == (96, 100)
    assert (luma[:, 0:3] == 255).all() and (luma[:, 3:96] == 0).all() and (luma[:, 96:] == 255).all()


def test_number_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        framecode.bit_pattern(2**32, 64)


@pytest.mark.parametrize("mode", [CameraMode(64, 48, 30), CameraMode(320, 240, 30)])
def test_numbers_survive_h264(mode: CameraMode) -> None:
    import av

    camera = SyntheticCamera(mode, counter=FrameCounter(), paced=False)
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=0.5)
    codec = av.CodecContext.create("h264", "r")
    decoded = []
    for i in range(20):
        frame = camera.read(1.0)
        frame.timestamp = i / mode.fps
        for packet in encoder.encode(frame):
            for picture in codec.decode(av.Packet(packet.data)):
                decoded.append(framecode.read_video_frame(picture))
    assert decoded == list(range(20))
