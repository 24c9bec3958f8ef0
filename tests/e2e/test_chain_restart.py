"""A restart continues the fragment chain: `vigil run`, stopped (SIGTERM or kill -9), started
again with autostart on; the new run's first manifest names the link it continues from."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.cli import main
from controller.verify import verify
from hw.footage import list_footage
from hw.integrity import last_link, read_manifest
from tests.e2e.test_run import write_config
from tests.helpers import segments

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60.0


def _run(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _started_since(root: Path, since: float) -> list[Path]:
    """Closed segments whose manifest says their first frame is at or after `since` (UTC seconds),
    oldest first. Not by name: a segment named for the second of a restart may be the one the
    killed run had just opened (removed by recovery if it held no fragment) or the new run's."""
    return [p for p in segments(root)
            if (m := read_manifest(p)) is not None and float(m["start"]) >= since]


def _wait_for_segments(root: Path, proc: subprocess.Popen[str], count: int, since: float) -> None:
    """Until `count` closed segments started since `since` have manifests (or the deadline)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if len(_started_since(root, since)) >= count:
            return
        assert proc.poll() is None, "vigil exited while recording"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} new closed segments appeared")


def _stop(proc: subprocess.Popen[str], how: signal.Signals) -> str:
    proc.send_signal(how)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == (0 if how == signal.SIGTERM else -signal.SIGKILL), out
    return out


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restart_continues_the_chain_from_the_last_link(tmp_path: Path, how: signal.Signals) -> None:
    root = tmp_path / "rec"
    config = write_config(tmp_path / "vigil.yaml", root, width=320, height=240)
    first = _run(config)
    try:
        _wait_for_segments(root, first, 2, 0.0)
    finally:
        if first.poll() is None:
            _stop(first, how)
    # What the first run left: closed segments, and after a kill -9 perhaps one .partial that
    # start-up recovery closes (its manifest rebuilt) before the new chain reads its head.
    relaunched = time.time()
    second = _run(config)  # autostart is on by default
    try:
        _wait_for_segments(root, second, 2, relaunched)
    finally:
        out = _stop(second, signal.SIGTERM) if second.poll() is None else ""
    assert not list(root.rglob("*.partial")), out

    new = _started_since(root, relaunched)
    old = [item.path for item in list_footage(root) if item.path not in new]
    old_manifests = [m for p in old if (m := read_manifest(p)) is not None]
    assert old_manifests and len(new) >= 2, (old, new)
    newest_old = max(old_manifests, key=lambda m: float(m["end"]))
    expected = last_link(newest_old)
    assert expected is not None
    first_new = read_manifest(new[0])
    assert first_new is not None
    assert first_new["continues_from"] == expected.hex(), out
    assert first_new["prev_link"] == expected.hex()
    # Only the first manifest after the start names it; the rest chain on as usual.
    assert all((read_manifest(p) or {}).get("continues_from") is None for p in new[1:])
    report = verify([root])
    assert report.is_ok, [f.describe() for f in report.findings]
    assert not any(f.kind == "break" for f in report.findings)
    assert main(["verify", str(root)]) == 0
