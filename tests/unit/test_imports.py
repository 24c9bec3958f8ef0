"""A process imports only what its command and configured features need (issue 15).

Each check runs in a fresh interpreter, so what the test process itself has imported does
not count: the module table is read at the end of the real work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("av", "numpy", "fastapi", "pydantic", "uvicorn", "starlette", "yaml", "loguru", "psutil",
         "transitions", "paho", "boto3", "gpiozero", "cryptography")


def imported_after(code: str, tmp_path: Path) -> dict[str, object]:
    """Run `code` in a fresh interpreter; it leaves `result` (a dict); `modules` is added."""
    script = (code + "\nimport json, sys\n"
              "result['modules'] = sorted({m.split('.')[0] for m in sys.modules})\n"
              "print(json.dumps(result))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                            "STATE_DIRECTORY": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_help_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    result = imported_after(
        "import contextlib, io\n"
        "from controller.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "result = {'help': out.getvalue()}\n", tmp_path)
    assert "usage: vigil" in str(result["help"])
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_recording_the_file_camera_with_the_api_loaded_needs_no_numpy_mqtt_or_upload(tmp_path: Path) -> None:
    # The file camera hands the decoder's frames straight to the encoder: no array anywhere,
    # so numpy stays out (15 MB of RSS), and MQTT and boto3 are not configured.
    result = imported_after(
        "import threading, time\n"
        "from pathlib import Path\n"
        "import controller.daemon, controller.surfaces.api\n"
        "from hw.factory import Hardware\n"
        "from tests.specs import camera_spec, recording_spec\n"
        "root = Path('footage')\n"
        "hardware = Hardware(camera_spec(backend='file', width=160, height=120, fps=30, pace=False,\n"
        "                                source='lavfi:testsrc2=size=320x240:rate=30', frozen_seconds=1.0),\n"
        "                    recording_spec(root=root, segment_seconds=60.0, fragment_seconds=0.5))\n"
        "errors = []\n"
        "camera = hardware.make_camera()\n"
        "camera.open()\n"
        "pipeline = hardware.make_pipeline(camera, root, lambda c, r: errors.append(c))\n"
        "pipeline.start()\n"
        "deadline = time.monotonic() + 60\n"
        "while pipeline.stats.frames_recorded < 45 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "pipeline.stop()\n"
        "result = {'recorded': pipeline.stats.frames_recorded, 'errors': errors,\n"
        "          'files': [str(p) for p in root.rglob('*.mp4')]}\n", tmp_path)
    assert int(result["recorded"]) >= 45  # type: ignore[call-overload]
    assert result["errors"] == [] and len(result["files"]) == 1  # type: ignore[arg-type]
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert {"av", "fastapi"} <= modules  # the recorder and the API are really there
    assert not modules & {"numpy", "paho", "boto3", "gpiozero"}, sorted(modules & {"numpy", "paho", "boto3"})
