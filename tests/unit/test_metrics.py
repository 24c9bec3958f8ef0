"""The Prometheus page: what a scraper reads from a status snapshot, checked with the
reference client's own parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import FpsMeter, health_score, render_metrics
from states.machine import STATE_NAMES

STATUS: dict[str, Any] = {
    "state": "recovering",
    "since": 1_700_000_000.5,
    "backend": "synthetic",
    "configured_fps": 30.0,
    "frames_captured": 7,
    "frames_recorded": 5,
    "errors": {"camera_lost": 2, "something_new": 1},
    "faults": {"camera_lost": 1},
    "recoveries_attempted": 3,
    "abandoned_calls": 0,
    "root": "/srv/rec",
    "totals": {"frames_captured": 1000, "frames_recorded": 990, "frames_dropped": 4,
               "frames_invalid": 6, "segments_closed": 12, "bytes_written": 123_456_789},
    "health": {"score": 42, "reason": "state is recovering"},
    "disk": {"path": "/srv/rec", "free_bytes": 5_000_000_000, "total_bytes": 32_000_000_000,
             "reserve_bytes": 1_000_000_000, "write_bytes_per_second": 250_000.5,
             "seconds_until_reserve": None, "is_low": False},
    "merges": {"merged": 3, "failed": 1},
}


def parse(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """(type by family name, value by sample name with sorted labels)."""
    types: dict[str, str] = {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return types, values


def test_every_state_has_a_gauge_and_only_the_current_one_is_1() -> None:
    _, values = parse(render_metrics(STATUS))

    assert {name: values[f"vigil_state{{state={name}}}"] for name in STATE_NAMES} == {
        "idle": 0, "recording": 0, "recovering": 1, "critical": 0, "reset": 0}


def test_counters_come_from_the_lifetime_totals_with_base_units() -> None:
    types, values = parse(render_metrics(STATUS))

    for name, expected in [("frames_captured", 1000), ("frames_recorded", 990), ("frames_dropped", 4),
                           ("frames_invalid", 6), ("segments_closed", 12),
                           ("bytes_written", 123_456_789)]:
        assert types[f"vigil_{name}"] == "counter"
        assert values[f"vigil_{name}_total"] == expected


def test_errors_and_faults_are_counted_by_category_including_unknown_and_unseen_ones() -> None:
    _, values = parse(render_metrics(STATUS))

    assert values["vigil_errors_total{category=camera_lost}"] == 2
    assert values["vigil_errors_total{category=something_new}"] == 1
    assert values["vigil_errors_total{category=storage_full}"] == 0
    assert values["vigil_faults_total{category=camera_lost}"] == 1
    assert values["vigil_recovery_attempts_total"] == 3


def test_parts_other_components_add_are_exported_when_present() -> None:
    types, values = parse(render_metrics(STATUS, fps_achieved=29.5, alert_counts={"recovery": 2}))

    assert values["vigil_health_score"] == 42
    assert values["vigil_disk_free_bytes{root=/srv/rec}"] == 5_000_000_000
    assert values["vigil_disk_size_bytes{root=/srv/rec}"] == 32_000_000_000
    assert values["vigil_disk_low{root=/srv/rec}"] == 0
    assert "vigil_disk_seconds_until_reserve{root=/srv/rec}" not in values  # None: nothing to say
    assert values["vigil_merges_total{outcome=merged}"] == 3
    assert values["vigil_fps_achieved"] == 29.5
    assert values["vigil_fps_configured"] == 30
    assert values["vigil_recoveries_total"] == 2
    assert values["vigil_alerts_total{kind=recovery}"] == 2
    assert types["vigil_merges"] == "counter"


def test_parts_that_are_missing_are_left_out_not_invented() -> None:
    bare = {"state": "idle", "backend": "synthetic"}

    _, values = parse(render_metrics(bare))

    assert not [name for name in values if name.startswith(("vigil_health", "vigil_disk", "vigil_merges",
                                                             "vigil_fps_achieved"))]
    assert values["vigil_frames_recorded_total"] == 0
    assert values["vigil_state{state=idle}"] == 1


def test_label_values_are_escaped_so_odd_paths_parse_back() -> None:
    root = 'C:\\odd "root"\nwith newline'
    status = {**STATUS, "disk": {"path": root, "free_bytes": 1}}

    _, values = parse(render_metrics(status, version='1.0 "beta"'))

    assert values[f"vigil_disk_free_bytes{{root={root}}}"] == 1
    assert values['vigil_info{backend=synthetic,version=1.0 "beta"}'] == 1


def test_every_family_has_help_and_type_and_counters_end_in_total() -> None:
    text = render_metrics(STATUS, fps_achieved=1.0, alert_counts={})
    lines = text.splitlines()

    helps = [line.split()[2] for line in lines if line.startswith("# HELP")]
    typed = {line.split()[2]: line.split()[3] for line in lines if line.startswith("# TYPE")}
    assert helps == list(typed)
    assert len(helps) == len(set(helps))
    assert all(name.startswith("vigil_") for name in helps)
    assert all(name.endswith("_total") for name, kind in typed.items() if kind == "counter")
    assert text.endswith("\n")


@pytest.mark.parametrize(("health", "score"), [(87, 87.0), ({"score": 55}, 55.0), (None, None),
                                               ({"reason": "x"}, None), (True, None)])
def test_health_score_reads_a_number_or_a_score_mapping(health: object, score: float | None) -> None:
    assert health_score({"health": health}) == score


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fps_meter_measures_the_rate_over_its_window() -> None:
    clock = FakeClock()
    meter = FpsMeter(window_seconds=10.0, clock=clock)

    assert meter.update(0) is None  # one sample says nothing about a rate
    for second in range(1, 21):
        clock.now += 1.0
        fps = meter.update(30 * second if second <= 10 else 300 + 15 * (second - 10))
    assert fps == pytest.approx(15.0, rel=0.15)  # the last 10 s ran at 15 fps


def test_fps_meter_starts_again_when_the_counter_goes_back() -> None:
    clock = FakeClock()
    meter = FpsMeter(clock=clock)
    meter.update(1000)
    clock.now += 1.0

    assert meter.update(10) is None
    clock.now += 1.0
    assert meter.update(40) == pytest.approx(30.0)
