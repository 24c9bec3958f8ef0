"""A flapping camera, for real: it fails again right after every recovery (issue 19, class 5).

The synthetic camera's `flap` fault makes every camera instance deliver a few frames and then
raise CameraLost. Before the stable-time rule every one-frame recording counted as a recovery:
the attempt counter and backoff reset each time, four one-frame segments a second were
written, and nothing was alerted. Each test decodes the footage and compares its frame
numbers with those the camera handed over.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.core.alerts import Alert
from controller.core.events import AlertRaised
from states.recovering import RecoveryPolicy
from tests.helpers import gaps, recorded_numbers, segments

FLAP_SECONDS = 20.0
SEGMENT_SECONDS = 5.0
STABLE_SECONDS = 2.0
POLICY = RecoveryPolicy(max_attempts=3, backoff_seconds=0.2, backoff_max_seconds=0.5,
                        critical_probe_seconds=0.5, stable_seconds=STABLE_SECONDS)


@pytest.mark.parametrize("frames_per_open", [1, 4])
def test_flapping_camera_keeps_files_bounded_frames_recorded_and_is_alerted(
    start_controller, tmp_path: Path, frames_per_open: int
) -> None:
    started = time.monotonic()
    running = start_controller(segment_seconds=SEGMENT_SECONDS, policy=POLICY)
    c = running.controller
    alerts: list[Alert] = []
    c.bus.subscribe("test-alerts", lambda event: alerts.append(event.alert), kinds=(AlertRaised,))
    faults = c.unit.hardware.faults
    faults.delivered = []
    assert c.wait_until(lambda: c.snapshot.totals.frames_recorded >= 10, 10)

    faults.inject_flap(FLAP_SECONDS, frames=frames_per_open)
    flap_ends = time.monotonic() + FLAP_SECONDS
    # A one-frame recording is no recovery: the attempts go on counting up to the limit...
    assert c.wait_until(lambda: c.snapshot.recovery_attempts >= POLICY.max_attempts, FLAP_SECONDS)
    # ...and the repeated losses are seen as one flapping episode, alerted in the snapshot.
    assert c.wait_until(lambda: any(a.kind == "flapping" for a in c.snapshot.alerts), FLAP_SECONDS)
    assert c.wait_until(lambda: time.monotonic() >= flap_ends, FLAP_SECONDS + 1)
    # Once the camera stays, recording stable for STABLE_SECONDS ends the episode.
    assert c.wait_until(lambda: "flapping" in c.snapshot.alert_counts
                        and c.snapshot.alert_counts["flapping"] >= 2, 20), c.snapshot.alerts
    assert c.snapshot.state == "recording" and c.snapshot.recovery_attempts == 0
    assert c.wait_until(lambda: len(alerts) >= 2 and sum(a.kind == "flapping" for a in alerts) >= 2, 5)
    running.stop()
    elapsed = time.monotonic() - started

    flapping = [a for a in alerts if a.kind == "flapping"]
    assert len(flapping) == 2, flapping  # raised once, cleared once: not once per loss
    assert flapping[0].message.startswith("camera flapping: ")
    assert flapping[1].message.startswith("cleared: camera flapping")
    assert c.snapshot.alert_counts["flapping"] == 2
    visited = [(before, after) for _, before, after, _ in c.transitions]
    losses = visited.count(("recording", "recovering"))
    assert losses > 2 * POLICY.max_attempts  # the camera really flapped, many times
    assert ("recovering", "critical") in visited  # the failing recoveries backed off to critical

    # Files: the writer is kept across each reopen, so a segment ends only when it has lasted
    # SEGMENT_SECONDS (or is closed after a camera stayed away that long): at most one file per
    # SEGMENT_SECONDS of the run, plus the one open at the end and an hour boundary.
    files = segments(tmp_path / "rec")
    assert len(files) <= elapsed / SEGMENT_SECONDS + 2, (len(files), elapsed, losses)
    assert not list((tmp_path / "rec").rglob("*.partial"))

    # Frames: every frame the camera handed over, between the flaps too, is in the footage,
    # once, in order (no camera draws a frame while it is lost, so the numbers run on).
    numbers = recorded_numbers(tmp_path / "rec")
    delivered = faults.delivered
    assert delivered and set(delivered) <= set(numbers)
    assert numbers[-1] == delivered[-1]
    assert gaps(numbers) == []
