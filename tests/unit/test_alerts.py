"""The alert ring: what /status shows and publishers receive, once each way."""

from __future__ import annotations

import pytest

from controller.core.alerts import Alert, AlertLog, transition_kind


def test_the_ring_keeps_the_newest_alerts_and_counts_them_all() -> None:
    log = AlertLog(capacity=3)
    for n in range(5):
        log.record("state_change", f"change {n}")

    assert [a.message for a in log.recent()] == ["change 2", "change 3", "change 4"]
    assert [a.message for a in log.recent(2)] == ["change 3", "change 4"]
    assert log.recent(0) == []
    assert log.counts["state_change"] == 5


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [("recording", "recovering", "fault"), ("recovering", "critical", "fault"),
     ("recovering", "recording", "recovery"), ("idle", "recording", "state_change"),
     ("critical", "recovering", "state_change"), ("recording", "reset", "state_change")],
)
def test_a_state_change_is_a_fault_a_recovery_or_plain(before: str, after: str, kind: str) -> None:
    assert transition_kind(before, after) == kind


def test_a_transition_alert_says_what_changed_and_why() -> None:
    log = AlertLog(clock=lambda: 1_700_000_000.0)

    alert = log.record_transition("recording", "recovering", "fault", "camera_lost: unplugged")

    message = "recording -> recovering on fault: camera_lost: unplugged"
    assert alert == Alert(1_700_000_000.0, "fault", message)
    assert alert.as_dict() == {"time": 1_700_000_000.0, "at": "2023-11-14T22:13:20Z", "kind": "fault",
                               "message": message}


def test_a_condition_is_recorded_once_when_it_starts_and_once_when_it_clears() -> None:
    log = AlertLog()

    raised = [log.condition("low_disk", "/srv", True, "2 MiB free on /srv") for _ in range(3)]
    cleared = [log.condition("low_disk", "/srv", False, "2 MiB free on /srv") for _ in range(3)]

    assert [a is not None for a in raised] == [True, False, False]
    assert [a is not None for a in cleared] == [True, False, False]
    assert [(a.kind, a.message) for a in log.recent()] == [
        ("low_disk", "2 MiB free on /srv"), ("low_disk", "cleared: 2 MiB free on /srv")]
    assert log.active() == {}


def test_a_publisher_sees_each_alert_and_its_failure_does_not_spread() -> None:
    log = AlertLog()
    seen: list[Alert] = []
    log.when_alert = seen.append
    log.record("recovery", "back")

    def broken(alert: Alert) -> None:
        raise RuntimeError("mqtt down")

    log.when_alert = broken
    log.record("fault", "still kept")

    assert [a.message for a in seen] == ["back"]
    assert [a.message for a in log.recent()] == ["back", "still kept"]
