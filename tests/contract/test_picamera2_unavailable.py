"""A picamera2 that is installed but cannot load: auto falls back, doctor says why, run exits 78.

The fake in tests/fakes/broken_numpy raises ValueError("numpy.dtype size changed ...") at
import, as Raspberry Pi OS's python3-picamera2 does when the venv shadows the system numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import VigilConfig
from controller.doctor import EXIT_OK, examine
from hw.errors import BackendUnavailable
from hw.factory import DEFAULT_MAKERS, Hardware
from hw.picam import PicameraMaker
from tests.conftest import REPO
from tests.helpers import gaps, recorded_numbers
from tests.processes import stop_vigil, wait_for_segments
from tests.specs import camera_spec, recording_spec

BROKEN = REPO / "tests" / "fakes" / "broken_numpy"
DTYPE_MESSAGE = "ValueError: numpy.dtype size changed, may indicate binary incompatibility"
MODULES = ("picamera2", "simplejpeg")


@pytest.fixture
def broken_picamera2() -> Iterator[None]:
    """`import picamera2` raises the numpy ValueError while the test runs."""
    if any(name in sys.modules for name in MODULES):
        pytest.fail("a picamera2 module is already imported; the broken fake would not load")
    sys.path.insert(0, str(BROKEN))
    try:
        yield
    finally:
        sys.path.remove(str(BROKEN))
        for name in sys.modules.copy():
            if name.split(".", 1)[0] in MODULES:
                del sys.modules[name]


def env_with_broken_picamera2() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BROKEN), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def config_text(root: Path, backend: str) -> str:
    return (f"camera:\n  backend: {backend}\n  width: 160\n  height: 120\n  fps: 30\n"
            f"recording:\n  root: {root}\n  segment_seconds: 2\n  fragment_seconds: 0.5\n"
            "api:\n  enabled: false\n")


def test_the_probe_reports_the_library_message_instead_of_raising(broken_picamera2: None) -> None:
    result = PicameraMaker().probe(detail=True)
    assert not result.is_found
    assert result.failure.startswith(f"unavailable, because importing picamera2 raised {DTYPE_MESSAGE}")
    assert "deploy/install.sh, which keeps the system's numpy" in result.failure
    assert result.summary == f"picamera2 is {result.failure}"


def test_auto_falls_back_and_explicit_is_unavailable(broken_picamera2: None, tmp_path: Path) -> None:
    auto = Hardware(camera_spec(backend="auto"), recording_spec(root=tmp_path))
    assert auto.backend == "synthetic"
    assert DTYPE_MESSAGE in auto.backend_reason
    assert auto.unavailable == ""

    explicit = Hardware(camera_spec(backend="picamera2"), recording_spec(root=tmp_path))
    assert DTYPE_MESSAGE in explicit.unavailable
    with pytest.raises(BackendUnavailable, match=r"numpy\.dtype size changed"):
        explicit.make_camera()


def test_doctor_gives_the_reason_as_a_verdict_and_records_the_test_pattern(broken_picamera2: None,
                                                                          tmp_path: Path) -> None:
    cfg = VigilConfig.model_validate({"camera": {"width": 160, "height": 120},
                                      "recording": {"root": str(tmp_path / "rec")},
                                      "gpio": {"enabled": False}})
    report = examine(cfg, makers=dict(DEFAULT_MAKERS))
    text = report.text()
    assert report.exit_code == EXIT_OK, text
    verdict = next(v for v in report.verdicts if v.item == "picamera2")
    assert verdict.line().startswith(f"picamera2: problem: unavailable, because importing picamera2 "
                                     f"raised {DTYPE_MESSAGE}")
    assert "camera: ok (synthetic delivered a frame at 160x120@30" in text


def test_vigil_doctor_prints_the_verdict_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(config_text(tmp_path / "rec", "auto"))
    done = subprocess.run([sys.executable, "-m", "controller.cli", "doctor", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env_with_broken_picamera2())
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"  picamera2: problem: unavailable, because importing picamera2 raised {DTYPE_MESSAGE}" \
        in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_vigil_run_with_auto_records_the_synthetic_camera_and_logs_why(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    config = tmp_path / "vigil.yaml"
    config.write_text(config_text(root, "auto"))
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_with_broken_picamera2())
    try:
        wait_for_segments(proc, root, 2, 60)
    finally:
        output = stop_vigil(proc)
    assert proc.returncode == 0, output
    assert output.count(f"camera backend picamera2 is unavailable, because importing picamera2 raised "
                        f"{DTYPE_MESSAGE}") == 1, output
    assert "backend=synthetic" in output
    assert "Traceback" not in output
    numbers = recorded_numbers(root)
    assert numbers[0] == 0 and gaps(numbers) == []


def test_vigil_run_with_picamera2_configured_exits_78_once_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(config_text(tmp_path / "rec", "picamera2"))
    done = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env_with_broken_picamera2())
    output = done.stdout + done.stderr
    # 78 is EX_CONFIG: deploy/vigil.service's RestartPreventExitStatus=78 does not restart it.
    assert done.returncode == 78, output
    assert output.count("camera.backend picamera2 cannot be used: picamera2 is unavailable, because "
                        f"importing picamera2 raised {DTYPE_MESSAGE}") == 1, output
    assert "Traceback" not in output
    assert not (tmp_path / "rec").exists() or not list((tmp_path / "rec").rglob("*.mp4*"))
