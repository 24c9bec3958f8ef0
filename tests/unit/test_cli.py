"""The `vigil` command line: check-config's exit codes and messages, diagram, help."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
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


# --- bad input on the command line: a usage error or exit 78, at once, never a traceback -------
# Each subprocess has a timeout: before the fix a FIFO or /dev/zero made vigil block forever.


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["fifo", "/dev/zero", "/dev/urandom"])
def test_check_config_on_a_fifo_or_device_exits_78_at_once(fifo: Path, name: str) -> None:
    path = str(fifo) if name == "fifo" else name
    done = vigil("check-config", path)
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith(f"{path}: is a ")
    assert "not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1", "is not a URL: Invalid IPv6 URL"),
        ("not a url", "may hold only printable ASCII characters"),
        ("ftp://127.0.0.1:8080", "must start with http:// or https://"),
        ("http://127.0.0.1:99999", "is not a URL: Port out of range"),
        ("http://127.0.0.1:port", "is not a URL: Port could not be cast"),
        ("http://", "names no host"),
        ("http://127.0.0.1:8080/?x=1", "must not have a query"),
        ("http://h\u00e9:8080", "may hold only printable ASCII characters"),
    ],
)
def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str, reason: str) -> None:
    for command in ("status", "reset"):
        with pytest.raises(SystemExit) as caught:
            main([command, "--url", url])
        assert caught.value.code == 2
        assert f"vigil {command}: error: argument --url: {url!r} {reason}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("fifo", "is a named pipe (FIFO), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        ("/dev/urandom", "is a character device, not a regular file"),
        ("directory", "is a directory"),
    ],
)
@pytest.mark.timeout(30)  # in-process: a read that blocks on the FIFO fails here, not hangs
def test_a_token_file_that_is_no_regular_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], fifo: Path,
                                                              tmp_path: Path, name: str, reason: str) -> None:
    named = {"fifo": str(fifo), "missing": str(tmp_path / "missing"), "directory": str(tmp_path)}
    path = named.get(name, name)
    with pytest.raises(SystemExit) as caught:
        main(["reset", "--url", "http://127.0.0.1:9", "--token-file", path])
    assert caught.value.code == 2
    assert (f"vigil reset: error: argument --token-file: cannot read the API token from {path}: {reason}"
            in capsys.readouterr().err)


def test_a_missing_token_file_is_reported_when_the_token_is_read(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert main(["reset", "--url", "http://127.0.0.1:9", "--token-file", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"vigil reset: cannot read the API token from {missing}: No such file or directory\n")


def test_a_token_file_named_by_the_config_is_read_only_when_regular(fifo: Path, tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(f"api:\n  listen: 127.0.0.1:9\n  token_file: {fifo}\n")
    done = vigil("reset", "--config", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"vigil reset: cannot read the API token from {fifo}: "
                           f"{fifo}: is a named pipe (FIFO), not a regular file\n")


def test_a_reply_that_is_not_http_is_unreachable_not_a_traceback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        done = vigil("status", "--url", f"http://127.0.0.1:{port}")
        thread.join(timeout=10)
    assert done.returncode == 4, done.stderr  # LSB: status unknown
    assert done.stderr.startswith(f"vigil status: no valid HTTP answer from http://127.0.0.1:{port}")
    assert "Traceback" not in done.stderr
