"""`GET /history` after a simulated night: a real controller recording the synthetic camera,
a real camera fault and its recovery, read back through the real API over a socket.

Driving the real controller with a fake clock for hours is impractical (its loop, the camera
and the encoder run on real time), so this drives the history with real snapshots taken from
a real controller run, and a fake wall clock for the minute boundaries: the test moves the
clock to a minute, lets the real recorder do what that minute holds (record, lose the camera,
try to recover, record again), then moves the clock past the minute's end and has the history
look at the snapshot. The alert log runs on the same fake clock, so an alert lands in the
minute it was raised in. The sum of the minutes' frames is checked against the frame numbers
decoded from the footage on disk.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.core.alerts import AlertLog
from controller.core.controller import Controller
from controller.core.ledger import DEFAULT_BUDGETS, ErrorLedger
from controller.surfaces.api import ApiServer, create_app
from controller.surfaces.history import HistoryRecorder, read_history
from hw.factory import Hardware
from states.recovering import RecoveryPolicy
from tests.e2e.conftest import HANDS_OFF_STORAGE, RunningController
from tests.helpers import gaps, recorded_numbers
from tests.processes import free_port, stop_vigil, wait_for_segments
from tests.specs import camera_spec, recording_spec

NIGHT = 1_796_166_000.0  # 2026-12-01T23:00:00Z
WAIT_SECONDS = 20.0
FRAMES_A_MINUTE = 30  # each simulated minute records at least this many real frames
# Recovery keeps trying (never critical) while the camera is away for as long as the test says.
PATIENT_POLICY = RecoveryPolicy(max_attempts=10_000, backoff_seconds=0.2, backoff_max_seconds=0.5,
                                critical_probe_seconds=0.5)
LONG_AWAY_SECONDS = 600.0  # the camera comes back when the test says so, not on its own


class NightClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, minute: int, second: float) -> None:
        self.now = NIGHT + minute * 60 + second


def get(server: ApiServer, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class Night:
    def __init__(self, controller: Controller, running: RunningController, recorder: HistoryRecorder,
                 server: ApiServer, clock: NightClock, root: Path) -> None:
        self.controller, self.running, self.recorder = controller, running, recorder
        self.server, self.clock, self.root = server, clock, root

    def record(self, frames: int = FRAMES_A_MINUTE) -> None:
        c = self.controller
        start = c.snapshot.totals.frames_recorded
        assert c.wait_until(lambda: c.snapshot.totals.frames_recorded >= start + frames, WAIT_SECONDS)

    def end_minute(self, minute: int) -> None:
        """The clock passes the end of `minute`; the history's look closes it."""
        self.clock.at(minute + 1, 0.5)
        self.recorder.observe()


@pytest.fixture
def night(tmp_path: Path) -> Iterator[Night]:
    clock = NightClock(NIGHT)
    root = tmp_path / "rec"
    camera = camera_spec(backend="synthetic", width=160, height=120, fps=30, read_timeout_seconds=1.0)
    recording = recording_spec(root=root, segment_seconds=2.0, fragment_seconds=0.5)
    controller = Controller(Hardware(camera, recording), policy=PATIENT_POLICY, autostart=True,
                            ledger=ErrorLedger(DEFAULT_BUDGETS), storage=HANDS_OFF_STORAGE,
                            alerts=AlertLog(clock=clock))
    # poll_seconds: the test makes every look itself, at the minutes it chooses.
    recorder = HistoryRecorder(controller, tmp_path / "state" / "history.json.gz", clock=clock,
                               poll_seconds=3600)
    recorder.start()
    assert recorder.wait_for_load(WAIT_SECONDS)
    running = RunningController(controller)
    server = ApiServer(create_app(controller, token_file=None, history=recorder), "127.0.0.1", 0)
    clock.at(0, 0.5)
    recorder.observe()  # the first look: minute 0 begins
    running.thread.start()
    try:
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        server.start()
        yield Night(controller, running, recorder, server, clock, root)
    finally:
        server.stop()
        running.stop()
        recorder.stop()
        controller.bus.close()


