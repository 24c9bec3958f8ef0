"""Which H.264 encoder raw frames go through: the Pi's h264_v4l2m2m where it answers, else libx264.

The probe runs against the fake V4L2 kernel (tests/fakes/v4l2_device.py); the fallback from a
hardware encoder that answers its probe but will not open is real: FFmpeg's h264_v4l2m2m
refuses to open on a machine with no such device, and the recording goes on with libx264.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from loguru import logger

from controller.config import VigilConfig
from controller.doctor import EXIT_OK, examine
from hw import framecode
from hw.camera import CameraMode, Frame
from hw.encoder import LIBX264, PI_ENCODER_DEVICE, V4L2_M2M, H264Encoder, choose_encoder, probe_m2m_encoder
from hw.factory import DEFAULT_MAKERS, Hardware
from tests.fakes.v4l2_device import FakeV4L2
from tests.helpers import gaps, recorded_numbers, segments
from tests.specs import camera_spec, recording_spec
from tests.unit.test_encoder import decode_numbers

BOTH = {LIBX264, V4L2_M2M}
RECORD_FRAMES = 45
DEADLINE_SECONDS = 30.0


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def pi4_kernel() -> FakeV4L2:
    kernel = FakeV4L2()
    kernel.add_device("/dev/video10", card="bcm2835-codec-decode", capture=False)
    kernel.add_device(PI_ENCODER_DEVICE, card="bcm2835-codec-encode", capture=False)
    return kernel


def test_the_pi_encoder_node_is_chosen_when_it_answers() -> None:
    kernel = pi4_kernel()
    assert probe_m2m_encoder(io=kernel) == ""
    choice = choose_encoder(lambda: probe_m2m_encoder(io=kernel), codecs=BOTH)
    assert choice.codec == V4L2_M2M and choice.is_hardware
    assert choice.describe() == "h264_v4l2m2m, the hardware H.264 encoder (/dev/video11 answers as an " \
                                "M2M encoder)"


@pytest.mark.parametrize(("plug", "reason"), [
    (None, "/dev/video11 does not exist (a Pi 5 or no Pi, or the bcm2835-codec driver is not loaded)"),
    ({"card": "USB Camera"}, "/dev/video11 (USB Camera) is not a memory-to-memory codec"),
    ({"card": "bcm2835-codec-decode", "capture": False},
     "/dev/video11 (bcm2835-codec-decode) is a memory-to-memory codec but not an encoder"),
])
def test_libx264_with_the_reason_when_the_node_does_not_answer(plug: dict[str, object] | None,
                                                              reason: str) -> None:
    kernel = FakeV4L2()
    if plug is not None:
        kernel.add_device(PI_ENCODER_DEVICE, **plug)  # type: ignore[arg-type]
    choice = choose_encoder(lambda: probe_m2m_encoder(io=kernel), codecs=BOTH)
    assert choice.codec == LIBX264
    assert choice.reason == f"no hardware encoder: {reason}"


def test_libx264_when_ffmpeg_lacks_the_codec() -> None:
    choice = choose_encoder(lambda: probe_m2m_encoder(io=pi4_kernel()), codecs={LIBX264})
    assert choice.codec == LIBX264
    assert choice.reason == "this FFmpeg build has no h264_v4l2m2m"


def test_a_hardware_encoder_that_will_not_open_falls_back_and_records(tmp_path: Path,
                                                                     warnings: list[str]) -> None:
    if V4L2_M2M not in av.codecs_available:
        pytest.skip("this PyAV's FFmpeg has no h264_v4l2m2m, so there is nothing to fall back from")
    if Path(PI_ENCODER_DEVICE).exists():
        pytest.skip(f"{PI_ENCODER_DEVICE} exists here: h264_v4l2m2m may really open (see the hardware test)")
    root = tmp_path / "rec"
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=30),
                        recording_spec(root=root, segment_seconds=1, fragment_seconds=0.5),
                        encoder_probe=lambda: "")  # the probe says: the encoder is there
    assert hardware.encoder_choice.codec == V4L2_M2M
    camera = hardware.make_camera()
    camera.open()
    pipeline = hardware.make_pipeline(camera, root, lambda category, why: None)
    assert hardware.encoder_choice.codec == LIBX264
    assert hardware.encoder_choice.reason.startswith("h264_v4l2m2m failed to open: h264_v4l2m2m refused")
    assert [w for w in warnings if w.startswith("H.264 encoder falls back to libx264, software "
                                                "(h264_v4l2m2m failed to open")], warnings
    pipeline.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while pipeline.stats.frames_recorded < RECORD_FRAMES and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    camera.close()
    numbers = recorded_numbers(root)
    assert len(numbers) >= RECORD_FRAMES and gaps(numbers) == [], numbers
    assert segments(root)


def doctor_config(tmp_path: Path) -> VigilConfig:
    return VigilConfig.model_validate({"camera": {"backend": "synthetic", "width": 160, "height": 120},
                                       "recording": {"root": str(tmp_path / "rec")},
                                       "gpio": {"enabled": False}})


def test_doctor_names_the_encoder_and_why(tmp_path: Path) -> None:
    absent = examine(doctor_config(tmp_path), makers=dict(DEFAULT_MAKERS),
                     encoder_probe=lambda: probe_m2m_encoder(io=FakeV4L2()))
    assert absent.exit_code == EXIT_OK
    assert ("  encoder: libx264 preset ultrafast, crf 23; software: no hardware encoder: /dev/video11 "
            "does not exist") in absent.text()
    if V4L2_M2M in av.codecs_available and not Path(PI_ENCODER_DEVICE).exists():
        # The probe answers, the real FFmpeg cannot open it here: doctor says so, as run would.
        refused = examine(doctor_config(tmp_path), makers=dict(DEFAULT_MAKERS), encoder_probe=lambda: "")
        assert "  encoder: libx264 preset ultrafast, crf 23; software: h264_v4l2m2m failed to open: " \
            in refused.text()


@pytest.mark.hardware
def test_the_pi_hardware_encoder_encodes_every_frame() -> None:
    why_not = probe_m2m_encoder()
    if why_not:
        pytest.skip(f"no hardware H.264 encoder here: {why_not}")
    mode = CameraMode(640, 480, 30)
    encoder = H264Encoder(mode, fragment_seconds=0.5, codec=V4L2_M2M)
    packets = []
    for i in range(60):
        frame = Frame(numbered_image_for(mode, i), i / mode.fps, 0.0, i)
        packets += encoder.encode(frame)
    packets += encoder.flush()
    assert any(p.is_keyframe for p in packets)
    assert decode_numbers([p.data for p in packets]) == list(range(60))


def numbered_image_for(mode: CameraMode, n: int) -> np.ndarray:
    image = np.full(mode.frame_shape, 128, np.uint8)
    framecode.draw(image[: mode.height], n)
    return image
