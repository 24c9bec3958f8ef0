"""vigil installed beside Debian 12's own Python and numpy, the way deploy/install.sh does it on a Pi.

The closest this machine gets to Raspberry Pi OS Bookworm (which is Debian 12): /usr/bin/python3
(3.11), apt's python3-numpy (1.24.2) and python3-h5py, compiled against that numpy's C API
as Raspberry Pi OS compiles simplejpeg for picamera2. install.sh builds the venv with
--system-site-packages; afterwards the canary must still import, numpy must be the system's,
and the installed vigil must record the synthetic camera and run doctor. tools/system-deps.sh
(make test) installs the apt packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.test_systemd import PACKAGE_PARTS, scratch_root
from tests.helpers import gaps, recorded_numbers
from tests.processes import stop_vigil, wait_for_segments

SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_SITE = "/usr/lib/python3/dist-packages"
CANARY = "h5py"
APT_PACKAGES = "python3 python3-venv python3-numpy python3-h5py"
WAIT_SECONDS = 60.0


def system_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", code], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def debian_python() -> str:
    """The system numpy's version; fails, naming the packages, when Debian's Python lacks them."""
    if not SYSTEM_PYTHON.exists() or not Path(SYSTEM_SITE).is_dir():
        pytest.skip(f"no Debian system Python here ({SYSTEM_PYTHON} with {SYSTEM_SITE})")
    found = system_python(f"import numpy, {CANARY}, venv; print(numpy.__version__)")
    if found.returncode != 0:
        pytest.fail(f"Debian's Python lacks its packages ({found.stderr.strip().splitlines()[-1]}): "
                    f"`apt-get install -y {APT_PACKAGES}` (make test's tools/system-deps.sh does)")
    return found.stdout.strip()


@pytest.fixture(scope="module")
def installed(debian_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The venv deploy/install.sh made from /usr/bin/python3, in a scratch root."""
    with tempfile.TemporaryDirectory(prefix="vigil-src-") as name:
        src = Path(name)
        for part in PACKAGE_PARTS:
            if (REPO / part).is_dir():
                shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / part, src / part)
        root = scratch_root(tmp_path_factory.mktemp("debian") / "root")
        done = subprocess.run(["sh", str(src / "deploy" / "install.sh"), "--destdir", str(root),
                               "--source", str(src), "--python", str(SYSTEM_PYTHON), "--no-systemctl"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"keeping the system's numpy {debian_python}" in done.stdout
        yield root / "opt" / "vigil" / "venv"


def venv_python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_the_venv_uses_the_system_numpy_and_the_canary_still_works(installed: Path,
                                                                   debian_python: str) -> None:
    where = venv_python(installed, "import numpy; print(numpy.__version__, numpy.__file__)")
    assert where.returncode == 0, where.stderr
    version, path = where.stdout.split()
    assert version == debian_python
    assert path.startswith(SYSTEM_SITE + "/"), path
    # The canary goes through numpy's C API both ways: an array into HDF5 and back.
    canary = venv_python(installed, f"""
import io, numpy, {CANARY}
buffer = io.BytesIO()
with {CANARY}.File(buffer, "w") as f:
    f["frames"] = numpy.arange(12, dtype=numpy.uint16).reshape(3, 4)
with {CANARY}.File(buffer, "r") as f:
    back = f["frames"][...]
assert back.dtype == numpy.uint16 and back.sum() == 66, back
print({CANARY}.__file__)
""")
    assert canary.returncode == 0, canary.stderr
    assert canary.stdout.startswith(SYSTEM_SITE + "/")
    # vigil itself and its PyAV (from the lock: Debian's python3-av 10 is too old) import there too.
    vigil = venv_python(installed, "import av, controller.daemon; print(av.__version__)")
    assert vigil.returncode == 0, vigil.stderr


def test_the_unit_gets_none_of_the_test_only_picamera2_packages(installed: Path) -> None:
    """constraints.txt pins the genuine picamera2 the tests run; the installer must not install it.

    On a unit apt's python3-picamera2 (visible through the system site packages) is the one
    vigil uses; a pip copy in the venv would shadow it.
    """
    wanted = [line.split("==")[0].split("#")[0].strip().lower()
              for line in (REPO / "tests" / "requirements-picamera2.txt").read_text().splitlines()]
    wanted = [name for name in wanted if name]
    assert "picamera2" in wanted
    listed = venv_python(installed, "import importlib.metadata as m, sys; print('\\n'.join("
                                    "d.metadata['Name'].lower() for d in m.distributions("
                                    "path=[p for p in sys.path if p.startswith(sys.prefix)])))")
    assert listed.returncode == 0, listed.stderr
    in_venv = set(listed.stdout.split())
    assert "vigil" in in_venv  # the listing does see what the installer put there
    assert in_venv.isdisjoint(wanted), sorted(in_venv & set(wanted))


def test_the_installed_vigil_records_the_synthetic_camera_and_doctor_runs(installed: Path,
                                                                          tmp_path: Path) -> None:
    vigil = installed / "bin" / "vigil"
    root = tmp_path / "rec"
    config = tmp_path / "vigil.yaml"
    config.write_text("camera:\n  width: 160\n  height: 120\n  fps: 30\n"
                      f"recording:\n  root: {root}\n  segment_seconds: 1\n  fragment_seconds: 0.5\n"
                      "api:\n  enabled: false\ngpio:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    doctor = subprocess.run([str(vigil), "doctor", "--config", str(config)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "camera: ok (synthetic delivered a frame at 160x120@30" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr

    proc = subprocess.Popen([str(vigil), "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        wait_for_segments(proc, root, 3, WAIT_SECONDS)
    finally:
        output = stop_vigil(proc)
    assert proc.returncode == 0, output
    numbers = recorded_numbers(root)
    assert numbers[0] == 0 and gaps(numbers) == [] and len(numbers) >= 60, numbers[:5]


def test_the_canary_catches_a_shadowed_numpy(tmp_path: Path, debian_python: str) -> None:
    # What install.sh prevents, done on purpose in a copy of its venv: the lock's numpy 2 over
    # the system's. The canary must then fail, or the check above would prove nothing.
    lock = next(line for line in (REPO / "constraints.txt").read_text().splitlines()
                if line.startswith("numpy=="))
    if lock == f"numpy=={debian_python}":
        pytest.skip("constraints.txt pins the system's own numpy: nothing would shadow it")
    shadowed = tmp_path / "shadowed"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(shadowed)], check=True,
                   timeout=120)
    subprocess.run([str(shadowed / "bin" / "pip"), "install", "--quiet", lock], check=True, timeout=300)
    broken = venv_python(shadowed, f"import {CANARY}")
    assert broken.returncode != 0
    # The same error as picamera2 on a Pi with a shadowed numpy (raspberrypi/picamera2 #1211).
    assert "ValueError: numpy.dtype size changed" in broken.stderr, broken.stderr
