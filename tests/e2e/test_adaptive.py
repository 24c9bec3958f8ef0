"""Adaptive quality for real: libx264 under a CPU quota, decoded back frame by frame.

The CPU limit is a quota on a child cgroup of the test's own (tests/cpulimit.py: cgroup v1
`cpu.cfs_quota_us` on this machine, v2 `cpu.max` elsewhere); the recording path runs in a child
process inside it (tests/adaptive_harness.py, hw.factory's pipeline with the synthetic camera).
The quota is set from what the same child used unlimited a moment before, so it means "a
little over half of what this recording needs" on any machine; the group has the largest
scheduling weight, so other load on the machine takes nothing from it (CpuLimit's `favoured`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import pytest

from controller.client import format_status
from controller.core.controller import Controller
from controller.storage.merge import merge_hour
from controller.surfaces.metrics import render_metrics
from hw import framecode
from hw.adaptive import LoadMeter
from hw.factory import Hardware
from hw.footage import hour_folders
from hw.writer import START_TAG
from tests import cpulimit
from tests.adaptive_harness import Harness
from tests.e2e.conftest import HANDS_OFF_STORAGE, RunningController
from tests.helpers import segments
from tests.specs import camera_spec, recording_spec

FPS = 30.0
WIDTH, HEIGHT = 640, 480
# The quota, as a share of what the recording uses unlimited: the encoder falls behind at
# full rate and keeps up at a third of it.
QUOTA_SHARE = 0.55
CALIBRATE_SECONDS = 2.0
LIMITED_SECONDS = 10.0
CLIMB_DEADLINE_SECONDS = 40.0
# Timestamps are the camera's schedule, exact multiples of 1/fps: a millisecond covers the
# muxer's rounding.
TIMESTAMP_SLACK_SECONDS = 0.001


def decoded(path: Path) -> list[tuple[float, int]]:
    """(wall-clock time, frame number) of every frame of a segment, at any recorded size."""
    out = []
    with av.open(str(path)) as container:
        start = float(container.metadata[START_TAG])
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            assert frame.time is not None
            out.append((start + frame.time, read_number(frame)))
    return out


def read_number(frame: av.VideoFrame) -> int:
    """The frame-number code: it scales with the picture, so read it back at the camera's size."""
    if (frame.width, frame.height) != (WIDTH, HEIGHT):
        frame = frame.reformat(width=WIDTH, height=HEIGHT)
    return framecode.read_video_frame(frame)


def segment_rate(path: Path) -> float:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        assert rate is not None
        return float(rate)


