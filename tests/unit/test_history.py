"""The 24-hour history ring: per-minute deltas, bounds, and the file that survives a restart.

Snapshots come from a real (not running) Controller, changed with `dataclasses.replace` the
way the controller thread would change them; the minutes are cut by a fake wall clock.
The file is written and read on the real filesystem of tmp_path.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from loguru import logger

from controller.core.alerts import Alert
from controller.core.controller import Controller
from controller.core.health import Health
from controller.core.history import MAX_SAMPLES, HistoryAlert, HistoryRing, MinuteSampler
from controller.core.snapshot import RunCounters, StatusSnapshot
from controller.storage.diskmon import DiskStatus
from controller.surfaces.history import HistoryRecorder, history_path, read_history, write_history
from hw.factory import Hardware
from tests.specs import camera_spec, recording_spec

T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z, a minute's start
DISK = DiskStatus(path="/srv/rec", total_bytes=32_000_000_000, free_bytes=5_000_000_000,
                  reserve_bytes=1_000_000_000, write_bytes_per_second=250_000.0,
                  seconds_until_reserve=None, is_low=False, measured_at=0.0)


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=30),
                        recording_spec(root=tmp_path / "rec"))
    c = Controller(hardware, autostart=False)
    yield c
    c.bus.close()


def snap_of(base: StatusSnapshot, *, frames: int, dropped: int = 0, errors: dict[str, int] | None = None,
            state: str = "recording", health: int | None = 97, fps: float | None = 29.8) -> StatusSnapshot:
    return replace(base, state=state, totals=RunCounters(frames_recorded=frames, frames_dropped=dropped),
                   errors=errors or {}, fps_achieved=fps, disk=DISK,
                   health=Health(health, "test", {}) if health is not None else None)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def test_each_minute_holds_the_deltas_of_the_cumulative_counters(controller: Controller) -> None:
    base = controller.snapshot
    ring = HistoryRing()
    sampler = MinuteSampler(ring)
    assert sampler.observe(snap_of(base, frames=100), T0 + 5) is None
    assert sampler.observe(snap_of(base, frames=900, health=80, fps=20.0), T0 + 30) is None
    first = sampler.observe(snap_of(base, frames=1790, dropped=3, errors={"camera_timeout": 1}), T0 + 60)
    assert first is not None
    assert (first.t, first.frames, first.frames_dropped) == (T0, 1790, 3)
    assert dict(first.errors) == {"camera_timeout": 1}
    assert first.health == 97.0 and first.health_min == 80.0
    assert first.fps == round((29.8 + 20.0 + 29.8) / 3, 2)
    assert first.disk_free_bytes == DISK.free_bytes and first.fps_configured == 30.0
    second = sampler.observe(snap_of(base, frames=3580, dropped=3, errors={"camera_timeout": 1,
                                                                             "frame_invalid": 2}), T0 + 121)
    assert second is not None
    assert (second.t, second.frames, second.frames_dropped, dict(second.errors)) == (
        T0 + 60, 1790, 0, {"frame_invalid": 2})  # only the new, only the non-zero
    assert [s.t for s in ring.samples()] == [T0, T0 + 60]


def test_a_counter_that_went_down_counts_from_zero(controller: Controller) -> None:
    """The daemon restarted inside the ring's life: its counters start at 0 again."""
    base = controller.snapshot
    sampler = MinuteSampler(HistoryRing())
    sampler.observe(snap_of(base, frames=5000, errors={"camera_lost": 4}), T0)
    sampler.observe(snap_of(base, frames=6000, errors={"camera_lost": 4}), T0 + 60)
    after = sampler.observe(snap_of(base, frames=40, errors={"camera_lost": 1}), T0 + 120)
    assert after is not None
    assert (after.frames, dict(after.errors)) == (40, {"camera_lost": 1})


def test_a_fault_and_its_recovery_inside_one_minute_are_both_in_its_states(controller: Controller) -> None:
    base = controller.snapshot
    sampler = MinuteSampler(HistoryRing())
    sampler.observe(snap_of(base, frames=10), T0 + 1)
    sampler.observe(snap_of(base, frames=10, state="recovering", health=20), T0 + 20)
    sample = sampler.observe(snap_of(base, frames=500), T0 + 60)
    assert sample is not None
    assert sample.state == "recording" and sample.states == ("recording", "recovering")
    assert sample.health_min == 20.0


