"""The transition table: every transition, and each guard's pass and fail path.

A real Unit with real hardware (the synthetic camera, libx264, segment files in tmp_path);
the test thread plays the controller thread and fires triggers itself.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from hw.camera import CameraMode
from hw.factory import CameraSpec, Hardware
from hw.synthetic import SyntheticCamera
from states.machine import STATE_NAMES, TRANSITIONS
from states.recovering import RecoveryPolicy
from states.unit import Unit
from tests.specs import camera_spec, recording_spec

SMALL = camera_spec(backend="synthetic", width=64, height=48, fps=30, frozen_seconds=0)


class Recorder:
    """Stands in for the controller's queue: remembers what the unit posted."""

    def __init__(self) -> None:
        self.posted: list[str] = []
        self.scheduled: list[tuple[float, str]] = []
        self.errors: list[tuple[str, str]] = []
        self.cancelled = 0

    def post(self, name: str, reason: str = "") -> None:
        self.posted.append(name)

    def schedule(self, delay: float, name: str) -> None:
        self.scheduled.append((delay, name))

    def cancel(self) -> None:
        self.cancelled += 1

    def report(self, category: str, reason: str) -> None:
        self.errors.append((category, reason))


def make_unit(tmp_path: Path, *, camera: CameraSpec = SMALL, fallbacks: tuple[Path, ...] = (),
              root: Path | None = None, reload=None) -> tuple[Unit, Recorder]:
    rec = Recorder()
    hardware = Hardware(camera, recording_spec(root=root or tmp_path / "rec", fallback_roots=fallbacks,
                                              segment_seconds=2, fragment_seconds=0.5))
    unit = Unit(hardware, policy=RecoveryPolicy(max_attempts=2), autostart=True, post=rec.post,
                schedule=rec.schedule, cancel_scheduled=rec.cancel, report_error=rec.report,
                reload=reload)
    return unit, rec


@pytest.fixture
def unit(tmp_path: Path):
    u, rec = make_unit(tmp_path)
    u.rec = rec  # type: ignore[attr-defined]
    yield u
    u.cleanup(None)


def to_state(unit: Unit, state: str) -> None:
    """Drive the unit into `state` through real transitions."""
    paths = {
        "idle": [],
        "recording": ["start"],
        "recovering": ["start", "fault"],
        "critical": ["start", "fault", "give_up"],
        "reset": ["reset"],
    }
    for trigger in paths[state]:
        getattr(unit, trigger)()
    assert unit.state == state


def test_table_uses_only_the_five_states() -> None:
    assert STATE_NAMES == ["idle", "recording", "recovering", "critical", "reset"]
    for t in TRANSITIONS:
        sources = STATE_NAMES if t["source"] == "*" else t["source"]
        sources = [sources] if isinstance(sources, str) else sources
        assert set(sources) <= set(STATE_NAMES)
        assert t["dest"] in STATE_NAMES


def test_start_opens_camera_and_records(unit: Unit) -> None:
    unit.start()
    assert unit.state == "recording"
    assert unit.pipeline is not None and unit.pipeline.is_running
    assert unit.pending_camera is None  # adopted by the pipeline


@pytest.mark.parametrize("source", ["recording", "recovering", "critical"])
def test_stop_reaches_idle_and_closes_everything(unit: Unit, source: str) -> None:
    to_state(unit, source)
    unit.stop()
    assert unit.state == "idle"
    assert unit.pipeline is None
    assert not [t for t in threading.enumerate() if t.name in ("vigil-capture", "vigil-encode")]


def test_fault_goes_to_recovering_and_schedules_an_attempt(unit: Unit) -> None:
    to_state(unit, "recording")
    unit.fault(reason="test")
    assert unit.state == "recovering"
    assert unit.pipeline is None
    assert unit.rec.scheduled[-1] == (0.0, "recovered")  # type: ignore[attr-defined]


def test_recovered_reopens_camera_and_writer(unit: Unit) -> None:
    to_state(unit, "recovering")
    unit.recovered()
    assert unit.state == "recording"
    assert unit.pipeline is not None and unit.pipeline.is_running


def test_give_up_goes_critical_and_schedules_a_probe(unit: Unit) -> None:
    to_state(unit, "critical")
    assert unit.rec.scheduled[-1] == (unit.policy.critical_probe_seconds, "probe")  # type: ignore[attr-defined]


def test_probe_goes_back_through_recovering(unit: Unit) -> None:
    to_state(unit, "critical")
    unit.probe()
    assert unit.state == "recovering"


@pytest.mark.parametrize("source", STATE_NAMES)
def test_reset_is_reachable_from_every_state(unit: Unit, source: str) -> None:
    to_state(unit, source)
    unit.reset()
    assert unit.state == "reset"
    assert unit.pipeline is None
    assert unit.rec.posted[-1] == "reset_done"  # type: ignore[attr-defined]
    assert unit.rec.cancelled >= 1  # type: ignore[attr-defined]


def test_reset_done_goes_idle_and_autostarts(unit: Unit) -> None:
    to_state(unit, "reset")
    unit.reset_done()
    assert unit.state == "idle"
    assert unit.rec.posted[-1] == "start"  # type: ignore[attr-defined]