@pytest.mark.skipif(bool(cpulimit.unavailable()), reason=f"no CPU quota: {cpulimit.unavailable()}")
def test_under_a_cpu_quota_adaptation_keeps_every_second_and_climbs_back(tmp_path: Path) -> None:
    # Favoured: the quota alone decides how much CPU the recorder gets, not how busy the rest
    # of the machine is; the climb back, with the quota lifted, failed beside two busy loops.
    with cpulimit.CpuLimit(f"vigil-test-adaptive-{os.getpid()}", None, favoured=True) as limit:
        # Without adaptation, at the same quota: frames are dropped at random.
        plain = Harness(tmp_path / "plain", limit, adaptive=False, width=WIDTH, height=HEIGHT, fps=FPS)
        plain.wait_for_recording()
        used = plain.cpu_seconds()
        time.sleep(CALIBRATE_SECONDS)  # measuring, not waiting for anything
        need = (plain.cpu_seconds() - used) / CALIBRATE_SECONDS
        limit.set(need * QUOTA_SHARE)
        plain.wait_for("frames dropped without adaptation", lambda s: s["dropped"] > 0, LIMITED_SECONDS * 2)
        limit.set(None)
        without = plain.stop()
        assert without["dropped"] > 0 and without["decimated"] == 0

        throttled_before = limit.times_throttled()
        # The whole ladder, size steps too, so that a machine busier than this one still
        # finds a rung it can keep up on.
        adaptive = Harness(tmp_path / "adaptive", limit, adaptive=True, width=WIDTH, height=HEIGHT,
                           fps=FPS, height_floor=HEIGHT // 2)
        adaptive.wait_for_recording()
        limit.set(need * QUOTA_SHARE)
        adaptive.wait_for("a step down", lambda s: s["level"] >= 1, LIMITED_SECONDS)
        limited_until = time.monotonic() + LIMITED_SECONDS
        adaptive.wait_for("the limited period", lambda s: time.monotonic() >= limited_until,
                          LIMITED_SECONDS + 5)
        assert limit.times_throttled() > throttled_before, "the quota never held the recorder back"
        limit.set(None)
        adaptive.wait_for("the climb back to full quality", lambda s: s["level"] == 0,
                          CLIMB_DEADLINE_SECONDS)
        report = adaptive.stop()

    assert report["errors"] == [] and report["abandoned"] == []
    assert report["dropped"] == 0, f"adaptation still dropped frames: {report['steps']}"
    downs = [s for s in report["steps"] if s["down"]]
    ups = [s for s in report["steps"] if not s["down"]]
    assert downs and ups and report["level"] == 0, report["steps"]
    assert min(s["fps"] for s in report["steps"]) < FPS
    assert report["decimated"] == len(report["decimated_frames"]) > 0

    files = segments(tmp_path / "adaptive")
    assert len(files) == len(report["steps"]) + 1, "each step starts a new segment"
    frames: list[tuple[float, int, float]] = []  # (time, number, the segment's frame interval)
    for path in files:
        interval = 1.0 / segment_rate(path)
        frames.extend((t, n, interval) for t, n in decoded(path))
    numbers = [n for _, n, _ in frames]
    expected = sorted(set(report["delivered"]) - set(report["decimated_frames"]))
    assert numbers == expected, "recorded frames are not exactly the delivered minus the decimated"
    holes = [(a[0], b[0]) for a, b in itertools.pairwise(frames)
             if b[0] - a[0] > max(a[2], b[2]) + TIMESTAMP_SLACK_SECONDS]
    assert holes == [], f"seconds not covered: {holes[:5]}"
    assert {round(1.0 / f[2]) for f in frames} >= {30, 15}, "no frame-rate step was recorded"


def test_a_step_in_the_middle_of_a_segment_splits_it_and_the_merge_keeps_every_frame(
    tmp_path: Path,
) -> None:
    root = tmp_path / "rec"
    rec = recording_spec(root=root, segment_seconds=3600.0, encoder_preset="superfast", crf=23)
    rec = replace(rec, adaptive=replace(rec.adaptive, crf_ceiling=23, height_floor=HEIGHT // 2,
                                        down_after_seconds=0.0, up_after_seconds=3600.0))
    hardware = Hardware(camera_spec(backend="synthetic", width=320, height=240, fps=FPS), rec)
    delivered: list[int] = []
    hardware.faults.delivered = delivered
    camera = hardware.make_camera()
    camera.open()
    errors: list[str] = []
    pipeline = hardware.make_pipeline(camera, root, lambda c, r: errors.append(f"{c}: {r}"))
    assert pipeline.quality is not None
    assert [s.describe() for s in pipeline.quality.governor.ladder] == [
        "preset superfast crf 23, 30 fps, 320x240", "preset ultrafast crf 23, 30 fps, 320x240",
        "preset ultrafast crf 23, 15 fps, 320x240", "preset ultrafast crf 23, 10 fps, 320x240",
    ]
    # A CPU that runs hot once recording is under way: the ladder steps down on temperature.
    hot = threading.Event()
    pipeline.quality.meter = LoadMeter(temperature=lambda: 90.0 if hot.is_set() else 50.0,
                                       throttle=lambda now: "")
    decimated: list[int] = []
    pipeline.quality.when_decimated = decimated.append
    pipeline.start()
    try:
        wait_until(lambda: pipeline.stats.frames_recorded >= 45, "45 frames at full quality")
        hot.set()
        wait_until(lambda: pipeline.stats.quality_level >= 2, "two steps down")
        hot.clear()
        recorded_then = pipeline.stats.frames_recorded
        wait_until(lambda: pipeline.stats.frames_recorded >= recorded_then + 20, "frames after the steps")
    finally:
        report = pipeline.stop()
    assert errors == [] and report.abandoned == ()

    causes = [c.describe() for c in pipeline.quality.governor.changes]
    assert causes[:2] == ["CPU 90 °C: preset superfast -> ultrafast", "CPU 90 °C: fps 30 -> 15"]
    files = segments(root)
    hour_cuts = len({path.parent for path in files}) - 1  # a run across a clock hour splits there too
    assert len(files) == len(causes) + 1 + hour_cuts
    halves = [[n for _, n in decoded(path)] for path in files]
    assert all(halves), "every part decodes and holds frames"
    expected = sorted(set(delivered) - set(decimated))
    assert list(itertools.chain(*halves)) == expected
    assert len(decimated) > 0
    # Each cut is at a keyframe: every file starts with one.
    for path in files:
        with av.open(str(path)) as container:
            first = next(container.demux(video=0))
            assert first.is_keyframe, f"{path.name} does not start on a keyframe"

    merged = [m for folder in hour_folders(root) for m in merge_hour(folder, fsync=False)]
    assert merged and not segments_left(root)
    assert [n for m in merged for _, n in decoded(m.path)] == expected


def segments_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.mp4") if len(p.stem) > 5]


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def test_a_step_shows_in_status_metrics_health_and_alerts(tmp_path: Path) -> None:
    hot = threading.Event()
    rec = recording_spec(root=tmp_path / "rec", segment_seconds=3600.0)
    rec = replace(rec, adaptive=replace(rec.adaptive, crf_ceiling=rec.crf, down_after_seconds=0.0,
                                        up_after_seconds=3600.0))
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=FPS), rec,
                        load_meter=lambda: LoadMeter(temperature=lambda: 90.0 if hot.is_set() else 50.0,
                                                     throttle=lambda now: ""))
    controller = Controller(hardware, autostart=True, storage=HANDS_OFF_STORAGE)
    running = RunningController(controller)
    running.thread.start()
    try:
        assert controller.wait_for_state("recording", 20)
        assert controller.snapshot.quality is not None and controller.snapshot.quality.level == 0
        hot.set()
        wait_until(lambda: (q := controller.snapshot.quality) is not None and q.level == 1,
                   "a step down on temperature")
        hot.clear()
        wait_until(lambda: controller.snapshot.run.frames_decimated >= 30, "decimated frames")
        wait_until(lambda: (h := controller.snapshot.health) is not None
                   and h.penalties.get("decimated", 0) > 0, "the health score's decimated part")
        snap = controller.snapshot
    finally:
        assert running.stop() == 0

    status = snap.as_dict()
    assert status["quality"]["level"] == 1 and status["quality"]["fps"] == 15.0
    assert status["quality"]["last_change"] == "CPU 90 °C: fps 30 -> 15"
    assert status["frames_decimated"] >= 30 and status["frames_dropped"] == 0
    assert status["health"]["penalties"]["drops"] == 0
    quality_alerts = [a for a in snap.alerts if a.kind == "quality"]
    assert [a.message for a in quality_alerts] == ["quality down to level 1: CPU 90 °C: fps 30 -> 15"]
    shown = format_status(status)
    assert "quality" in shown and "level 1 of 2: preset ultrafast crf 23, 15 fps, 160x120" in shown
    assert "decimated " in shown
    metrics = render_metrics(snap)
    assert "vigil_quality_level 1" in metrics.splitlines()
    assert f"vigil_frames_decimated_total {snap.totals.frames_decimated}" in metrics.splitlines()
