"""The controller loop when the process has no file descriptor left (issue 19, class 1).

A real process (tests/e2e/emfile_harness.py: `vigil run`'s controller recording the
synthetic camera under RLIMIT_NOFILE 256) takes every free descriptor for a few seconds,
as a flood of clients would, then gives them back. The loop must not die: the health
sampler's /proc reads, the disk monitor and the guards' /proc/self/fd listing fail, each
is logged once (and once more when it works again), and the process exits 0 on request.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from tests.conftest import REPO

NOFILE = 256


def _limit() -> None:  # in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture(scope="module")
def exhausted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str]:
    base = tmp_path_factory.mktemp("emfile")
    config = base / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 30\n"
        f"recording:\n  root: {base / 'rec'}\n  segment_seconds: 1\n  fragment_seconds: 0.5\n"
        "  merge: 'off'\nstorage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0\n"
        "api:\n  enabled: false\ngpio:\n  enabled: false\n"
    )
    done = subprocess.run([sys.executable, str(REPO / "tests/e2e/emfile_harness.py"), str(config)],
                          capture_output=True, text=True, timeout=90, preexec_fn=_limit, cwd=REPO)
    return done.returncode, done.stdout + done.stderr


def _count(output: str, text: str) -> int:
    return output.count(text)


def test_the_loop_survives_running_out_of_descriptors(exhausted_run: tuple[int, str]) -> None:
    code, output = exhausted_run
    assert "exhausted after" in output, output[-3000:]
    assert "released" in output, output[-3000:]
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    failures = int(output.split("health read failures ", 1)[1].split()[0])
    assert failures >= 1, "the health sampler never met EMFILE: the test exhausted nothing"
    # Logged once per run of failures, not once per failed read.
    warned = _count(output, "health: cannot read this process's memory use")
    assert 1 <= warned <= _count(output, "health: memory use readable again") + 1
    listing = _count(output, "cannot list /proc/self/fd")
    assert listing <= _count(output, "/proc/self/fd readable again") + 1
