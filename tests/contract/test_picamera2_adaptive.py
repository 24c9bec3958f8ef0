"""Adaptive quality on the Pi camera: the genuine picamera2 over the fake libcamera, decoded back.

The load: the recorder side of picamera2's packet queue is made slower than the sensor. The
pipeline's capture thread reads packets through `ThrottledPicamera.read`, which hands over at
most `pacer.rate` packets a second (a token bucket on the monotonic clock), as a starved recorder
thread would; at 30 fps the packet queue (PACKET_QUEUE) backs up for real, at 15 fps it
drains. Everything under it is the genuine library: picamera2's event loop, its
LibavH264Encoder (libx264 through PyAV), its set_controls; the fake libcamera makes frames
at the FrameDurationLimits the requests carry and numbers them in the top rows. No timing is
asserted: waits are deadlines on conditions, and the checks are about what was recorded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import pytest

from controller.core.controller import Controller
from hw.adaptive import LoadMeter, QualityStep
from hw.camera import Camera, EncodedPacket
from hw.factory import CameraSpec, Hardware
from hw.picam import PicameraCamera
from hw.synthetic import FaultPlan
from hw.writer import START_TAG
from tests.e2e.conftest import FAST_POLICY, RunningController
from tests.fakes.realpicam import RealPicamera2
from tests.helpers import Pacer, frame_numbers, gaps, segments
from tests.specs import camera_spec, recording_spec

WAIT_SECONDS = 60.0
FPS = 30.0
CAPACITY = 24.0  # packets a second the throttled recorder takes: below 30, above 15
RATE_CHANGE_FRAMES = 10  # frames a new FrameDurationLimits may take to show


class ThrottledPicamera(PicameraCamera):
    """vigil's own picamera2 backend, read by a recorder that can take `pacer.rate` packets a second
    (None: as fast as they come); it keeps a record of every quality step it applied."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pacer = Pacer()
        self.applied: list[tuple[int, int | None, float, float]] = []  # level, bitrate, fps, lores

    def read(self, timeout: float) -> EncodedPacket:
        self.pacer.wait()
        return super().read(timeout)

    def apply_quality(self, step: QualityStep) -> float | None:
        cut = super().apply_quality(step)
        self.applied.append((step.level, self.bitrate, self.sensor_fps, self.lores_fps))
        return cut


@pytest.fixture
def running() -> Iterator[list[RunningController]]:
    started: list[RunningController] = []
    yield started
    for r in started:
        if r.thread.is_alive():
            r.stop()


def keyframe_times(root: Path) -> list[float]:
    """Sensor-clock times of every keyframe recorded, in recording order."""
    out = []
    for path in segments(root):
        with av.open(str(path)) as container:
            start = float(container.metadata[START_TAG])
            stream = container.streams.video[0]
            out.extend(start + float(p.pts * stream.time_base) for p in container.demux(stream)
                       if p.pts is not None and p.is_keyframe)
    return out


def decoded_times(root: Path) -> list[tuple[float, int]]:
    """(sensor-clock time, frame number) of every recorded frame, in recording order: each
    segment's start tag (its first packet's time) plus the frame's own timestamp."""
    out = []
    for path in segments(root):
        with av.open(str(path)) as container:
            start = float(container.metadata[START_TAG])
            numbers = frame_numbers(path)
            times = [start + float(f.time or 0.0) for f in container.decode(video=0)]
        out.extend(zip(times, numbers, strict=True))
    return out


