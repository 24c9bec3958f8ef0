"""The V4L2 backend: its ioctl ABI, H.264 pass-through, granted modes, unplug and recovery.

Runs vigil's V4L2Device and V4L2Camera on the fake kernel (tests/fakes/v4l2_device.py),
which checks the raw ioctl bytes against layouts of its own; the tests marked `hardware`
run the same code on this machine's /dev/video* devices when there are any.
"""

from __future__ import annotations

import ctypes
import glob
import struct
import time
from pathlib import Path

import av
import pytest
from loguru import logger

from controller.core.controller import Controller
from hw.camera import CameraMode, EncodedPacket, Frame
from hw.errors import CameraUnavailable
from hw.factory import DEFAULT_MAKERS, Hardware, detect_backend
from hw.v4l2 import abi
from hw.v4l2.camera import GrantedModeMismatch, V4L2Camera
from hw.v4l2.device import LinuxDeviceIO, V4L2Device
from hw.v4l2.h264 import ParameterSets, nal_units
from hw.v4l2.probe import V4L2Maker
from tests.e2e.conftest import FAST_POLICY, RunningController
from tests.fakes.v4l2_device import FakeV4L2
from tests.helpers import gaps, recorded_numbers, segments
from tests.specs import camera_spec, recording_spec

MODE = CameraMode(160, 120, 30)
WAIT_SECONDS = 10.0
REAL_DEVICES = sorted(glob.glob("/dev/video*"))
needs_device = pytest.mark.skipif(not REAL_DEVICES, reason="no /dev/video* device on this machine")

# The request numbers as the kernel computes them (videodev2.h), for LP64 and ILP32.
KNOWN_REQUESTS = {
    8: {"VIDIOC_QUERYCAP": 0x80685600, "VIDIOC_ENUM_FMT": 0xC0405602, "VIDIOC_S_FMT": 0xC0D05605,
        "VIDIOC_REQBUFS": 0xC0145608, "VIDIOC_QUERYBUF": 0xC0585609, "VIDIOC_QBUF": 0xC058560F,
        "VIDIOC_DQBUF": 0xC0585611, "VIDIOC_STREAMON": 0x40045612, "VIDIOC_STREAMOFF": 0x40045613,
        "VIDIOC_G_PARM": 0xC0CC5615, "VIDIOC_S_PARM": 0xC0CC5616,
        "VIDIOC_G_CTRL": 0xC008561B, "VIDIOC_S_CTRL": 0xC008561C,
        "VIDIOC_ENUM_FRAMESIZES": 0xC02C564A, "VIDIOC_ENUM_FRAMEINTERVALS": 0xC034564B},
    4: {"VIDIOC_QUERYCAP": 0x80685600, "VIDIOC_ENUM_FMT": 0xC0405602, "VIDIOC_S_FMT": 0xC0CC5605,
        "VIDIOC_REQBUFS": 0xC0145608, "VIDIOC_QUERYBUF": 0xC0445609, "VIDIOC_QBUF": 0xC044560F,
        "VIDIOC_DQBUF": 0xC0445611, "VIDIOC_STREAMON": 0x40045612, "VIDIOC_STREAMOFF": 0x40045613,
        "VIDIOC_G_PARM": 0xC0CC5615, "VIDIOC_S_PARM": 0xC0CC5616,
        "VIDIOC_G_CTRL": 0xC008561B, "VIDIOC_S_CTRL": 0xC008561C,
        "VIDIOC_ENUM_FRAMESIZES": 0xC02C564A, "VIDIOC_ENUM_FRAMEINTERVALS": 0xC034564B},
}


def fake_camera(kernel: FakeV4L2, input_format: str = "auto", mode: CameraMode = MODE,
                device: str = "/dev/video0") -> V4L2Camera:
    return V4L2Camera(mode, device, input_format=input_format, io=kernel)


def test_request_numbers_match_the_kernel_header() -> None:
    expected = KNOWN_REQUESTS[struct.calcsize("P")]
    assert {name: getattr(abi, name) for name in expected} == expected
    assert ctypes.sizeof(abi.v4l2_capability) == 104


