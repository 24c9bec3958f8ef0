"""The Prometheus page: what a scraper reads from a status snapshot, checked with the
reference client's own parser."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.core.controller import Controller
from controller.core.events import SubscriberStats
from controller.core.health import Health
from controller.core.snapshot import RunCounters, StatusSnapshot
from controller.storage.diskmon import DiskStatus
from controller.surfaces.metrics import render_metrics
from hw.factory import Hardware
from states.machine import STATE_NAMES
from tests.specs import camera_spec, recording_spec

DISK = DiskStatus(path="/srv/rec", total_bytes=32_000_000_000, free_bytes=5_000_000_000,
                  reserve_bytes=1_000_000_000, write_bytes_per_second=250_000.5,
                  seconds_until_reserve=None, is_low=False, measured_at=0.0)


@pytest.fixture
def bare() -> StatusSnapshot:
    """The snapshot of a controller that has not run: nothing measured yet."""
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=30),
                        recording_spec(root=Path("/srv/rec")))
    return Controller(hardware, autostart=False).snapshot


@pytest.fixture
def status(bare: StatusSnapshot) -> StatusSnapshot:
    return replace(
        bare, state="recovering", since=1_700_000_000.5,
        run=RunCounters(frames_captured=7, frames_recorded=5),
        totals=RunCounters(frames_captured=1000, frames_recorded=990, frames_dropped=4, frames_invalid=6,
                           segments_closed=12, bytes_written=123_456_789),
        errors={"camera_lost": 2, "something_new": 1}, faults={"camera_lost": 1},
        recoveries_attempted=3, health=Health(42, "state is recovering", {}), disk=DISK,
        merges={"merged": 3, "failed": 1}, fps_achieved=29.5, alert_counts={"recovery": 2},
        events=(SubscriberStats("mqtt", 10, 4, 0, 1),),
    )


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


def test_every_state_has_a_gauge_and_only_the_current_one_is_1(status: StatusSnapshot) -> None:
    _, values = parse(render_metrics(status))

    assert {name: values[f"vigil_state{{state={name}}}"] for name in STATE_NAMES} == {
        "idle": 0, "recording": 0, "recovering": 1, "critical": 0, "reset": 0}


def test_counters_come_from_the_lifetime_totals_with_base_units(status: StatusSnapshot) -> None:
    types, values = parse(render_metrics(status))

    for name, expected in [("frames_captured", 1000), ("frames_recorded", 990), ("frames_dropped", 4),
                           ("frames_invalid", 6), ("segments_closed", 12),
                           ("bytes_written", 123_456_789)]:
        assert types[f"vigil_{name}"] == "counter"
        assert values[f"vigil_{name}_total"] == expected


def test_errors_and_faults_are_counted_by_category_including_unknown_and_unseen_ones(
    status: StatusSnapshot,
) -> None:
    _, values = parse(render_metrics(status))

    assert values["vigil_errors_total{category=camera_lost}"] == 2
    assert values["vigil_errors_total{category=something_new}"] == 1
    assert values["vigil_errors_total{category=storage_full}"] == 0
    assert values["vigil_faults_total{category=camera_lost}"] == 1
    assert values["vigil_recovery_attempts_total"] == 3


def test_parts_other_components_add_are_exported_when_present(status: StatusSnapshot) -> None:
    types, values = parse(render_metrics(status))

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
    assert values["vigil_merges_total{outcome=failed}"] == 1
    assert values["vigil_merges_total{outcome=aborted}"] == 0
    assert values["vigil_events_dropped_total{subscriber=mqtt}"] == 4


def test_parts_that_are_missing_are_left_out_not_invented(bare: StatusSnapshot) -> None:
    _, values = parse(render_metrics(bare))

    assert not [name for name in values if name.startswith(("vigil_health", "vigil_disk",
                                                             "vigil_fps_achieved"))]
    assert values["vigil_frames_recorded_total"] == 0
    assert values["vigil_state{state=idle}"] == 1


def test_label_values_are_escaped_so_odd_paths_parse_back(status: StatusSnapshot) -> None:
    root = 'C:\\odd "root"\nwith newline'
    status = replace(status, disk=replace(DISK, path=root, free_bytes=1))

    _, values = parse(render_metrics(status, version='1.0 "beta"'))

    assert values[f"vigil_disk_free_bytes{{root={root}}}"] == 1
    assert values['vigil_info{backend=synthetic,version=1.0 "beta"}'] == 1


def test_every_family_has_help_and_type_and_counters_end_in_total(status: StatusSnapshot) -> None:
    text = render_metrics(status)
    lines = text.splitlines()

    helps = [line.split()[2] for line in lines if line.startswith("# HELP")]
    typed = {line.split()[2]: line.split()[3] for line in lines if line.startswith("# TYPE")}
    assert helps == list(typed)
    assert len(helps) == len(set(helps))
    assert all(name.startswith("vigil_") for name in helps)
    assert all(name.endswith("_total") for name, kind in typed.items() if kind == "counter")
    assert text.endswith("\n")
