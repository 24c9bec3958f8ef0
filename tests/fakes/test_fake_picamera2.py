"""The fake picamera2 behaves like the real library where vigil depends on it.

Signatures are checked against text copied from the real source; recordings are decoded
with PyAV and their frame-number codes read back with a reader written from the contract,
not the fake's own; faults are driven and their effects observed through the public API.
The `fake_picamera2` fixture (conftest.py) loads the fake for one test and tears it down.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
from concurrent.futures import CancelledError
from types import ModuleType
from typing import Any

import av
import numpy as np
import pytest

WAIT_S = 5.0  # generous deadline for events that normally take a fraction of a second

# Real signatures, copied from raspberrypi/picamera2 (path @ commit given per group).
REAL_SIGNATURES = {
    # picamera2/picamera2.py @ ec9ab36d87979f4ea4fc247772da39f99f79d5d2
    "Picamera2.__init__": "(self, camera_num=0, verbose_console=None, tuning=None, allocator=None)",
    "Picamera2.global_camera_info": "()",
    "Picamera2.create_preview_configuration": (
        "(self, main={}, lores=None, raw={}, transform=libcamera.Transform(), "
        "colour_space=libcamera.ColorSpace.Sycc(), buffer_count=4, controls={}, "
        "display='main', encode='main', queue=True, sensor={}, use_case='preview')"),
    "Picamera2.create_still_configuration": (
        "(self, main={}, lores=None, raw={}, transform=libcamera.Transform(), "
        "colour_space=libcamera.ColorSpace.Sycc(), buffer_count=1, controls={}, "
        "display=None, encode=None, queue=True, sensor={}, use_case='still')"),
    "Picamera2.create_video_configuration": (
        "(self, main={}, lores=None, raw={}, transform=libcamera.Transform(), "
        "colour_space=None, buffer_count=6, controls={}, display='main', encode='main', "
        "queue=True, sensor={}, use_case='video')"),
    "Picamera2.configure": "(self, camera_config=None)",
    "Picamera2.start": "(self, config=None, show_preview=False)",
    "Picamera2.stop": "(self)",
    "Picamera2.close": "(self)",
    "Picamera2.start_encoder": (
        "(self, encoder=None, output=None, pts=None, quality=None, name=None)"),
    "Picamera2.stop_encoder": "(self, encoders=None)",
    "Picamera2.start_recording": (
        "(self, encoder, output, pts=None, config=None, quality=None, name=None)"),
    "Picamera2.stop_recording": "(self)",
    "Picamera2.capture_array": "(self, name='main', wait=None, signal_function=None)",
    "Picamera2.capture_buffer": "(self, name='main', wait=None, signal_function=None)",
    "Picamera2.capture_metadata": "(self, wait=None, signal_function=None)",
    "Picamera2.capture_request": "(self, wait=None, signal_function=None, flush=None)",
    "Picamera2.cancel_all_and_flush": "(self)",
    "Picamera2.wait": "(self, job, timeout=None)",
    "Picamera2.dispatch_functions": (
        "(self, functions, wait, signal_function=None, immediate=False)"),
    "Picamera2.set_controls": "(self, controls)",
    # picamera2/job.py @ aeb3ff4fd1d9f0067b13e856cc113cc6a8249668
    "Job.__init__": "(self, functions, signal_function=None)",
    "Job.get_result": "(self, timeout=None)",
    # picamera2/encoders/encoder.py @ bf814e5b1c118893af3368c5649c4b91044adac5
    "Encoder.start": "(self, quality=None)",
    "Encoder.stop": "(self)",
    "Encoder.outputframe": (
        "(self, frame, keyframe=True, timestamp=None, packet=None, audio=False)"),
    # picamera2/encoders/h264_encoder.py @ c2f8ab5ce55f3b240fe3db2471a47bfec72d8399
    "V4L2H264Encoder.__init__": (
        "(self, bitrate=None, repeat=True, iperiod=None, framerate=None, "
        "enable_sps_framerate=False, qp=None, profile=None)"),
    # picamera2/encoders/libav_h264_encoder.py @ c242ace87d002b75914e05a28f47cfc1598ef514
    "LibavH264Encoder.__init__": (
        "(self, bitrate=None, repeat=True, iperiod=30, framerate=30, qp=None, profile=None)"),
    # picamera2/outputs/output.py @ ee44f64ab3de7d5f7627cae3b881d1f0ef77d572
    "Output.__init__": "(self, pts=None)",
    "Output.start": "(self)",
    "Output.stop": "(self)",
    "Output.outputframe": (
        "(self, frame, keyframe=True, timestamp=None, packet=None, audio=False)"),
    # picamera2/outputs/fileoutput.py @ bf814e5b1c118893af3368c5649c4b91044adac5
    "FileOutput.__init__": "(self, file=None, pts=None, split=None)",
}

CODE_ROWS = 16
CODE_BITS = 32


def read_code(luma: np.ndarray) -> int:
    """The frame number in rows 0-15, read straight from the contract's wording.

    Cell i spans columns floor(i*W/32)..floor((i+1)*W/32)-1 and is white when bit 31-i is
    set; sample each cell's centre on the middle code row.
    """
    width = luma.shape[1]
    n = 0
    for i in range(CODE_BITS):
        first, last = i * width // CODE_BITS, (i + 1) * width // CODE_BITS - 1
        n |= int(luma[CODE_ROWS // 2, (first + last) // 2] > 127) << (CODE_BITS - 1 - i)
    return n


def decode_numbers(packets: list[bytes]) -> list[int]:
    """Decode an H.264 elementary stream packet by packet; the frame numbers, in order."""
    codec = av.CodecContext.create("h264", "r")
    numbers = []
    for data in [*packets, None]:
        for frame in codec.decode(None if data is None else av.Packet(data)):
            numbers.append(read_code(frame.to_ndarray(format="gray")))
    return numbers


def nal_types(data: bytes) -> list[int]:
    """NAL unit types in an Annex-B byte string."""
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i : i + 3] == b"\x00\x00\x01"]


def recording_output(pc2: ModuleType, want: int) -> Any:
    """An Output that keeps every call and sets `enough` after `want` frames."""
    from picamera2.outputs import Output

    class RecordingOutput(Output):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[dict[str, Any]] = []
            self.enough = threading.Event()

        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            self.calls.append({"frame": frame, "keyframe": keyframe, "timestamp": timestamp,
                               "packet": packet, "audio": audio,
                               "thread": threading.current_thread().name})
            if len(self.calls) >= want:
                self.enough.set()

    return RecordingOutput()


def open_video_camera(pc2: ModuleType, *, fps: float, lores: tuple[int, int] | None = (160, 120),
                      queue: bool = True) -> Any:
    picam2 = pc2.Picamera2()
    config = picam2.create_video_configuration(
        main={"size": (320, 240), "format": "YUV420"},
        lores=None if lores is None else {"size": lores},
        controls={"FrameRate": fps}, queue=queue)
    picam2.configure(config)
    return picam2


def record(picam2: Any, encoder: Any, output: Any) -> None:
    picam2.start_encoder(encoder, output)
    picam2.start()
    assert output.enough.wait(WAIT_S), f"only {len(output.calls)} frames arrived"
    picam2.stop_encoder()
    picam2.stop()


# ---------------------------------------------------------------------------------------


def test_signatures_match_the_real_library(fake_picamera2):
    import libcamera
    from picamera2.encoders import Encoder, LibavH264Encoder
    from picamera2.encoders.h264_encoder import H264Encoder as V4L2H264Encoder
    from picamera2.job import Job
    from picamera2.outputs import FileOutput, Output

    owners = {"Picamera2": fake_picamera2.Picamera2, "Job": Job, "Encoder": Encoder,
              "V4L2H264Encoder": V4L2H264Encoder, "LibavH264Encoder": LibavH264Encoder,
              "Output": Output, "FileOutput": FileOutput}

    def shape(sig: inspect.Signature) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    for qualname, text in REAL_SIGNATURES.items():
        owner, attr = qualname.split(".")
        namespace: dict[str, Any] = {"libcamera": libcamera}
        exec(f"def real{text}: pass", namespace)
        fake = inspect.signature(getattr(owners[owner], attr))
        assert shape(fake) == shape(inspect.signature(namespace["real"])), qualname


def test_camera_info_and_sensor_modes_look_like_a_camera_module_3(fake_picamera2):
    from picamera2 import _fake

    _fake.install_camera()
    info = fake_picamera2.Picamera2.global_camera_info()
    assert info == [{"Model": "imx708", "Location": 2, "Rotation": 180,
                     "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a", "Num": 0}]
    with fake_picamera2.Picamera2() as picam2:
        modes = picam2.sensor_modes
        assert [(m["size"], m["fps"]) for m in modes] == [
            ((1536, 864), 120.13), ((2304, 1296), 56.03), ((4608, 2592), 14.35)]
        for mode in modes:
            assert set(mode) == {"format", "unpacked", "bit_depth", "size", "fps",
                                 "crop_limits", "exposure_limits"}
            assert (str(mode["format"]), mode["unpacked"], mode["bit_depth"]) == (
                "SBGGR10_CSI2P", "SBGGR10", 10)
        # As the real property, the first read reconfigured the camera once per mode.
        assert picam2.camera_config["sensor"]["output_size"] == (4608, 2592)
        assert picam2.sensor_resolution == (4608, 2592)


def test_opening_without_a_camera_or_twice_fails_like_the_real_library(fake_picamera2):
    from picamera2 import _fake

    with pytest.raises(IndexError):
        fake_picamera2.Picamera2()
    camera = _fake.install_camera()
    with fake_picamera2.Picamera2():
        with pytest.raises(RuntimeError, match="Camera __init__ sequence did not complete"):
            fake_picamera2.Picamera2()
        assert camera.is_open
    assert not camera.is_open


def test_configure_applies_the_real_checks(fake_picamera2):
    from picamera2 import _fake

    _fake.install_camera()
    with fake_picamera2.Picamera2() as picam2:
        too_big = picam2.create_video_configuration(main={"size": (320, 240)},
                                                    lores={"size": (640, 480)})
        with pytest.raises(RuntimeError, match="lores stream dimensions may not exceed"):
            picam2.configure(too_big)
        bad_format = picam2.create_video_configuration(main={"format": "XYZ"})
        with pytest.raises(RuntimeError, match="Bad format XYZ in stream main"):
            picam2.configure(bad_format)
        rgb_lores = picam2.create_video_configuration(lores={"size": (320, 240),
                                                             "format": "RGB888"})
        with pytest.raises(RuntimeError, match="lores stream must be YUV"):
            picam2.configure(rgb_lores)
        with pytest.raises(ValueError, match="Bad key 'fps'"):
            picam2.create_video_configuration(main={"fps": 30})
        with pytest.raises(RuntimeError, match="Control Bogus is not advertised"):
            picam2.configure(picam2.create_video_configuration(controls={"Bogus": 1}))
        picam2.configure(picam2.create_video_configuration(main={"size": (320, 240)}))
        picam2.start()
        with pytest.raises(RuntimeError, match="Camera must be stopped before configuring"):
            picam2.configure(picam2.create_video_configuration())
        picam2.stop()


def test_pi4_h264_stream_decodes_with_every_frame_in_order(fake_picamera2):
    from picamera2 import _fake
    from picamera2.encoders import H264Encoder, _hw_encoder_available

    assert _hw_encoder_available
    assert fake_picamera2.Picamera2.platform.name == "VC4"
    _fake.install_camera()
    iperiod, fps, frames = 10, 60, 35
    output = recording_output(fake_picamera2, frames)
    with open_video_camera(fake_picamera2, fps=fps) as picam2:
        record(picam2, H264Encoder(iperiod=iperiod), output)

    calls = output.calls
    numbers = decode_numbers([c["frame"] for c in calls])
    assert len(numbers) == len(calls) >= frames
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert [i for i, c in enumerate(calls) if c["keyframe"]] == list(range(0, len(calls), iperiod))
    for call in calls:
        # Hardware path: SPS (7) and PPS (8) before every IDR (5), no PyAV packet.
        assert (5 in nal_types(call["frame"])) == call["keyframe"]
        if call["keyframe"]:
            assert {7, 8} <= set(nal_types(call["frame"]))
        assert call["packet"] is None and call["audio"] is False
        assert call["thread"].startswith("picamera2-fake-v4l2-encoder")
    timestamps = [c["timestamp"] for c in calls]
    assert timestamps[0] == 0
    assert all(abs(b - a - 1e6 / fps) <= 1 for a, b in itertools.pairwise(timestamps))


def test_pi4_hardware_encoder_defaults_to_a_keyframe_every_60_frames(fake_picamera2):
    from picamera2 import _fake
    from picamera2.encoders import H264Encoder

    _fake.install_camera()
    output = recording_output(fake_picamera2, 62)
    with open_video_camera(fake_picamera2, fps=120, lores=None) as picam2:
        record(picam2, H264Encoder(), output)
    assert [i for i, c in enumerate(output.calls) if c["keyframe"]][:2] == [0, 60]


def test_pi5_h264_encoder_is_the_software_libav_encoder(fake_picamera2):
    from picamera2 import _fake

    _fake.install_camera(platform="pi5")
    from picamera2.encoders import H264Encoder, LibavH264Encoder, _hw_encoder_available
    from picamera2.platform import Platform, get_platform

    assert H264Encoder is LibavH264Encoder
    assert not _hw_encoder_available
    assert get_platform() is Platform.PISP
    assert fake_picamera2.Picamera2.platform is Platform.PISP
    assert "/rp1/" in fake_picamera2.Picamera2.global_camera_info()[0]["Id"]

    output = recording_output(fake_picamera2, 33)
    with open_video_camera(fake_picamera2, fps=60) as picam2:
        encoder = H264Encoder()
        record(picam2, encoder, output)
    assert (encoder.iperiod, encoder.framerate) == (30, 30)
    calls = output.calls
    assert [i for i, c in enumerate(calls) if c["keyframe"]][:2] == [0, 30]
    assert all(isinstance(c["packet"], av.Packet) for c in calls)
    assert all(c["timestamp"] == c["packet"].pts for c in calls)
    # Software encoding runs on the camera's own thread.
    assert all(c["thread"].startswith("picamera2-fake-frames") for c in calls)
    numbers = decode_numbers([c["frame"] for c in calls])
    assert numbers == list(range(numbers[0], numbers[0] + len(calls)))


def test_capture_array_gives_yuv420_arrays_of_the_latest_frame(fake_picamera2):
    from picamera2 import _fake

    camera = _fake.install_camera()
    with open_video_camera(fake_picamera2, fps=60, lores=(320, 240)) as picam2:
        picam2.start()
        assert camera.wait_for_frames(2, WAIT_S)
        lores = picam2.capture_array("lores", wait=WAIT_S)
        main = picam2.capture_array("main", wait=WAIT_S)
        assert (lores.shape, lores.dtype) == ((360, 320), np.uint8)
        assert (main.shape, main.dtype) == ((360, 320), np.uint8)
        first = read_code(lores[:240])
        second = read_code(main[:240])
        assert 0 <= first < second <= camera.last_frame_number
        metadata = picam2.capture_metadata(wait=WAIT_S)
        assert metadata["FrameDuration"] == 16666
        # Numbers never restart: a restarted camera carries on counting.
        picam2.stop()
        picam2.start()
        assert read_code(picam2.capture_array("main", wait=WAIT_S)[:240]) > second
        picam2.stop()


def test_frontend_timeout_stops_frames_until_restart(fake_picamera2, caplog):
    from picamera2 import _fake

    camera = _fake.install_camera(dequeue_timeout_s=0.2)
    caplog.set_level(logging.WARNING)
    # queue=False: every capture waits for a new frame, none is held back.
    with open_video_camera(fake_picamera2, fps=60, queue=False) as picam2:
        picam2.start()
        assert picam2.capture_array("lores", wait=WAIT_S).shape == (180, 192)
        injected = time.monotonic()
        camera.frontend_timeout()
        assert camera.wait_for_event("frames_stopped", WAIT_S, since=injected)
        with pytest.raises(TimeoutError):
            picam2.capture_array("lores", wait=0.3)
        picam2.cancel_all_and_flush()
        assert camera.wait_for_event("frontend_timeout_logged", WAIT_S)
        assert "Camera frontend has timed out!" in caplog.text
        picam2.stop()
        picam2.start()
        assert picam2.capture_array("lores", wait=WAIT_S).shape == (180, 192)
        picam2.stop()


def test_a_timed_out_capture_stays_queued_until_cancelled(fake_picamera2):
    from picamera2 import _fake

    _fake.install_camera()
    with open_video_camera(fake_picamera2, fps=30) as picam2:
        with pytest.raises(TimeoutError):
            picam2.capture_array("main", wait=0.05)
        job = picam2.capture_array("main", wait=False)
        picam2.cancel_all_and_flush()
        with pytest.raises(CancelledError):
            picam2.wait(job, timeout=WAIT_S)


def test_vanish_breaks_the_open_camera_and_reappear_allows_a_new_one(fake_picamera2):
    from picamera2 import _fake

    camera = _fake.install_camera()
    picam2 = open_video_camera(fake_picamera2, fps=60, queue=False)
    picam2.start()
    assert camera.wait_for_frames(1, WAIT_S)
    camera.vanish()
    assert fake_picamera2.Picamera2.global_camera_info() == []
    with pytest.raises(IndexError):
        fake_picamera2.Picamera2()
    with pytest.raises(TimeoutError):
        picam2.capture_array("main", wait=0.2)
    with pytest.raises(RuntimeError, match="Failed to stop camera: No such device"):
        picam2.stop()
    with pytest.raises(RuntimeError, match="No such device"):
        picam2.close()  # close() stops first, and that fails, as in the real library

    camera.reappear()
    assert len(fake_picamera2.Picamera2.global_camera_info()) == 1
    with open_video_camera(fake_picamera2, fps=60) as fresh:
        fresh.start()
        assert fresh.capture_array("main", wait=WAIT_S).shape == (360, 320)
        fresh.stop()
    with pytest.raises(RuntimeError, match="No such device"):
        picam2.stop()  # the old object stays bound to the camera that went away
    assert [e for _, e in camera.history if e in ("vanish", "reappear")] == [
        "vanish", "reappear"]


def test_hang_stop_blocks_stop_until_released(fake_picamera2):
    from picamera2 import _fake

    camera = _fake.install_camera()
    with open_video_camera(fake_picamera2, fps=60) as picam2:
        picam2.start()
        camera.hang_stop(None)
        stopper = threading.Thread(target=picam2.stop, name="test-stopper", daemon=True)
        stopper.start()
        assert camera.wait_for_event("stop_blocked", WAIT_S)
        stopper.join(0.2)
        assert stopper.is_alive() and picam2.started
        frames_while_hung = camera.frames_produced
        camera.release_stop()
        stopper.join(WAIT_S)
        assert not stopper.is_alive()
        assert not picam2.started
        assert camera.frames_produced == frames_while_hung  # the camera was already halted


def test_hang_stop_with_seconds_delays_stop_encoder(fake_picamera2):
    from picamera2 import _fake
    from picamera2.encoders import H264Encoder

    camera = _fake.install_camera()
    output = recording_output(fake_picamera2, 3)
    with open_video_camera(fake_picamera2, fps=60) as picam2:
        picam2.start_encoder(H264Encoder(iperiod=10), output)
        picam2.start()
        assert output.enough.wait(WAIT_S)
        camera.hang_stop(0.3)
        began = time.monotonic()
        picam2.stop_encoder()
        assert time.monotonic() - began >= 0.3
        picam2.stop()  # the hang has expired: returns at once
    assert len(camera.events("stop_blocked")) == 1


def test_close_is_idempotent_and_leaves_no_thread(fake_picamera2):
    from picamera2 import _fake
    from picamera2.encoders import H264Encoder

    camera = _fake.install_camera()
    picam2 = open_video_camera(fake_picamera2, fps=60)
    output = recording_output(fake_picamera2, 2)
    picam2.start_encoder(H264Encoder(), output)
    picam2.start()
    assert output.enough.wait(WAIT_S)
    picam2.close()
    picam2.close()
    assert not picam2.is_open and not camera.is_open
    assert not [t.name for t in threading.enumerate() if t.name.startswith("picamera2-fake")]
    # The encoder was left running; the fake stopped it and says so.
    assert camera.events("close_stopped_encoder")


def test_repeat_false_sends_the_stream_header_only_once(fake_picamera2):
    from picamera2 import _fake
    from picamera2.encoders import H264Encoder

    _fake.install_camera()
    output = recording_output(fake_picamera2, 12)
    with open_video_camera(fake_picamera2, fps=60, lores=None) as picam2:
        record(picam2, H264Encoder(iperiod=5, repeat=False), output)
    keyframes = [c["frame"] for c in output.calls if c["keyframe"]]
    assert len(keyframes) >= 3
    assert 7 in nal_types(keyframes[0])
    assert all(7 not in nal_types(frame) for frame in keyframes[1:])
    numbers = decode_numbers([c["frame"] for c in output.calls])
    assert numbers == list(range(numbers[0], numbers[0] + len(output.calls)))