def test_nal_units_are_found_behind_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67AB\x00\x00\x00\x01\x68C\x00\x00\x01\x65DEF\x00"
    units = [(kind, data[start:end]) for kind, start, end in nal_units(data)]
    assert units == [(7, b"\x67AB"), (8, b"\x68C"), (5, b"\x65DEF\x00")]


def test_parameter_sets_go_in_front_of_idrs_and_an_idr_before_them_starts_nothing() -> None:
    sets = ParameterSets()
    sps, pps = b"\x00\x00\x00\x01\x67S", b"\x00\x00\x00\x01\x68P"
    idr, p_slice = b"\x00\x00\x01\x65I", b"\x00\x00\x01\x41p"
    assert sets.complete(idr) == (idr, False)  # no SPS/PPS seen yet: not a place to start
    assert sets.complete(sps + pps + idr) == (sps + pps + idr, True)
    assert sets.complete(p_slice) == (p_slice, False)
    assert sets.complete(idr) == (sps + pps + idr, True)
    assert sets.inserted == 1


@pytest.mark.parametrize(("offered", "chosen", "output"), [
    (["yuyv422", "mjpeg", "h264"], "h264", "packets"),
    (["yuyv422", "mjpeg"], "mjpeg", "frames"),
    (["yuyv422"], "yuyv422", "frames"),
])
def test_auto_prefers_h264_then_mjpeg_then_yuyv(offered: list[str], chosen: str, output: str) -> None:
    kernel = FakeV4L2()
    kernel.add_device(formats={name: [(160, 120)] for name in offered})
    camera = fake_camera(kernel)
    camera.open()
    try:
        assert (camera.format_name, camera.mode.output) == (chosen, output)
        assert isinstance(camera.read(WAIT_SECONDS), EncodedPacket if output == "packets" else Frame)
    finally:
        camera.close()


def test_a_format_the_camera_does_not_offer_is_refused_naming_what_it_offers() -> None:
    kernel = FakeV4L2()
    kernel.add_device(formats={"yuyv422": [(160, 120)], "mjpeg": [(160, 120)]})
    with pytest.raises(CameraUnavailable) as caught:
        fake_camera(kernel, "h264").open()
    assert "does not offer camera.input_format h264 (it offers YUYV, MJPG)" in str(caught.value)
    assert "one of mjpeg, yuyv422" in str(caught.value)


def test_a_granted_size_other_than_the_config_is_reported_with_the_offered_sizes() -> None:
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"mjpeg": [(640, 480), (320, 240)]})
    with pytest.raises(GrantedModeMismatch) as caught:
        fake_camera(kernel, "mjpeg").open()
    assert str(caught.value) == (
        "/dev/video0: asked for 160x120@30 mjpeg, the driver granted 320x240@30 MJPG; mjpeg sizes "
        "offered: 640x480, 320x240; set camera.width, height and fps to one of them")
    assert not device.is_streaming and not kernel._handles  # nothing left open


def test_a_granted_rate_other_than_the_config_is_reported_with_the_offered_rates() -> None:
    kernel = FakeV4L2()
    kernel.add_device(formats={"yuyv422": [(160, 120)]}, rates=(15.0, 5.0))
    with pytest.raises(GrantedModeMismatch) as caught:
        fake_camera(kernel, "yuyv422").open()
    assert "asked for 160x120@30 yuyv422, the driver granted 160x120@15 YUYV" in str(caught.value)
    assert "rates at 160x120: 15, 5" in str(caught.value)


def record(kernel: FakeV4L2, root: Path, input_format: str, frames: int = 45) -> V4L2Camera:
    hardware = Hardware(camera_spec(backend="v4l2", width=160, height=120, fps=30, input_format=input_format),
                        recording_spec(root=root, segment_seconds=1, fragment_seconds=0.5),
                        makers={**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel)})
    camera = hardware.make_camera()
    camera.open()
    pipeline = hardware.make_pipeline(camera, root, lambda c, r: pytest.fail(f"{c}: {r}"))
    pipeline.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while pipeline.stats.frames_recorded < frames and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.stop().abandoned == ()
    assert isinstance(camera, V4L2Camera)
    return camera


