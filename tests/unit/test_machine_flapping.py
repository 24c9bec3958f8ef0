"""The stable-time rule on a simulated clock: a recovery counts only after stable recording.

A real Unit with real hardware (the synthetic camera, libx264, segment files in tmp_path);
the test plays the controller thread and moves the unit's clock by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.factory import Hardware
from states import recovering
from states.guards import FRESH_FRAME_SECONDS
from states.recovering import RecoveryPolicy
from states.unit import Unit
from tests.specs import recording_spec
from tests.unit.test_machine import SMALL, Recorder

POLICY = RecoveryPolicy(max_attempts=3, backoff_seconds=1.0, backoff_max_seconds=4.0,
                        critical_probe_seconds=5.0, stable_seconds=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def played(tmp_path: Path) -> Iterator[tuple[Unit, Recorder, Clock]]:
    rec, clock = Recorder(), Clock()
    hardware = Hardware(SMALL, recording_spec(root=tmp_path / "rec", segment_seconds=30,
                                             fragment_seconds=0.5))
    unit = Unit(hardware, policy=POLICY, autostart=True, post=rec.post, schedule=rec.schedule,
                cancel_scheduled=rec.cancel, report_error=rec.report, clock=clock)
    yield unit, rec, clock
    unit.cleanup(None)  # type: ignore[arg-type]


def lose_and_recover(unit: Unit, clock: Clock, recorded_for: float) -> None:
    """Record for `recorded_for` seconds of the unit's clock, lose the camera, recover once."""
    clock.now += recorded_for
    unit.fault(reason="camera_lost: test")
    assert unit.state == "recovering"
    unit.recovered()
    assert unit.state == "recording", unit.refusal


def test_losses_within_stable_seconds_back_off_to_critical(played) -> None:
    unit, rec, clock = played
    unit.start()
    lose_and_recover(unit, clock, 1.0)  # first loss: attempt 1 at once
    assert rec.scheduled[-1] == (0.0, "recovered")
    assert unit.recovery_attempts == 1
    lose_and_recover(unit, clock, 0.1)  # lost again 0.1 s after recovering: not recovered
    assert rec.scheduled[-1] == (POLICY.delay_before(2), "recovered") == (1.0, "recovered")
    assert unit.recovery_attempts == 2
    lose_and_recover(unit, clock, 4.9)  # still short of stable_seconds
    assert rec.scheduled[-1] == (2.0, "recovered")
    assert unit.recovery_attempts == 3 and len(unit.losses) == 3
    clock.now += 0.1
    unit.fault(reason="camera_lost: test")
    assert unit.state == "recovering"
    assert rec.posted[-1] == "give_up"  # no attempt left: like any failing recovery
    unit.give_up()
    assert unit.state == "critical"
    unit.probe()  # critical's probe starts a fresh round, at once
    assert rec.scheduled[-1] == (0.0, "recovered") and unit.recovery_attempts == 0
    assert len(unit.losses) == 4  # still one episode: it has not recorded stably


def test_recording_stably_counts_as_recovered_and_resets_the_attempts(played) -> None:
    unit, rec, clock = played
    unit.start()
    lose_and_recover(unit, clock, 1.0)
    lose_and_recover(unit, clock, 0.5)
    assert unit.recovery_attempts == 2
    clock.now += POLICY.stable_seconds - 0.01
    assert not recovering.settle(unit) and unit.recovery_attempts == 2
    clock.now += 0.01
    assert recovering.settle(unit)  # what the controller's tick does while recording
    assert unit.recovery_attempts == 0 and unit.losses == []
    assert not recovering.settle(unit)  # once per episode
    unit.fault(reason="camera_lost: test")
    assert rec.scheduled[-1] == (0.0, "recovered")  # a new loss after stable recording: at once


