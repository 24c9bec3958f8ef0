"""`vigil doctor`: its report and exit status on a Pi (fake picamera2), on a bare box, and broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from controller.config import VigilConfig
from controller.doctor import EXIT_CANNOT_RECORD, EXIT_OK, examine
from hw.factory import DEFAULT_MAKERS, CameraMaker
from hw.picam import PicameraMaker
from hw.v4l2.probe import V4L2Maker
from tests.fakes.realpicam import RealPicamera2
from tests.fakes.v4l2_device import FakeV4L2

REPO = Path(__file__).resolve().parents[2]
ABSENT_PICAMERA2 = "vigil_test_absent_picamera2"


def config(tmp_path: Path, **camera: object) -> VigilConfig:
    return VigilConfig.model_validate({
        "camera": {"width": 160, "height": 120, "fps": 30, **camera},
        "recording": {"root": str(tmp_path / "rec"), "fallback_roots": [str(tmp_path / "spare")]},
        "gpio": {"pin_factory": "mock", "reset_button": 17, "status_led": 27},
    })


def makers(kernel: FakeV4L2, *, picamera2: str = "picamera2") -> dict[str, CameraMaker]:
    return {**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel), "picamera2": PicameraMaker(module=picamera2)}


def test_on_a_pi_it_lists_the_sensor_modes_and_the_hardware_encoder(fake_picamera2: ModuleType,
                                                                     tmp_path: Path) -> None:
    from picamera2 import _fake

    _fake.install_camera()
    report = examine(config(tmp_path), source="vigil.yaml", makers=makers(FakeV4L2()))
    text = report.text()
    assert report.exit_code == EXIT_OK, text
    assert "config: vigil.yaml" in text
    assert "picamera2: found imx708 (/base/soc/i2c0mux/i2c@1/imx708@1a)" in text
    assert "sensor modes 1536x864@120.13, 2304x1296@56.03, 4608x2592@14.35" in text
    assert "v4l2: no /dev/video* device" in text
    assert "configured camera: 160x120@30, backend auto -> picamera2" in text
    assert "encoder: picamera2 H264Encoder on the hardware H.264 encoder (VC4)" in text
    assert "  camera: ok (picamera2 delivered a H.264 packet at 160x120@30)" in text
    assert f"  storage {tmp_path / 'rec'}: ok (primary, writable, " in text
    assert "  gpio: ok (pin factory MockFactory for button 17, LED 27)" in text


def test_on_a_pi_5_it_names_the_software_encoder(real_picamera2: RealPicamera2, tmp_path: Path) -> None:
    real_picamera2.install_camera("imx708")  # the genuine picamera2, as on a Pi 5
    report = examine(config(tmp_path, backend="picamera2"), makers=makers(FakeV4L2()))
    assert report.exit_code == EXIT_OK
    assert "LibavH264Encoder, software libx264 on the CPU (PISP" in report.text()
    # The Pi camera adapts with its own knobs, not "cannot adapt: pass-through".
    assert ("adaptive quality: on, 4 steps of picamera2's own knobs (bitrate x1 -> x0.5; lores "
            "sampling 4 -> 2 fps; sensor fps 30 -> 15; sensor fps 15 -> 10): a bit-rate step starts a "
            "new encoder and segment at a keyframe, a frame-rate step asks the sensor for fewer "
            "frames (FrameDurationLimits)") in report.text()


def test_an_impossible_pi_mode_is_a_problem_naming_the_modes(fake_picamera2: ModuleType,
                                                             tmp_path: Path) -> None:
    from picamera2 import _fake

    _fake.install_camera()
    report = examine(config(tmp_path, backend="picamera2", width=4096, height=3072),
                     makers=makers(FakeV4L2()))
    assert report.exit_code == EXIT_CANNOT_RECORD
    camera = next(v for v in report.verdicts if v.item == "camera")
    assert camera.line() == (
        "camera: problem: picamera2: no sensor mode of imx708 gives 4096x3072 at 30 fps; it offers "
        "1536x864@120.13, 2304x1296@56.03, 4608x2592@14.35 (width x height @ max fps); set "
        "camera.width, height and fps within one")


def test_with_no_camera_at_all_it_records_the_test_pattern(tmp_path: Path) -> None:
    kernel = FakeV4L2()
    kernel.add_device("/dev/video10", card="bcm2835-codec-decode", capture=False)
    report = examine(config(tmp_path), makers=makers(kernel, picamera2=ABSENT_PICAMERA2))
    text = report.text()
    assert report.exit_code == EXIT_OK, text
    assert f"picamera2: picamera2 is not installed (No module named '{ABSENT_PICAMERA2}')" in text
    assert "/dev/video10: bcm2835-codec-decode (fake-codec) is not a capture device" in text
    assert "backend auto -> synthetic" in text
    assert "encoder: libx264 preset ultrafast, crf 23" in text
    # 160x120 is under the default height floor (360): the ladder gives up crf and frame rate.
    assert "adaptive quality: on, 3 steps down to preset ultrafast crf 28, 10 fps, 160x120" in text
    assert "camera: ok (synthetic delivered a frame at 160x120@30; no Pi or V4L2 camera was found" in text


def test_a_v4l2_camera_shows_its_modes_and_the_pass_through(tmp_path: Path) -> None:
    kernel = FakeV4L2()
    kernel.add_device(formats={"h264": [(160, 120)], "mjpeg": [(640, 480), (160, 120)]})
    report = examine(config(tmp_path, backend="v4l2"), makers=makers(kernel, picamera2=ABSENT_PICAMERA2))
    text = report.text()
    assert report.exit_code == EXIT_OK, text
    assert "h264 160x120@30; mjpeg 640x480@30, 160x120@30" in text
    assert "encoder: pass-through: the camera's own H.264, muxed without re-encoding" in text
    assert "adaptive quality: cannot adapt: pass-through (v4l2 hands over its own H.264" in text
    # A UVC camera's frame interval can be set (V4L2_CAP_TIMEPERFRAME), no bit rate is offered,
    # and it lists no rate under 30 fps: nothing the ladder could step to.
    assert ("under load it drops rather than lowers quality); the camera offers frame interval "
            "(VIDIOC_S_PARM timeperframe), but nothing to step down to within "
            "recording.adaptive's floors (bitrate_floor_fraction 0.5, fps_floor 10: no frame rate "
            "it lists between 30 fps and that)") in text


def test_a_v4l2_h264_camera_shows_the_ladder_of_its_drivers_knobs_or_that_it_has_none(
        tmp_path: Path) -> None:
    """VIDIOC_QUERYCTRL, VIDIOC_G_CTRL and VIDIOC_G_PARM answered by the fake kernel from
    videodev2.h layouts of its own; no real /dev/video exists here, so no real driver is asked."""
    from tests.fakes.v4l2_device import (
        CID_MPEG_VIDEO_BITRATE,
        CID_MPEG_VIDEO_FORCE_KEY_FRAME,
        CTRL_FLAG_INACTIVE,
    )

    kernel = FakeV4L2()
    kernel.add_device(formats={"h264": [(160, 120)]}, rates=(30.0, 15.0, 10.0, 5.0),
                      controls={CID_MPEG_VIDEO_BITRATE: ("Video Bitrate", 25000, 25000000, 25000,
                                                         10000000, 0),
                                CID_MPEG_VIDEO_FORCE_KEY_FRAME: ("Force Key Frame", 0, 0, 0, 0, 0)})
    text = examine(config(tmp_path, backend="v4l2"),
                   makers=makers(kernel, picamera2=ABSENT_PICAMERA2)).text()
    # The ladder it will drive: half the bit rate, then the rates the driver lists down to
    # fps_floor (10; 5 is below it).
    assert ("adaptive quality: on, 3 steps of v4l2's own knobs (bitrate x1 -> x0.5; sensor fps "
            "30 -> 15; sensor fps 15 -> 10): a bit-rate step sets V4L2_CID_MPEG_VIDEO_BITRATE "
            "(now 10000000 bit/s) with VIDIOC_S_CTRL, a frame-rate step sets the frame interval "
            "with VIDIOC_S_PARM (a driver that refuses it while streaming, as uvcvideo does, is "
            "stopped and started again); each asks for a keyframe "
            "(V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME) and starts a new segment there") in text

    kernel = FakeV4L2()
    kernel.add_device(formats={"h264": [(160, 120)]}, timeperframe=False,
                      controls={CID_MPEG_VIDEO_BITRATE: ("Video Bitrate", 1, 2, 1, 1, CTRL_FLAG_INACTIVE)})
    report = examine(config(tmp_path, backend="v4l2"), makers=makers(kernel, picamera2=ABSENT_PICAMERA2))
    text = report.text()
    assert report.exit_code == EXIT_OK, text
    line = next(x for x in text.splitlines() if "adaptive quality:" in x)
    assert line.endswith("cannot adapt: pass-through (v4l2 hands over its own H.264; vigil only "
                         "muxes it, so under load it drops rather than lowers quality)"), line


def test_a_configured_backend_that_is_missing_fails(tmp_path: Path) -> None:
    report = examine(config(tmp_path, backend="picamera2"),
                     makers=makers(FakeV4L2(), picamera2=ABSENT_PICAMERA2))
    assert report.exit_code == EXIT_CANNOT_RECORD
    assert "camera: problem: picamera2: picamera2 is not importable" in report.text()
    assert "python3-picamera2" in report.text()


def test_a_configured_v4l2_device_that_is_not_there_fails(tmp_path: Path) -> None:
    report = examine(config(tmp_path, backend="v4l2", device="/dev/video7"),
                     makers=makers(FakeV4L2(), picamera2=ABSENT_PICAMERA2))
    assert report.exit_code == EXIT_CANNOT_RECORD
    assert "camera: problem: v4l2: /dev/video7 does not exist" in report.text()


def test_no_usable_storage_root_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = VigilConfig.model_validate({"camera": {"backend": "synthetic", "width": 160, "height": 120},
                                      "recording": {"root": str(blocker / "rec")}})
    report = examine(cfg, makers=makers(FakeV4L2(), picamera2=ABSENT_PICAMERA2))
    assert report.exit_code == EXIT_CANNOT_RECORD
    assert f"storage {blocker / 'rec'}: problem: primary: " in report.text()


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_the_cli_exits_1_when_the_configured_camera_cannot_be_used(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(f"camera:\n  backend: file\n  source: {tmp_path / 'missing.mp4'}\n"
                    f"recording:\n  root: {tmp_path / 'rec'}\n")
    done = vigil("doctor", "--config", str(path))
    assert done.returncode == 1, done.stderr
    assert f"config: {path}" in done.stdout
    assert "camera: problem: file: cannot open camera source" in done.stdout
    assert "Traceback" not in done.stderr


def test_the_cli_exits_78_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("camera:\n  input_format: h265\n")
    done = vigil("doctor", "--config", str(path))
    assert done.returncode == 78
    assert f"{path}:2: camera.input_format: 'h265' is not allowed; allowed values: auto, h264, " \
           "mjpeg, yuyv422" in done.stderr