def test_stop_from_recording_does_not_autostart(unit: Unit) -> None:
    to_state(unit, "recording")
    unit.stop()
    assert "start" not in unit.rec.posted  # type: ignore[attr-defined]


def test_reset_reloads_config_and_keeps_last_good_one_when_bad(tmp_path: Path) -> None:
    bigger = replace(SMALL, width=96)
    answers = [None, (Hardware(bigger, recording_spec(root=tmp_path / "r2")), RecoveryPolicy(), False)]
    u, rec = make_unit(tmp_path, reload=lambda: answers.pop(0))
    u.reset()
    assert u.hardware.camera.width == 64  # bad config on disk: kept the last good one
    u.reset_done()
    assert rec.posted[-1] == "start"
    u.reset()
    assert u.hardware.camera.width == 96 and u.autostart is False
    u.reset_done()
    assert u.state == "idle" and rec.posted.count("start") == 1


def test_invalid_trigger_is_ignored(unit: Unit) -> None:
    unit.recovered()  # only valid from recovering
    assert unit.state == "idle"


# -- guard fail paths: each keeps the machine where it was and says why -------------


def test_guard_config_invalid_refuses_start(unit: Unit) -> None:
    unit.config_error = "camera.width: 641 is not supported"
    unit.start()
    assert unit.state == "idle"
    assert "config invalid" in unit.refusal


def test_guard_config_invalid_does_not_block_reset(unit: Unit) -> None:
    to_state(unit, "recording")
    unit.config_error = "broken"
    unit.reset()
    assert unit.state == "reset"


def test_leaving_is_never_refused_but_recording_again_waits_for_a_thread_it_started(unit: Unit) -> None:
    to_state(unit, "recording")
    assert unit.pipeline is not None
    release = threading.Event()
    # As if a pipeline stage had not ended when its stop returned: a thread the unit owns.
    straggler = threading.Thread(target=release.wait, name="vigil-encode", daemon=True)
    straggler.start()
    unit.owned_threads.append(straggler)
    try:
        unit.stop()
        # Leaving recording always happens, so the machine never sits in recording without
        # the pipeline its cleanup closed; going back into recording is what is refused.
        assert unit.state == "idle" and unit.pipeline is None
        unit.start()
        assert unit.state == "idle"
        assert "threads still alive after cleanup: vigil-encode" in unit.refusal
    finally:
        release.set()
        straggler.join(5)
    unit.start()
    assert unit.state == "recording"
    unit.stop()
    assert unit.state == "idle"


def test_guard_cleanup_ignores_threads_it_did_not_start(unit: Unit) -> None:
    release = threading.Event()
    other = threading.Thread(target=release.wait, name="vigil-capture", daemon=True)
    other.start()  # e.g. another unit's pipeline in the same process
    try:
        unit.start()
        assert unit.state == "recording"
    finally:
        release.set()
        other.join(5)


def test_guard_cleanup_refuses_while_a_segment_file_is_open(unit: Unit, tmp_path: Path) -> None:
    root = unit.hardware.recording.root
    root.mkdir(parents=True)
    with open(root / "stray.mp4.partial", "wb"):
        unit.start()
        assert unit.state == "idle"
        assert "still open" in unit.refusal
    unit.start()
    assert unit.state == "recording"


def test_guard_storage_refuses_when_no_root_is_usable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the root should be")
    u, _ = make_unit(tmp_path, root=blocker / "rec")
    u.start()
    assert u.state == "idle"
    assert "no usable recording root" in u.refusal


def test_guard_storage_falls_back_to_the_next_root(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    fallback = tmp_path / "fallback"
    u, _ = make_unit(tmp_path, root=blocker / "rec", fallbacks=(fallback,))
    u.start()
    try:
        assert u.state == "recording"
        assert u.root_status is not None and u.root_status.path == fallback
    finally:
        u.cleanup(None)


def test_guard_directory_repair_recreates_a_deleted_root(unit: Unit) -> None:
    root = unit.hardware.recording.root
    assert not root.exists()
    unit.start()
    assert unit.state == "recording" and root.is_dir()


def test_guard_camera_refuses_when_the_camera_will_not_open(unit: Unit) -> None:
    unit.hardware.faults.inject_disconnect(60)
    unit.start()
    assert unit.state == "idle"
    assert "camera did not open" in unit.refusal


def test_guard_camera_refuses_a_mode_other_than_configured(tmp_path: Path) -> None:
    u, _ = make_unit(tmp_path)
    u.hardware.makers = {"synthetic": lambda spec, faults: SyntheticCamera(CameraMode(80, 48, 30))}
    u.start()
    assert u.state == "idle"
    assert "configured 64x48@30" in u.refusal


def test_guard_camera_fail_keeps_recovering(unit: Unit) -> None:
    to_state(unit, "recovering")
    unit.hardware.faults.inject_disconnect(60)
    unit.recovered()
    assert unit.state == "recovering"
    assert "camera" in unit.refusal
