"""Adaptive quality on a V4L2 H.264 camera: the driver's own controls driven, the footage decoded.

vigil's V4L2Camera runs over the fake kernel (tests/fakes/v4l2_device.py), whose H.264 comes
from libx264 and honours what the ioctls set: V4L2_CID_MPEG_VIDEO_BITRATE through VIDIOC_S_CTRL
(libx264's rate is reconfigured), V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME (the next frame is an
IDR) and the frame interval through VIDIOC_S_PARM (frames come at the new interval).

The load: the segment writer takes at most CAPACITY packets a second (a token bucket on the
monotonic clock, as a slow card would), so at 30 fps the queue in front of it backs up for
real and at 15 fps it drains; the bit-rate step does not help a writer limited per packet,
so the ladder goes on to the frame rate. No timing is asserted: waits are deadlines on
conditions, the checks are about what was recorded.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path

import av
import pytest

from hw.adaptive import LoadMeter, StepChange
from hw.camera import EncodedPacket
from hw.factory import DEFAULT_MAKERS, Hardware
from hw.pipeline import RecordingPipeline
from hw.v4l2.camera import V4L2Camera
from hw.v4l2.probe import V4L2Maker
from hw.writer import START_TAG, SegmentWriter
from tests.fakes.v4l2_device import (
    CID_MPEG_VIDEO_BITRATE,
    CID_MPEG_VIDEO_FORCE_KEY_FRAME,
    CTRL_FLAG_READ_ONLY,
    FakeV4L2,
    FakeVideoDevice,
)
from tests.helpers import Pacer, frame_numbers, gaps, segments
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 320, 240, 30.0
GOP = 30  # the camera's own keyframe interval: one a second
BASE_BITRATE = 400_000
CAPACITY = 24.0  # packets a second the writer takes: below 30, above 15
QUEUE = 60
WAIT_SECONDS = 60.0
BITRATE = {CID_MPEG_VIDEO_BITRATE: ("Video Bitrate", 25_000, 25_000_000, 25_000, BASE_BITRATE, 0)}
FORCE_KEY = {CID_MPEG_VIDEO_FORCE_KEY_FRAME: ("Force Key Frame", 0, 0, 0, 0, 0)}


class ThrottledWriter(SegmentWriter):
    """The real segment writer, taking at most `pacer.rate` packets a second (None: as they come)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pacer = Pacer()

    def write(self, packet: EncodedPacket) -> None:
        self.pacer.wait()
        super().write(packet)


class Rig:
    """A V4L2 H.264 camera on the fake kernel, recorded through the real pipeline by hw.factory's
    quality control, into a throttled writer."""

    def __init__(self, root: Path, device: FakeVideoDevice, kernel: FakeV4L2) -> None:
        rec = recording_spec(root=root, segment_seconds=3600)
        adaptive = replace(rec.adaptive, queue_high_fraction=0.1, queue_low_fraction=0.02,
                           down_after_seconds=0.5, up_after_seconds=2.0, fps_floor=15.0)
        self.hardware = Hardware(
            camera_spec(backend="v4l2", width=WIDTH, height=HEIGHT, fps=FPS, input_format="h264",
                        read_timeout_seconds=0.5, frozen_seconds=0),
            replace(rec, adaptive=adaptive), makers={**DEFAULT_MAKERS, "v4l2": V4L2Maker(io=kernel)},
            # The machine's own thermometer and firmware stay out of it.
            load_meter=lambda: LoadMeter(temperature=lambda: None, throttle=lambda now: ""))
        self.device = device
        camera = self.hardware.make_camera()
        assert isinstance(camera, V4L2Camera)
        camera.open()
        self.camera = camera
        self.errors: list[str] = []
        self.steps: list[StepChange] = []
        self.writer = ThrottledWriter(root, width=WIDTH, height=HEIGHT, fps=FPS, segment_seconds=3600)
        self.quality = self.hardware.quality_control(camera.mode, self.steps.append, camera)
        self.pipeline = RecordingPipeline(
            camera, self.writer, encoder=None, validator=None, queue_frames=QUEUE, read_timeout=0.5,
            when_error=lambda category, why: self.errors.append(f"{category}: {why}"),
            quality=self.quality)

    @property
    def level(self) -> int:
        return self.pipeline.stats.quality_level

    def wait_until(self, what: str, predicate: object) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: {self.steps}"
            assert not self.pipeline.is_dead, self.errors
            time.sleep(0.02)

    def load_until_bottom_then_lift(self, bottom: int) -> None:
        """Throttle the writer until the ladder is at `bottom`, hold it there for 30 frames of
        the camera's, lift the load and wait for the climb back to the top."""
        self.pipeline.start()
        self.wait_until("the first frames", lambda: self.device.frames_served >= 30)
        self.writer.pacer.rate = CAPACITY
        self.wait_until("the steps down", lambda: self.level == bottom)
        served = self.device.frames_served
        self.wait_until("frames at the lowest rung", lambda: self.device.frames_served >= served + 30)
        self.writer.pacer.rate = None
        self.wait_until("the climb back", lambda: self.level == 0)
        served = self.device.frames_served
        self.wait_until("frames at the top again", lambda: self.device.frames_served >= served + 45)
        assert self.pipeline.stop(timeout=10.0).abandoned == ()