def recorded_nal_units(root: Path) -> list[list[bytes]]:
    """Every recorded sample as its NAL units (MP4 stores them length-prefixed)."""
    samples = []
    for path in segments(root):
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                data, units, pos = bytes(packet), [], 0
                while pos < len(data):
                    size = int.from_bytes(data[pos : pos + 4], "big")
                    units.append(data[pos + 4 : pos + 4 + size])
                    pos += 4 + size
                if units:
                    samples.append(units)
    return samples


def camera_nal_units(payload: bytes) -> list[bytes]:
    return [payload[start:end] for _, start, end in nal_units(payload)]


def test_h264_pass_through_records_the_cameras_own_packets_unchanged(tmp_path: Path) -> None:
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(160, 120)]}, keep_payloads=True)
    record(kernel, tmp_path, "h264")
    recorded = recorded_nal_units(tmp_path)
    served = [camera_nal_units(p) for p in device.payloads]
    first = served.index(recorded[0])  # recording starts at the camera's first keyframe
    assert recorded == served[first : first + len(recorded)]
    assert len(recorded) >= 45
    assert gaps(recorded_numbers(tmp_path)) == []


def test_h264_headers_sent_once_are_put_in_front_of_every_keyframe(tmp_path: Path) -> None:
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(160, 120)]}, keep_payloads=True,
                               repeat_headers=False, gop=10)
    camera = record(kernel, tmp_path, "h264")
    served_keyframes = [p for p in device.payloads if b"\x00\x00\x01\x65" in p]
    assert sum(b"\x00\x00\x01\x67" in p for p in served_keyframes) == 1  # the camera sent SPS once
    keyframes = [units for units in recorded_nal_units(tmp_path) if any(u[0] & 0x1F == 5 for u in units)]
    assert len(keyframes) >= 3 and camera._headers.inserted >= 2
    assert all({7, 8} <= {u[0] & 0x1F for u in units} for units in keyframes)
    assert len(segments(tmp_path)) >= 2  # ...so every segment starts decodable
    assert gaps(recorded_numbers(tmp_path)) == []


def test_unplugging_mid_recording_is_camera_lost_and_recording_resumes_once_it_is_back(
        tmp_path: Path) -> None:
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(160, 120)]}, by_id="usb-Fake_Camera_0001-video-index0")
    hardware = Hardware(
        camera_spec(backend="v4l2", width=160, height=120, fps=30, read_timeout_seconds=0.5,
                   device="/dev/v4l/by-id/usb-Fake_Camera_0001-video-index0"),
        recording_spec(root=tmp_path / "rec", segment_seconds=1, fragment_seconds=0.5),
        makers={**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel)})
    running = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True))
    running.thread.start()
    try:
        c = running.controller
        assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
        assert c.wait_until(lambda: c.snapshot.run.frames_recorded >= 20, WAIT_SECONDS)
        device.unplug()
        assert c.wait_until(lambda: c.state in ("recovering", "critical"), WAIT_SECONDS)
        assert c.ledger.totals["camera_lost"] >= 1
        # While it is gone every attempt fails on open (the node does not exist): no recording.
        tried = c.unit.recoveries_attempted
        assert c.wait_until(lambda: c.unit.recoveries_attempted >= tried + 2, WAIT_SECONDS)
        assert c.state != "recording"
        device.replug()
        assert c.wait_for_state("recording", 3 * WAIT_SECONDS), c.refusals
        assert c.wait_until(lambda: c.snapshot.run.frames_recorded >= 20, WAIT_SECONDS)
    finally:
        running.stop()
    assert len(device.events("streamon")) == 2
    assert recorded_numbers(tmp_path / "rec")