def test_history_after_a_night_holds_the_fault_and_its_recovery_at_their_minutes(night: Night) -> None:
    c, faults = night.controller, night.controller.unit.hardware.faults
    # Minutes 0 and 1: recording.
    night.record()
    night.end_minute(0)
    night.clock.at(1, 10)
    night.record()
    night.end_minute(1)
    # Minute 2, 20 s in: the camera is unplugged; recovery starts and keeps failing.
    night.clock.at(2, 20)
    faults.inject_disconnect(LONG_AWAY_SECONDS)
    assert c.wait_for_state("recovering", WAIT_SECONDS), c.transitions
    night.clock.at(2, 30)
    night.recorder.observe()
    night.end_minute(2)
    # Minute 3: still away; the health falls to the recovering state's cap.
    night.clock.at(3, 10)
    assert c.wait_until(lambda: c.snapshot.health is not None and c.snapshot.health.score <= 40, WAIT_SECONDS)
    night.end_minute(3)
    assert c.state == "recovering"
    # Minute 4, 15 s in: the camera is back; recording resumes.
    night.clock.at(4, 15)
    faults.inject_disconnect(0.0)  # away until now: the next open succeeds
    assert c.wait_for_state("recording", WAIT_SECONDS), c.transitions
    night.record()
    night.end_minute(4)
    # Minute 5: recording.
    night.clock.at(5, 5)
    night.record()
    night.end_minute(5)

    status, body = get(night.server, "/history?hours=1")
    assert status == 200, body
    assert body["interval_seconds"] == 60 and body["now"] == NIGHT + 6 * 60 + 0.5
    samples = {round((s["t"] - NIGHT) / 60): s for s in body["samples"]}
    assert sorted(samples) == [0, 1, 2, 3, 4, 5]
    state = {m: s["state"] for m, s in samples.items()}
    assert state == {0: "recording", 1: "recording", 2: "recovering", 3: "recovering", 4: "recording",
                     5: "recording"}
    assert samples[2]["states"] == ["recording", "recovering"]
    assert samples[4]["states"] == ["recovering", "recording"]
    for m in (0, 1, 4, 5):
        assert samples[m]["frames"] >= FRAMES_A_MINUTE, (m, samples[m])
    assert samples[3]["frames"] == 0  # no camera, no frames
    assert samples[3]["health"] is not None and samples[3]["health"] <= 40
    assert samples[3]["fps_configured"] == 30.0
    # The error that broke recording is counted in the minute it happened, none before it.
    assert samples[0]["errors"] == {} and samples[1]["errors"] == {}
    assert samples[2]["errors"].get("camera_lost", 0) >= 1, samples[2]
    assert samples[5]["errors"] == {}
    # The alerts, at the minutes they were raised in.
    marks = [(a["name"], int((a["t"] - NIGHT) // 60)) for a in body["alerts"]]
    assert ("fault", 2) in marks and ("recovery", 4) in marks, marks
    fault = next(a for a in body["alerts"] if a["name"] == "fault")
    assert fault["severity"] == "critical" and "recording -> recovering" in fault["message"]
    assert all(name not in ("fault", "recovery") for name, m in marks if m not in (2, 4)), marks

    status, problem = get(night.server, "/history?hours=0")
    assert status == 422 and problem["detail"][0]["loc"] == ["query", "hours"]
    status, problem = get(night.server, "/history?hours=twelve")
    assert status == 422 and problem["detail"][0]["loc"] == ["query", "hours"]

    # Every frame counted in the history is a frame in the footage, and none is missing.
    night.running.stop()
    night.clock.at(6, 20)
    night.recorder.stop()  # closes minute 6 (the shutdown) and writes the file
    counted = sum(s.frames for s in night.recorder.ring.samples())
    numbers = recorded_numbers(night.root)
    assert gaps(numbers) == []  # a disconnected camera produces no frames: none can be lost
    assert counted == len(numbers) == c.snapshot.totals.frames_recorded
    stored = read_history(night.recorder.path, night.clock.now)  # type: ignore[arg-type]
    assert [s.t for s in stored.samples()] == [NIGHT + m * 60 for m in range(7)]


def test_vigil_run_keeps_its_history_across_a_restart(tmp_path: Path) -> None:
    """The real daemon, twice, with $STATE_DIRECTORY as systemd sets it: the minute the first
    run recorded (written when SIGTERM stopped it) is served by the second."""
    state, root = tmp_path / "state", tmp_path / "rec"
    port = free_port()
    config = tmp_path / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 15\n"
        f"recording:\n  root: {root}\n  segment_seconds: 2\n  fragment_seconds: 1\n"
        f"api:\n  listen: 127.0.0.1:{port}\n")
    env = {**os.environ, "STATE_DIRECTORY": str(state)}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    proc = start()
    try:
        wait_for_segments(proc, root, 1, timeout=60)
    finally:
        log = stop_vigil(proc)
    assert proc.returncode == 0, log
    assert (state / "history.json.gz").is_file(), log
    proc = start()
    try:
        body = wait_for_samples(port, proc)
    finally:
        log = stop_vigil(proc)
    assert proc.returncode == 0, log
    kept = body["samples"][0]
    assert kept["frames"] >= 30 and kept["fps_configured"] == 15.0 and "recording" in kept["states"], body
    assert "history: 1 minutes" in log or "history: 2 minutes" in log, log


def wait_for_samples(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """GET /history until it holds a sample; fails if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"/history held no sample within {timeout:g} s"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/history")
            response = conn.getresponse()
            if response.status == 200:
                body = dict(json.loads(response.read()))
                if body["samples"]:
                    return body
        except OSError:
            pass  # not listening yet
        finally:
            conn.close()
        time.sleep(0.2)