def decoded(path: Path) -> list[tuple[float, int, bool]]:
    """(camera-clock time, frame number, keyframe) of every frame of a segment."""
    numbers = frame_numbers(path)
    with av.open(str(path)) as container:
        start = float(container.metadata[START_TAG])
        frames = [(start + float(f.time or 0.0), f.key_frame) for f in container.decode(video=0)]
    return [(t, n, bool(k)) for (t, k), n in zip(frames, numbers, strict=True)]


def bit_rate(path: Path) -> float:
    """Bits a second of the segment's H.264 (the packets as muxed, over their time span)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.size) for p in container.demux(stream) if p.pts is not None and p.size]
    assert stream.time_base is not None and len(packets) > 1
    span = (packets[-1][0] - packets[0][0]) * stream.time_base
    return float(sum(size for _, size in packets[:-1]) * 8 / span)


def declared_rate(path: Path) -> float:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        assert rate is not None
        return float(rate)


def test_under_load_a_v4l2_h264_camera_steps_its_bit_rate_then_its_frame_rate_and_climbs_back(
        tmp_path: Path) -> None:
    """bcm2835-v4l2's kind of driver: a bit-rate control, a keyframe button, a frame interval it
    sets while streaming."""
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, rates=(30.0, 15.0, 10.0),
                               gop=GOP, live_rate=True, controls={**BITRATE, **FORCE_KEY})
    rig = Rig(tmp_path / "rec", device, kernel)
    assert rig.quality is not None
    assert [s.describe() for s in rig.quality.governor.ladder] == [
        "bitrate x1, sensor 30 fps, 320x240", "bitrate x0.5, sensor 30 fps, 320x240",
        "bitrate x0.5, sensor 15 fps, 320x240"]

    rig.load_until_bottom_then_lift(2)

    assert rig.errors == []
    downs = [s for s in rig.steps if s.is_down]
    ups = [s for s in rig.steps if not s.is_down]
    # The log line and alert of each step name the measured cause and the knob.
    assert "queue" in downs[0].cause and downs[0].describe().endswith(": bitrate x1 -> x0.5")
    assert downs[1].describe().endswith(": sensor fps 30 -> 15")
    assert [s.new.level for s in ups][-2:] == [1, 0]
    assert ups[-1].describe().endswith(": bitrate x0.5 -> x1")
    # The driver was really asked: half the bit rate, 15 fps, then both back.
    bitrate = f"s_ctrl {CID_MPEG_VIDEO_BITRATE:#x}"
    assert [e for _, e in device.events("s_ctrl") if e.startswith(bitrate)] == [
        f"{bitrate} 200000", f"{bitrate} 400000"]
    assert [e for _, e in device.events("s_ctrl") if e == f"s_ctrl {CID_MPEG_VIDEO_FORCE_KEY_FRAME:#x}"]
    rates = [e for _, e in device.events("s_parm")]
    assert "s_parm fps=15" in rates and rates[-1] == "s_parm fps=30"
    assert rig.camera.bitrate == BASE_BITRATE and rig.camera.stream_fps == FPS

    stats = rig.pipeline.stats
    files = segments(tmp_path / "rec")
    frames = [f for path in files for f in decoded(path)]
    numbers = [n for _, n, _ in frames]
    # Every frame the camera delivered is recorded once: none dropped, none skipped on purpose
    # (a frame the camera was asked not to make is no frame).
    assert stats.frames_dropped == 0 and stats.frames_decimated == 0
    assert numbers[0] == 0 and gaps(numbers) == []
    assert len(numbers) == stats.frames_recorded == stats.frames_captured == device.frames_served
    # No hole longer than the frame interval in effect: 1/30 s, 1/15 s while slower, none longer.
    deltas = [b - a for (a, _, _), (b, _, _) in itertools.pairwise(frames)]
    assert max(deltas) < 1.0 / 15.0 * 1.25, max(deltas)
    assert min(deltas) > 1.0 / 30.0 * 0.75, min(deltas)
    slow = [d for d in deltas if d > 1.5 / FPS]
    assert len(slow) >= 15 and len(deltas) - len(slow) >= 60
    # Each step starts a new segment at a keyframe, the one the driver was asked for (not the
    # camera's own, every GOP frames): the cut is where the step is.
    assert len(files) == len(rig.steps) + 1
    starts = [decoded(path)[0] for path in files]
    assert all(key for _, _, key in starts)
    assert any(n % GOP for _, n, _ in starts[1:]), starts
    # The footage says what was set: half the bits a second after the bit-rate step, 15 fps
    # declared (and delivered) after the frame-rate step.
    first, halved = bit_rate(files[0]), bit_rate(files[1])
    assert halved < 0.75 * first, (first, halved)
    assert bit_rate(files[-1]) > halved / 0.75, "the climb did not restore the bit rate"
    assert declared_rate(files[2]) == 15.0 and declared_rate(files[-1]) == FPS


def test_a_uvc_driver_takes_a_new_frame_interval_only_with_streaming_stopped(tmp_path: Path) -> None:
    """uvcvideo's kind: no bit-rate control, VIDIOC_S_PARM refused with EBUSY while streaming
    (uvc_ioctl_s_parm). The camera stops streaming, sets the interval and streams again; the
    new stream starts with an IDR, and a new segment with it."""
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, rates=(30.0, 15.0), gop=GOP)
    rig = Rig(tmp_path / "rec", device, kernel)
    assert rig.quality is not None
    assert [s.describe() for s in rig.quality.governor.ladder] == [
        "bitrate x1, sensor 30 fps, 320x240", "bitrate x1, sensor 15 fps, 320x240"]

    rig.load_until_bottom_then_lift(1)

    assert rig.errors == []
    assert rig.camera.stream_restarts >= 2  # down and back up
    assert len(device.events("streamon")) == 1 + rig.camera.stream_restarts
    rates = [e for _, e in device.events("s_parm")]
    assert "s_parm fps=15" in rates and rates[-1] == "s_parm fps=30"
    files = segments(tmp_path / "rec")
    frames = [f for path in files for f in decoded(path)]
    numbers = [n for _, n, _ in frames]
    stats = rig.pipeline.stats
    # Every frame the fake made is recorded once (it streams again at once; a real camera
    # loses the frames of its restart: README "Adaptive quality").
    assert stats.frames_dropped == 0 and gaps(numbers) == []
    assert len(numbers) == stats.frames_recorded == device.frames_served
    assert len(files) == len(rig.steps) + 1 and all(decoded(p)[0][2] for p in files)
    assert declared_rate(files[1]) == 15.0
    # Inside each segment no hole longer than its frame interval. Between two, where the
    # stream restarted, what the driver had made and vigil not yet read went with STREAMOFF
    # (a real camera loses the frames of the restart itself too).
    for path in files:
        times, interval = [t for t, _, _ in decoded(path)], 1.0 / declared_rate(path)
        assert max(b - a for a, b in itertools.pairwise(times)) < interval * 1.25, path


def test_frames_the_driver_lost_count_as_dropped_and_the_h264_after_them_waits_for_a_keyframe(
        tmp_path: Path) -> None:
    """The driver's buffer sequence numbers skip (it had no free buffer: frames captured and
    encoded, never delivered); the packets after the hole refer to what is missing, so the
    camera skips to the next keyframe, counts all of it as dropped, and the ladder steps down
    at once."""
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, rates=(30.0, 15.0), gop=GOP,
                               live_rate=True, controls=BITRATE)
    rig = Rig(tmp_path / "rec", device, kernel)
    rig.pipeline.start()
    rig.wait_until("the first frames", lambda: device.frames_served >= GOP + 5)
    device.lose_frames(3)
    rig.wait_until("a step down", lambda: rig.level == 1)
    served = device.frames_served
    rig.wait_until("frames after the hole", lambda: device.frames_served >= served + 2 * GOP)
    assert rig.pipeline.stop(timeout=10.0).abandoned == ()

    assert rig.errors == []
    assert "frames dropped" in rig.steps[0].cause, rig.steps
    frames = [f for path in segments(tmp_path / "rec") for f in decoded(path)]
    numbers = [n for _, n, _ in frames]
    holes = gaps(numbers)
    assert len(holes) == 1, holes
    before, after = holes[0]
    missing = after - before - 1
    # The three lost and the P-frames up to the next keyframe, where the footage goes on.
    assert missing > 3 and rig.camera.frames_missed == missing == rig.pipeline.stats.frames_dropped
    assert next(key for _, n, key in frames if n == after)
    assert len(numbers) + missing == numbers[-1] + 1


def test_a_step_taken_while_the_reader_is_behind_cuts_at_the_first_frame_made_after_it(
        tmp_path: Path) -> None:
    """The frames waiting in the driver were captured before the change; the time the camera
    hands the pipeline for its cut must fall after them and at or before the first frame made
    with the new settings, which the keyframe button made an IDR."""
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, gop=GOP, live_rate=True,
                               controls={**BITRATE, **FORCE_KEY})
    rig = Rig(tmp_path / "rec", device, kernel)
    camera = rig.camera
    try:
        assert rig.quality is not None
        packets = [camera.read(1.0) for _ in range(3)]
        behind = device.frames_served + 8
        rig.wait_until("8 frames waiting", lambda: time.monotonic() >= packets[-1].timestamp + 9 / FPS)
        cut = camera.apply_quality(rig.quality.governor.ladder[1])
        assert cut is not None
        while device.frames_served < behind + 3:
            packets.append(camera.read(1.0))
    finally:
        camera.close()
    assert all(isinstance(p, EncodedPacket) for p in packets)
    before = [p for p in packets if p.timestamp < cut]
    after = [p for p in packets if p.timestamp >= cut]
    assert len(before) >= 3 + 8 and after, (cut, [p.timestamp for p in packets])
    assert after[0].is_keyframe and not any(p.is_keyframe for p in before[1:])


def test_closing_leaves_the_drivers_bit_rate_as_it_was_found(tmp_path: Path) -> None:
    """Controls outlive the open file: a camera closed at a lowered rung (a stop, a recovery)
    must not leave the next open reading half the bit rate as its configured one."""
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, controls=BITRATE)
    rig = Rig(tmp_path / "rec", device, kernel)
    assert rig.quality is not None
    assert rig.camera.apply_quality(rig.quality.governor.ladder[1]) is not None
    assert device.values[CID_MPEG_VIDEO_BITRATE] == BASE_BITRATE // 2
    rig.camera.close()
    assert device.values[CID_MPEG_VIDEO_BITRATE] == BASE_BITRATE
    rig.camera.open()
    try:
        assert rig.camera.base_bitrate == BASE_BITRATE
    finally:
        rig.camera.close()


@pytest.mark.parametrize("controls", [{}, {CID_MPEG_VIDEO_BITRATE: (
    "Video Bitrate", 25_000, 25_000_000, 25_000, BASE_BITRATE, CTRL_FLAG_READ_ONLY)}],
    ids=["no controls", "read-only bit rate"])
def test_a_driver_with_nothing_settable_gets_no_ladder(tmp_path: Path, controls: dict[
        int, tuple[str, int, int, int, int, int]]) -> None:
    kernel = FakeV4L2()
    device = kernel.add_device(formats={"h264": [(WIDTH, HEIGHT)]}, rates=(30.0, 15.0),
                               timeperframe=False, controls=controls)
    rig = Rig(tmp_path / "rec", device, kernel)
    try:
        assert len(rig.hardware.quality_ladder(rig.camera.mode, rig.camera)) == 1
        assert rig.quality is None and rig.pipeline.quality is None
    finally:
        rig.camera.close()
    assert device.events("s_ctrl") == []
