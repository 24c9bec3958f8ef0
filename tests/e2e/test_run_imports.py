"""A real `vigil run` imports only what its configured features need (issue 15).

The daemon runs in a child interpreter exactly as the entry point runs it (controller.cli's
main with `run --config`); an atexit hook in that child writes its module table when it
exits after SIGTERM, so everything it imported over the whole run counts, the API's
late import included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.processes import free_port, stop_vigil

CHILD = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[2], "w").write(json.dumps(sorted(sys.modules))))
from controller.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""
# Never needed by the file camera, nor by features this config leaves off.
NEVER = ("hw.picam", "hw.v4l2.probe", "hw.v4l2.camera", "numpy", "paho", "boto3", "botocore",
         "controller.surfaces.mqtt", "controller.surfaces.upload", "gpiozero")


def write_config(path: Path, root: Path, port: int, *, integrity: bool) -> Path:
    path.write_text("\n".join([
        "camera:",
        "  backend: file",
        "  source: 'lavfi:testsrc2=size=320x240:rate=30'",
        "  width: 320",
        "  height: 240",
        "  fps: 30",
        "recording:",
        f"  root: {root}",
        "  fragment_seconds: 0.5",
        "integrity:",
        f"  enabled: {'true' if integrity else 'false'}",
        f"  key_file: {path.parent / 'integrity.key'}",
        "api:",
        f"  listen: 127.0.0.1:{port}",
        "",
    ]))
    return path


def wait_until_recording_and_serving(proc: subprocess.Popen[str], url: str, timeout: float) -> None:
    """Until /health answers 200 (recording, with the API up); fails if vigil exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 within {timeout:g} s"
        time.sleep(0.1)


@pytest.mark.parametrize("integrity", [False, True], ids=["integrity-off", "integrity-on"])
def test_run_loads_the_modules_of_configured_features_only(tmp_path: Path, integrity: bool) -> None:
    port = free_port()
    config = write_config(tmp_path / "vigil.yaml", tmp_path / "recordings", port, integrity=integrity)
    table = tmp_path / "modules.json"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(config), str(table)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_recording_and_serving(proc, f"http://127.0.0.1:{port}/health", timeout=60)
    finally:
        output = stop_vigil(proc)
    assert proc.returncode == 0, output
    modules = set(json.loads(table.read_text()))
    tops = {name.split(".")[0] for name in modules}
    # The check sees what the daemon really ran: the recorder, and the API imported late.
    assert {"av", "fastapi", "uvicorn"} <= tops
    assert "controller.surfaces.api" in modules
    assert not {name for name in NEVER if name in modules or name in tops}, output
    # Signing needs cryptography; a unit that does not sign never loads it.
    assert ("cryptography" in tops) is integrity