def test_under_load_the_pi_camera_steps_down_bitrate_then_sensor_rate_and_climbs_back(
        real_picamera2: RealPicamera2, tmp_path: Path, running: list[RunningController]) -> None:
    handle = real_picamera2.install_camera("imx708")
    cameras: list[ThrottledPicamera] = []

    def make(spec: CameraSpec, faults: FaultPlan) -> Camera:
        camera = ThrottledPicamera(spec.mode, fragment_seconds=spec.fragment_seconds,
                                   frozen_seconds=spec.frozen_seconds,
                                   capture_timeout=spec.read_timeout_seconds)
        cameras.append(camera)
        return camera

    rec = recording_spec(root=tmp_path / "rec", segment_seconds=4, fragment_seconds=0.5)
    adaptive = replace(rec.adaptive, queue_high_fraction=0.1, queue_low_fraction=0.02,
                       down_after_seconds=0.5, up_after_seconds=2.0, fps_floor=15.0)
    hardware = Hardware(camera_spec(backend="picamera2", width=160, height=120, fps=FPS,
                                    read_timeout_seconds=0.5, frozen_seconds=0),
                        replace(rec, adaptive=adaptive), makers={"picamera2": make},
                        # The machine's own thermometer and firmware stay out of it.
                        load_meter=lambda: LoadMeter(temperature=lambda: None,
                                                     throttle=lambda now: ""))
    r = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True))
    running.append(r)
    c = r.controller
    r.thread.start()
    assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
    assert handle.wait_for_frames(30, WAIT_SECONDS)
    camera = cameras[-1]
    pipeline = c.unit.pipeline
    assert pipeline is not None and pipeline.quality is not None
    governor = pipeline.quality.governor
    assert [s.describe() for s in governor.ladder] == [
        "bitrate x1, sensor 30 fps, lores sampled at 4 fps, 160x120",
        "bitrate x0.5, sensor 30 fps, lores sampled at 4 fps, 160x120",
        "bitrate x0.5, sensor 30 fps, lores sampled at 2 fps, 160x120",
        "bitrate x0.5, sensor 15 fps, lores sampled at 2 fps, 160x120",
    ]
    base = camera.base_bitrate
    assert base is not None

    camera.pacer.rate = CAPACITY
    assert c.wait_until(lambda: governor.level == 3, WAIT_SECONDS), governor.changes
    # The status the API, metrics and web page read, and the alert of each step.
    assert c.wait_until(lambda: (q := c.snapshot.quality) is not None and q.level == 3, WAIT_SECONDS)
    quality = c.snapshot.quality
    assert quality is not None and quality.fps == 15.0 and quality.steps == 3
    assert quality.last_change.endswith(": sensor fps 30 -> 15")
    down = [a.message for a in c.alerts.recent() if a.kind == "quality"]
    assert [m.split(":")[0] for m in down] == [f"quality down to level {n}" for n in (1, 2, 3)]
    assert "queue" in down[0], down  # the measured cause: the packet queue
    assert down[0].endswith("bitrate x1 -> x0.5") and down[2].endswith("sensor fps 30 -> 15")
    # The knobs really moved: a second encoder at half picamera2's own bit rate, then the
    # sensor asked for 66667 us frames through the requests picamera2 queues.
    # (Applied on the capture thread, after the governor moved: a rate step hands over too.)
    assert c.wait_until(lambda: len(camera.applied) >= 3, WAIT_SECONDS), camera.applied
    assert camera.applied[:3] == [(1, round(base * 0.5), 30.0, 4.0), (2, round(base * 0.5), 30.0, 2.0),
                                  (3, round(base * 0.5), 15.0, 2.0)]
    assert any(d.startswith("(66667, 66667)") for _, d in handle.events("frame_limits"))

    camera.pacer.rate = None  # the load goes away
    assert c.wait_until(lambda: governor.level == 0, WAIT_SECONDS), governor.changes
    produced = handle.frames_produced
    assert handle.wait_for_frames(produced + 30, WAIT_SECONDS)
    ups = [ch for ch in governor.changes if not ch.is_down]
    # (A busy machine may make the fake sensor late enough for a missed frame on the way.)
    assert [ch.new.level for ch in ups][-3:] == [2, 1, 0]
    assert ups[-1].describe().endswith("bitrate x0.5 -> x1")
    assert camera.bitrate == base and camera.encoder_restarts >= 2
    assert any(d.startswith("(33333, 33333)") for t, d in handle.events("frame_limits"))
    r.stop()

    recorded = decoded_times(tmp_path / "rec")
    numbers = [n for _, n in recorded]
    # Every frame the sensor made is there once: none lost at the two encoder handovers or
    # the rate changes, none repeated (both encoders saw the frames of a handover).
    assert numbers and gaps(numbers) == [], gaps(numbers)
    assert camera.packets_dropped == 0 and pipeline.stats.frames_dropped == 0
    # No hole longer than the frame interval of the sensor rate in effect: the timestamps
    # show 1/30 s, then 1/15 s while the sensor ran slower, and nothing longer.
    deltas = [b - a for (a, _), (b, _) in itertools.pairwise(recorded)]
    assert max(deltas) < 1.0 / 15.0 * 1.25, max(deltas)
    assert min(deltas) > 1.0 / 30.0 * 0.75, min(deltas)
    slow = [d for d in deltas if d > 1.5 / FPS]
    fast = [d for d in deltas if d <= 1.5 / FPS]
    assert len(slow) >= 15 and len(fast) >= 60
    assert abs(sorted(slow)[len(slow) // 2] - 1.0 / 15.0) < 0.002
    # The bit-rate steps cut the stream at the new encoder's keyframe: a segment starts there.
    assert len(segments(tmp_path / "rec")) >= 3
    # A keyframe (a fragment, what a power cut can lose) at most every fragment_seconds at 15 fps
    # too, not every 30 frames (1 s) as at the configured rate.
    keys = keyframe_times(tmp_path / "rec")
    spacing = [b - a for a, b in itertools.pairwise(keys)]
    assert max(spacing) <= rec.fragment_seconds + 1.0 / 15.0 + 0.01, spacing


def test_when_picamera2s_own_thread_falls_behind_frames_go_missing_until_the_sensor_slows(
        real_picamera2: RealPicamera2, tmp_path: Path, running: list[RunningController]) -> None:
    """The other load: picamera2's event loop, which runs the encoder in process_requests,
    takes 40 ms a frame (the fake libcamera's slow_event_loop), so at 30 fps libcamera runs
    out of buffers and frames are lost before any encoder sees them. vigil sees the gaps in
    the sensor's timestamps, steps down at once, and at 15 fps nothing is lost any more."""
    handle = real_picamera2.install_camera("imx708")
    rec = recording_spec(root=tmp_path / "rec", segment_seconds=4, fragment_seconds=0.5)
    adaptive = replace(rec.adaptive, down_after_seconds=0.5, up_after_seconds=2.0, fps_floor=15.0)
    hardware = Hardware(camera_spec(backend="picamera2", width=160, height=120, fps=FPS,
                                    read_timeout_seconds=0.5, frozen_seconds=0),
                        replace(rec, adaptive=adaptive),
                        load_meter=lambda: LoadMeter(temperature=lambda: None,
                                                     throttle=lambda now: ""))
    r = RunningController(Controller(hardware, policy=FAST_POLICY, autostart=True))
    running.append(r)
    c = r.controller
    r.thread.start()
    assert c.wait_for_state("recording", WAIT_SECONDS), c.refusals
    assert handle.wait_for_frames(30, WAIT_SECONDS)
    pipeline = c.unit.pipeline
    assert pipeline is not None and pipeline.quality is not None
    camera = pipeline.camera
    assert isinstance(camera, PicameraCamera)
    governor = pipeline.quality.governor

    handle.slow_event_loop(0.040)
    assert c.wait_until(lambda: governor.level == 3, WAIT_SECONDS), governor.changes
    causes = [ch.cause for ch in governor.changes]
    assert any("frames dropped" in cause for cause in causes), causes
    assert camera.frames_missed > 0
    # Counted as dropped where status, metrics and the health score look.
    assert 0 < pipeline.stats.frames_dropped <= camera.frames_missed + camera.packets_dropped
    # Keep the load on for a while: at 15 fps the slow thread keeps up; the ladder has no
    # measure of the headroom picamera2's thread would have at 30 fps, so after a calm period
    # it tries, loses a few frames again and steps back down, each try twice as late.
    slowed = handle.frames_produced
    assert handle.wait_for_frames(slowed + 90, WAIT_SECONDS)
    assert c.wait_until(lambda: governor.level == 3, WAIT_SECONDS), governor.changes
    handle.slow_event_loop(0)
    assert c.wait_until(lambda: governor.level == 0, WAIT_SECONDS), governor.changes
    produced = handle.frames_produced
    assert handle.wait_for_frames(produced + 30, WAIT_SECONDS)
    r.stop()

    numbers = [n for _, n in decoded_times(tmp_path / "rec")]
    assert numbers and len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    # What is missing from the footage is exactly what the sensor lost for want of a
    # buffer before the ladder reached a rate that fits: nothing the encoder was given.
    missing = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
    lost = {n for n in handle.dropped_numbers() if numbers[0] <= n <= numbers[-1]}
    assert missing == lost and lost
    # None of it while the sensor ran at 15 fps: every frame lost came while it was asked
    # for 30 (a few frames after a change may still come at the old rate).
    slow_windows, start = [], None
    for _, detail in handle.events("frame_limits"):
        frame = int(detail.rsplit(" ", 1)[1])
        if detail.startswith("(66667, 66667)"):
            start = frame
        elif start is not None:
            slow_windows.append((start, frame))
            start = None
    assert slow_windows
    assert [n for n in lost if any(a + RATE_CHANGE_FRAMES < n <= b for a, b in slow_windows)] == []
