"""`vigil run` as a user runs it: a real process, real segments, SIGTERM at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import gaps, recorded_numbers, segments

RUN_SECONDS = 8.0


def write_config(path: Path, root: Path, **camera: object) -> Path:
    cam = {"backend": "synthetic", "width": 640, "height": 480, "fps": 30, **camera}
    lines = ["camera:"] + [f"  {k}: {v}" for k, v in cam.items()]
    # The signing key in the test's own folder, never the machine's /var/lib/vigil.
    lines += ["integrity:", f"  key_file: {path.parent / 'integrity.key'}"]
    lines += ["recording:", f"  root: {root}", "  segment_seconds: 2", "  fragment_seconds: 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_first_segment(root: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(root.rglob("*.mp4*")):
            return
        assert proc.poll() is None, "vigil exited before recording"
        time.sleep(0.05)
    raise AssertionError("no segment appeared")


def test_run_records_contiguous_frames_and_closes_cleanly_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    config = write_config(tmp_path / "vigil.yaml", root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_first_segment(root, proc, timeout=20)
        time.sleep(RUN_SECONDS)  # recording for a while is the point of this test
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)  # a hang guard: how fast it stops is not timed here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output

    assert not list(root.rglob("*.partial")), "a .partial was left behind"
    closed = segments(root)
    assert len(closed) >= 4, [p.name for p in closed]
    for path in closed:
        # ROOT/YYYY-MM-DD/HH/YYYYMMDDTHHMMSSZ.mp4
        assert path.parent.parent.parent == root
        assert path.name.startswith(path.parent.parent.name.replace("-", ""))
    numbers = recorded_numbers(root)
    assert numbers[0] == 0
    assert gaps(numbers) == []
    assert len(numbers) >= RUN_SECONDS * 30 * 0.9
    assert f"root={root}" in output  # the log says where the footage goes
    assert "segment closed path=" in output


def test_run_with_bad_config_exits_78_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text("camera:\n  width: 641\n")
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 78
    assert f"{config}:2: camera.width: 641" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_run_picks_up_config_from_environment(tmp_path: Path) -> None:
    root = tmp_path / "env-recordings"
    config = write_config(tmp_path / "env.yaml", root, width=160, height=120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run"],
        env={**os.environ, "VIGIL_CONFIG": str(config)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_first_segment(root, proc, timeout=20)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert f"config={config}" in output