def test_the_ring_and_its_file_stay_bounded_after_more_than_a_day(
        controller: Controller, tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = HistoryRecorder(controller, None, clock=clock)  # written once at the end: fsyncs are slow here
    base = controller.snapshot
    minutes = MAX_SAMPLES + 200  # 27 h 20 min of samples
    categories = ["camera_timeout", "frame_invalid", "storage_io", "encoder_error"]
    for minute in range(minutes + 1):
        clock.now = T0 + minute * 60 + 1
        # Every minute different, with errors in all of them: the worst case for the file.
        errors = {name: minute * (i + 1) for i, name in enumerate(categories)}
        controller.snapshot = snap_of(base, frames=minute * 1799, dropped=minute, errors=errors,
                                      health=50 + minute % 50, fps=29.0 + (minute % 10) / 10)
        recorder.observe()
        if minute % 3 == 0:
            recorder.ring.add_alert(replace(_alert_at(clock.now), message="x" * 200))
    samples = recorder.ring.samples()
    assert len(samples) == MAX_SAMPLES
    assert samples[-1].t == T0 + (minutes - 1) * 60
    assert samples[0].t == samples[-1].t - (MAX_SAMPLES - 1) * 60  # 24 h, no older
    assert all(a.t >= clock.now - 86400 for a in recorder.ring.alerts())
    path = tmp_path / "history.json.gz"
    size = write_history(path, recorder.ring)
    assert size == path.stat().st_size
    assert size <= 256 * 1024, f"history file is {size} bytes"
    unpacked = len(gzip.decompress(path.read_bytes()))
    assert unpacked <= 512 * 1024, f"history JSON is {unpacked} bytes"
    print(f"full ring: {len(samples)} samples, {len(recorder.ring.alerts())} alerts, file {size} bytes, "
          f"JSON {unpacked} bytes")
    assert len(read_history(path, clock.now)) == MAX_SAMPLES  # and it reads back whole


def _alert_at(t: float) -> HistoryAlert:
    return HistoryAlert.of(Alert(t, "fault", "recording -> recovering on fault: camera_lost"))


def test_a_restart_reads_the_samples_back_and_drops_those_older_than_a_day(
        controller: Controller, tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.json.gz"
    clock = FakeClock()
    first = HistoryRecorder(controller, path, clock=clock)
    base = controller.snapshot
    for minute in range(5):
        clock.now = T0 + minute * 60 + 2
        controller.snapshot = snap_of(base, frames=minute * 1800, errors={"camera_lost": minute // 3})
        first.observe()
    first.ring.add_alert(_alert_at(T0 + 75.0))  # as the bus subscription would (not started here)
    clock.now = T0 + 4 * 60 + 30
    assert first.writes == 4  # once per closed minute
    first.stop()  # closes the minute under way: 5 samples
    assert first.writes == 5
    assert [s.t for s in first.ring.samples()] == [T0 + m * 60 for m in range(5)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    # The daemon comes back 10 minutes later: a gap, then new samples after the old ones.
    clock.now = T0 + 15 * 60 + 3
    second = HistoryRecorder(controller, path, clock=clock)
    second.load()
    assert [s.as_dict() for s in second.ring.samples()] == [s.as_dict() for s in first.ring.samples()]
    assert [a.as_dict() for a in second.ring.alerts()] == [a.as_dict() for a in first.ring.alerts()]
    answer = second.window(24)
    assert [s["t"] for s in answer["samples"]] == [T0 + m * 60 for m in range(5)]
    # The look at minute 3 (errors 1) ended minute 2: a look belongs to the minute it closes.
    assert [s["errors"] for s in answer["samples"]] == [{}, {}, {"camera_lost": 1}, {}, {}]
    assert answer["alerts"][0]["t"] == T0 + 75.0 and answer["alerts"][0]["severity"] == "critical"
    assert answer["now"] == clock.now and answer["interval_seconds"] == 60
    assert [s["t"] for s in second.window(1)["samples"]] == [T0 + m * 60 for m in range(5)]

    # A day and two minutes after the first sample, the two oldest are gone on load.
    clock.now = T0 + 86400 + 2 * 60
    third = HistoryRecorder(controller, path, clock=clock)
    third.load()
    assert [s.t for s in third.ring.samples()] == [T0 + m * 60 for m in range(2, 5)]
    assert third.ring.alerts() == []  # raised at T0+75, more than 24 h ago


def test_a_restart_within_the_same_minute_joins_the_two_parts(controller: Controller, tmp_path: Path) -> None:
    path = tmp_path / "history.json.gz"
    clock = FakeClock(T0 + 10)
    base = controller.snapshot
    first = HistoryRecorder(controller, path, clock=clock)
    controller.snapshot = snap_of(base, frames=300, errors={"camera_lost": 1})
    first.observe()
    first.stop()
    clock.now = T0 + 40
    second = HistoryRecorder(controller, path, clock=clock)
    controller.snapshot = snap_of(base, frames=200)  # the new process counts from 0
    second.observe()
    second.load()  # the thread reads the file after its first look: the order must not matter
    clock.now = T0 + 61
    second.observe()
    [joined] = second.ring.samples()
    assert (joined.t, joined.frames, dict(joined.errors)) == (T0, 500, {"camera_lost": 1})


HOSTILE = {
    "random bytes": os.urandom(4096),
    "empty": b"",
    "truncated gzip": None,  # made from a good file below
    "gzip of not JSON": gzip.compress(b"\xff\xfe not json"),
    "gzip bomb": gzip.compress(b"[" + b" " * (8 << 20) + b"]"),
    "wrong version": gzip.compress(json.dumps({"version": 99}).encode()),
    "NaN health": None,
    "huge count": None,
    "deep nesting": gzip.compress(b"[" * 100_000 + b"]" * 100_000),
    "too many samples": None,
}


def _good_file(controller: Controller, path: Path) -> bytes:
    clock = FakeClock()
    recorder = HistoryRecorder(controller, path, clock=clock)
    for minute in range(3):
        clock.now = T0 + minute * 60
        controller.snapshot = snap_of(controller.snapshot, frames=minute * 100)
        recorder.observe()
    return path.read_bytes()


def _edited(good: bytes, edit: str) -> bytes:
    data = json.loads(gzip.decompress(good))
    if edit == "NaN health":
        data["samples"][0][2] = float("nan")
    elif edit == "huge count":
        data["samples"][0][6] = 10**30
    elif edit == "too many samples":
        data["samples"] = data["samples"] * 1000
    return gzip.compress(json.dumps(data).encode())


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_an_unusable_file_is_logged_the_ring_starts_empty_and_the_file_is_replaced(
        kind: str, controller: Controller, tmp_path: Path, log_lines: list[str]) -> None:
    path = tmp_path / "history.json.gz"
    good = _good_file(controller, path)
    content = HOSTILE[kind]
    if content is None:
        content = good[: len(good) // 2] if kind == "truncated gzip" else _edited(good, kind)
    path.write_bytes(content)
    clock = FakeClock(T0 + 10 * 60 + 1)
    recorder = HistoryRecorder(controller, path, clock=clock)
    recorder.load()
    assert len(recorder.ring) == 0 and recorder.ring.alerts() == []
    assert any(f"history file {path} is unusable" in line and "starting an empty history" in line
               for line in log_lines), log_lines
    recorder.observe()
    clock.now += 60
    recorder.observe()  # a minute closes: the file is replaced by one vigil can read
    assert [s.t for s in read_history(path, clock.now).samples()] == [T0 + 10 * 60]


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_a_path_that_is_not_a_regular_file_is_refused_without_hanging(
        kind: str, controller: Controller, tmp_path: Path, log_lines: list[str]) -> None:
    path = tmp_path / "history.json.gz"
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(_good_file(controller, tmp_path / "other.json.gz"))
        path.symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(path)
    recorder = HistoryRecorder(controller, path, clock=FakeClock(T0 + 3600))
    recorder.load()
    assert len(recorder.ring) == 0
    assert any("is unusable" in line for line in log_lines), log_lines
    recorder.observe()
    recorder.clock = FakeClock(T0 + 3600 + 60)
    recorder.observe()
    if kind == "directory":
        # Cannot be replaced: said once, and the history goes on in memory.
        assert recorder.write_failures == 1 and len(recorder.ring) == 1
        assert any("cannot write" in line for line in log_lines), log_lines
    else:
        assert not path.is_symlink() and path.is_file()  # the link itself was replaced
        assert len(read_history(path, T0 + 3600 + 60)) == 1


def test_the_file_lives_in_the_state_directory_unless_configured(tmp_path: Path) -> None:
    two = {"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    assert history_path(None, two) == tmp_path / "a" / "history.json.gz"
    assert history_path(tmp_path / "h.gz", {"STATE_DIRECTORY": "/nowhere"}) == tmp_path / "h.gz"
    assert history_path(None, {"HOME": str(tmp_path)}) == tmp_path / ".local/state/vigil/history.json.gz"


def test_write_history_leaves_no_temporary_file(controller: Controller, tmp_path: Path) -> None:
    ring = HistoryRing()
    write_history(tmp_path / "history.json.gz", ring)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json.gz"]