def test_a_probe_finds_capture_devices_and_says_why_others_are_not(tmp_path: Path) -> None:
    kernel = FakeV4L2()
    kernel.add_device("/dev/video0", card="Camera A", formats={"mjpeg": [(640, 480), (160, 120)]},
                      rates=(30.0, 15.0))
    kernel.add_device("/dev/video10", card="bcm2835-codec-decode", capture=False)
    result = V4L2Maker(io=kernel).probe(detail=True)
    assert [c.address for c in result.cameras] == ["/dev/video0"]
    assert result.cameras[0].modes == ("mjpeg 640x480@30, 160x120@30",)
    assert [(s.address, s.reason) for s in result.skipped] == [
        ("/dev/video10", "bcm2835-codec-decode (fake-codec) is not a capture device")]


def test_auto_detection_logs_each_probe_and_picks_v4l2_when_only_it_finds_a_camera() -> None:
    kernel = FakeV4L2()
    kernel.add_device()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}")
    try:
        backend, why = detect_backend({**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel),
                                       "picamera2": type(DEFAULT_MAKERS["picamera2"])(
                                           module="vigil_test_absent_picamera2")})
    finally:
        logger.remove(sink)
    assert backend == "v4l2" and "/dev/video0" in why
    assert any("backend=picamera2 found=False picamera2 is not installed" in line for line in lines)
    assert any("backend=v4l2 found=True" in line for line in lines)


def test_auto_detection_falls_back_to_synthetic_when_nothing_is_found() -> None:
    backend, why = detect_backend({**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=FakeV4L2()),
                                   "picamera2": type(DEFAULT_MAKERS["picamera2"])(
                                       module="vigil_test_absent_picamera2")})
    assert backend == "synthetic"
    assert "v4l2: no /dev/video* device" in why and "falling back to synthetic" in why


def test_the_real_system_calls_translate_errors_from_a_node_that_is_no_camera() -> None:
    missing = V4L2Device("/dev/video-vigil-no-such-node", io=LinuxDeviceIO())
    with pytest.raises(CameraUnavailable, match="does not exist"):
        missing.open()
    not_video = V4L2Device("/dev/null", io=LinuxDeviceIO())
    not_video.open()  # real open(2) and ioctl(2): /dev/null answers ENOTTY to VIDIOC_QUERYCAP
    try:
        with pytest.raises(CameraUnavailable, match="VIDIOC_QUERYCAP failed: Inappropriate ioctl"):
            not_video.capabilities()
        assert not_video.formats() == []  # ENOTTY ends an enumeration as EINVAL does
    finally:
        not_video.close()
        not_video.close()


# -- on real devices ---------------------------------------------------------------------------


@pytest.mark.hardware
@needs_device
def test_real_devices_answer_querycap_and_enum_fmt() -> None:
    for path in REAL_DEVICES:
        device = V4L2Device(path, io=LinuxDeviceIO())
        try:
            device.open()
        except CameraUnavailable as err:
            pytest.fail(f"{path} did not open: {err}")
        try:
            caps = device.capabilities()
            assert caps.driver
            if caps.is_capture:
                device.formats()  # must not raise: the ENUM_FMT layout is right
        finally:
            device.close()


@pytest.mark.hardware
@needs_device
def test_a_real_capture_device_streams_in_its_first_mode() -> None:
    found = V4L2Maker().probe()
    if not found.cameras:
        pytest.skip("no /dev/video* device on this machine offers h264, mjpeg or yuyv422")
    path = found.cameras[0].address
    probe = V4L2Device(path)
    probe.open()
    try:
        desc = next(f for f in probe.formats() if f.input_format)
        sizes = probe.frame_sizes(desc.fourcc)
        width, height = sizes.discrete[0] if sizes.discrete else (640, 480)
        rates = probe.frame_rates(desc.fourcc, width, height) or [30.0]
    finally:
        probe.close()
    camera = V4L2Camera(CameraMode(width, height, rates[0]), path, input_format=str(desc.input_format))
    camera.open()
    try:
        items = [camera.read(5.0) for _ in range(5)]
    finally:
        camera.close()
    assert all(isinstance(i, EncodedPacket | Frame) for i in items)