def test_a_stable_recording_is_seen_at_the_loss_without_the_controller(played) -> None:
    unit, rec, clock = played
    unit.start()
    lose_and_recover(unit, clock, 1.0)
    lose_and_recover(unit, clock, 0.5)
    clock.now += POLICY.stable_seconds  # no tick called settle(); the loss itself sees it
    unit.fault(reason="camera_lost: test")
    assert rec.scheduled[-1] == (0.0, "recovered")
    assert unit.recovery_attempts == 0 and len(unit.losses) == 1


def test_stop_ends_the_episode(played) -> None:
    unit, _, clock = played
    unit.start()
    lose_and_recover(unit, clock, 1.0)
    lose_and_recover(unit, clock, 0.5)
    unit.stop()
    assert unit.state == "idle" and unit.recovery_attempts == 0 and unit.losses == []


def test_stable_seconds_zero_counts_every_recording_as_recovered(tmp_path: Path) -> None:
    rec, clock = Recorder(), Clock()
    hardware = Hardware(SMALL, recording_spec(root=tmp_path / "rec", segment_seconds=30,
                                             fragment_seconds=0.5))
    policy = RecoveryPolicy(max_attempts=3, stable_seconds=0.0)
    unit = Unit(hardware, policy=policy, autostart=True, post=rec.post, schedule=rec.schedule,
                cancel_scheduled=rec.cancel, report_error=rec.report, clock=clock)
    try:
        unit.start()
        for _ in range(5):
            lose_and_recover(unit, clock, 0.0)
            assert rec.scheduled[-1] == (0.0, "recovered") and unit.recovery_attempts == 1
        assert "give_up" not in rec.posted
    finally:
        unit.cleanup(None)  # type: ignore[arg-type]


def test_a_loss_keeps_the_writer_and_the_recovery_continues_its_segment(played) -> None:
    unit, _, clock = played
    unit.start()
    assert unit.pipeline is not None
    writer = unit.pipeline.writer
    assert poll_open(unit)
    segment = writer.open_path
    clock.now += 1.0
    unit.fault(reason="camera_lost: test")
    assert unit.held_output is not None and unit.held_output.open_path == segment
    unit.recovered()
    assert unit.pipeline is not None and unit.pipeline.writer is writer
    assert writer.open_path == segment and unit.held_output is None
    unit.fault(reason="camera_lost: test")
    unit.stop()  # anything but the loss and its recovery closes the held segment
    assert unit.held_output is None and writer.open_path is None
    assert segment is not None and not segment.exists()
    assert segment.with_suffix("").exists()  # closed under its final name


def poll_open(unit: Unit, timeout: float = 5.0) -> bool:
    """True once the pipeline's writer has opened its first segment."""
    deadline = time.monotonic() + timeout
    while unit.pipeline is not None and unit.pipeline.writer.open_path is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_camera_silent_after_its_recovery_has_not_recorded_stably(played) -> None:
    """The state said "recording" for stable_seconds, but the camera handed over nothing for
    most of it (its loss is reported only when a read times out, later on a busy machine):
    no recovery counts, at the controller's tick or at the loss."""
    unit, rec, clock = played
    unit.start()
    lose_and_recover(unit, clock, 1.0)
    lose_and_recover(unit, clock, 0.5)
    assert unit.recovery_attempts == 2
    pipeline = unit.pipeline
    assert pipeline is not None
    unit.hardware.faults.inject_stall(60.0)
    deadline = time.monotonic() + 30.0
    silence = FRESH_FRAME_SECONDS + 1.5
    while time.monotonic() - pipeline.stats.last_frame_monotonic < silence:
        assert time.monotonic() < deadline, "the stalled camera kept delivering"
        time.sleep(0.05)
    clock.now += POLICY.stable_seconds + 0.5  # frames for at most stable_seconds - 1 of it
    assert not recovering.settle(unit) and unit.recovery_attempts == 2
    unit.fault(reason="camera_lost: test")
    # The same episode goes on: the next attempt backs off, as after any short recovery.
    assert len(unit.losses) == 3 and rec.scheduled[-1] == (POLICY.delay_before(3), "recovered")
