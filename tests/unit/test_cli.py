"""The `vigil` command line: check-config's exit codes and messages, diagram, help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main
from states.machine import mermaid

REPO = Path(__file__).resolve().parents[2]


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


BAD_CONFIGS = {
    "syntax error": ("camera:\n  width: [640\n", 3, ""),
    "unknown key": ("camera:\n  widht: 640\n", 2, "camera.widht"),
    "wrong type": ("camera:\n  fps: fast\n", 2, "camera.fps"),
    "out of range": ("recording:\n  segment_seconds: 0\n", 2, "recording.segment_seconds"),
    "width not supported": ("camera:\n  backend: synthetic\n  width: 641\n", 3, "camera.width"),
    "value not allowed": ("camera:\n  backend: webcam\n", 2, "camera.backend"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_check_config_names_file_line_and_key(tmp_path: Path, kind: str) -> None:
    text, line, key = BAD_CONFIGS[kind]
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    done = vigil("check-config", str(path))
    assert done.returncode == 78
    assert re.search(rf"^{re.escape(str(path))}:{line}: {re.escape(key)}", done.stderr, re.M), done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_valid_file_prints_one_line_summary(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("camera:\n  backend: synthetic\n  width: 640\n  height: 480\n")
    done = vigil("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert "valid" in done.stdout and "640x480" in done.stdout


def test_check_config_takes_config_option_too(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("camera:\n  width: 3\n")
    done = vigil("check-config", "--config", str(path))
    assert done.returncode == 78
    assert f"{path}:2: camera.width" in done.stderr


def test_diagram_prints_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    assert capsys.readouterr().out == mermaid()


def test_unknown_command_is_a_usage_error() -> None:
    done = vigil("frobnicate")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
