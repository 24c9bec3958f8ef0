"""The quality ladder and its governor, driven by a simulated clock and a simulated encoder."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import av
import pytest

from hw import framecode
from hw.adaptive import (
    SETTLE_SECONDS,
    AdaptiveSpec,
    LoadMeter,
    LoadSample,
    QualityGovernor,
    QualityStep,
    ThrottleReader,
    build_ladder,
    build_sensor_ladder,
    parse_throttled,
    read_cpu_temperature_c,
)
from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.synthetic import FrameCounter, SyntheticCamera
from tests.specs import recording_spec

SPEC = recording_spec().adaptive  # the schema's defaults
HOUR = 3600.0
# The design's promise (README "Adaptive quality"): under a constant load, however close to
# the threshold, the ladder takes at most this many steps an hour.
MAX_STEPS_PER_HOUR = 12


def ladder_for(mode: CameraMode, spec: AdaptiveSpec = SPEC, *, preset: str = "ultrafast", crf: int = 23,
               hardware: bool = False) -> list[str]:
    return [s.describe() for s in build_ladder(mode, preset=preset, crf=crf, hardware=hardware, spec=spec)]


def test_the_ladder_gives_up_encoder_cost_then_frame_rate_then_size() -> None:
    assert ladder_for(CameraMode(1280, 720, 30), preset="veryfast") == [
        "preset veryfast crf 23, 30 fps, 1280x720",
        "preset superfast crf 23, 30 fps, 1280x720",
        "preset ultrafast crf 23, 30 fps, 1280x720",
        "preset ultrafast crf 28, 30 fps, 1280x720",
        "preset ultrafast crf 28, 15 fps, 1280x720",
        "preset ultrafast crf 28, 10 fps, 1280x720",
        "preset ultrafast crf 28, 10 fps, 960x540",
        "preset ultrafast crf 28, 10 fps, 640x360",
    ]


def test_the_hardware_encoder_gives_up_bit_rate_and_floors_are_kept() -> None:
    spec = replace(SPEC, fps_floor=12.0, height_floor=720)
    assert ladder_for(CameraMode(1280, 720, 25), spec, hardware=True) == [
        "preset ultrafast crf 23, 25 fps, 1280x720",
        "preset ultrafast crf 23 bitrate x0.5, 25 fps, 1280x720",
        "preset ultrafast crf 23 bitrate x0.5, 12.5 fps, 1280x720",
    ]


def test_adaptation_off_is_a_ladder_of_one_step() -> None:
    assert ladder_for(CameraMode(640, 480, 30), replace(SPEC, enabled=False)) == [
        "preset ultrafast crf 23, 30 fps, 640x480"]


def sensor_ladder(mode: CameraMode, spec: AdaptiveSpec = SPEC, lores_fps: float = 4.0) -> list[str]:
    return [s.describe() for s in build_sensor_ladder(mode, lores_fps=lores_fps, spec=spec)]


def test_the_pi_cameras_ladder_gives_up_bit_rate_then_lores_sampling_then_sensor_rate() -> None:
    assert sensor_ladder(CameraMode(1920, 1080, 30, "packets")) == [
        "bitrate x1, sensor 30 fps, lores sampled at 4 fps, 1920x1080",
        "bitrate x0.5, sensor 30 fps, lores sampled at 4 fps, 1920x1080",
        "bitrate x0.5, sensor 30 fps, lores sampled at 2 fps, 1920x1080",
        "bitrate x0.5, sensor 15 fps, lores sampled at 2 fps, 1920x1080",
        "bitrate x0.5, sensor 10 fps, lores sampled at 2 fps, 1920x1080",
    ]
    # Its size is the sensor stream's: no rung scales it, whatever height_floor says.
    ladder = build_sensor_ladder(CameraMode(1920, 1080, 30, "packets"), lores_fps=4.0,
                                 spec=replace(SPEC, height_floor=2))
    assert {(s.width, s.height, s.decimation) for s in ladder} == {(1920, 1080, 1)}
    assert all(s.packets for s in ladder)


def test_the_pi_cameras_floors_are_kept_and_off_is_one_step() -> None:
    spec = replace(SPEC, bitrate_floor_fraction=1.0, fps_floor=12.0)
    assert sensor_ladder(CameraMode(1280, 720, 25, "packets"), spec, lores_fps=1.0) == [
        "bitrate x1, sensor 25 fps, lores sampled at 1 fps, 1280x720",
        "bitrate x1, sensor 12.5 fps, lores sampled at 1 fps, 1280x720",
    ]
    assert sensor_ladder(CameraMode(1280, 720, 25, "packets"), replace(SPEC, enabled=False)) == [
        "bitrate x1, sensor 25 fps, lores sampled at 4 fps, 1280x720"]


def packet_sample(at: float, *, queue: int = 0, dropped: int = 0, lag: float = 0.0) -> LoadSample:
    """What the pipeline measures on the packet path: no encode time of its own (picamera2
    encodes), the frame interval of the sensor's rate, the encoder's lag."""
    return LoadSample(at, queue, 180, dropped, 0.0, 1 / 30, None, "", lag)


def sensor_governor(spec: AdaptiveSpec = SPEC) -> QualityGovernor:
    return QualityGovernor(build_sensor_ladder(CameraMode(1920, 1080, 30, "packets"), lores_fps=4.0,
                                               spec=spec), spec)


def test_the_pi_cameras_encoder_lag_steps_down_when_it_lasts_and_climbs_back_when_calm() -> None:
    gov = sensor_governor()
    assert gov.observe(packet_sample(0.0, lag=0.8)) is None
    assert gov.observe(packet_sample(1.0, lag=0.8)) is None
    change = gov.observe(packet_sample(2.0, lag=0.9))
    assert change is not None and change.describe() == (
        "encoder 0.9 s behind its frames for 2 s: bitrate x1 -> x0.5")
    change = gov.observe(packet_sample(3.0, queue=100, dropped=2))
    assert change is None  # settling: the next verdict waits for the queue to show the step
    change = gov.observe(packet_sample(5.0, queue=100, dropped=2))
    assert change is not None and change.describe() == (
        "2 frames dropped, queue 100/180 for 2 s: lores sampling 4 -> 2 fps")
    change = gov.observe(packet_sample(8.0, dropped=1))
    assert change is not None and change.describe() == "1 frames dropped: sensor fps 30 -> 15"
    assert gov.step.fps == 15 and gov.step.decimation == 1
    # A lag between the calm and the busy marks holds the rung: no step either way.
    t = 8.0
    for _ in range(int(SPEC.up_after_seconds) * 3):
        t += 1.0
        assert gov.observe(packet_sample(t, lag=0.3)) is None
    # Calm (no lag, an empty queue) for up_after_seconds: one step up, the sensor's rate back.
    changes = []
    for _ in range(int(SPEC.up_after_seconds) + 2):
        t += 1.0
        change = gov.observe(packet_sample(t))
        if change is not None:
            changes.append(change)
    assert [c.describe().split(": ")[-1] for c in changes] == ["sensor fps 15 -> 30"]


def test_the_load_meter_passes_the_encoder_lag_on() -> None:
    meter = LoadMeter(temperature=lambda: None, throttle=lambda now: "")
    args = dict(queue_depth=3, queue_size=180, dropped_total=0, encoded_total=10,
                encode_seconds_total=0.0, frame_interval=1 / 30)
    assert meter.sample(0.0, **args, lag_seconds=0.1) is None  # type: ignore[arg-type]
    got = meter.sample(1.0, **{**args, "encoded_total": 40}, lag_seconds=0.7)  # type: ignore[arg-type]
    assert got is not None and got.lag_seconds == 0.7 and got.encode_ratio == 0.0


def sample(at: float, *, queue: int = 0, dropped: int = 0, encode: float = 0.005, interval: float = 1 / 30,
           temperature: float | None = None, throttled: str = "") -> LoadSample:
    return LoadSample(at, queue, 60, dropped, encode, interval, temperature, throttled)


def governor(spec: AdaptiveSpec = SPEC) -> QualityGovernor:
    return QualityGovernor(build_ladder(CameraMode(640, 480, 30), preset="ultrafast", crf=23,
                                        hardware=False, spec=spec), spec)


def test_a_dropped_frame_steps_down_at_once_and_says_why() -> None:
    gov = governor()
    assert gov.observe(sample(0.0)) is None
    change = gov.observe(sample(1.0, queue=60, dropped=3))
    assert change is not None and change.is_down
    assert change.describe() == "3 frames dropped: crf 23 -> 28"
    assert gov.level == 1


def test_a_full_queue_or_a_hot_cpu_steps_down_only_when_it_lasts() -> None:
    gov = governor()
    assert gov.observe(sample(0.0, queue=40)) is None
    assert gov.observe(sample(1.0, queue=40)) is None
    change = gov.observe(sample(2.0, queue=45, temperature=85.0))
    assert change is not None and change.describe() == "queue 45/60 for 2 s: crf 23 -> 28"
    # The next step waits for the queue to show what the first one did.
    assert gov.observe(sample(2.0 + SETTLE_SECONDS / 2, temperature=85.0, dropped=1)) is None
    change = gov.observe(sample(5.0, temperature=85.0))
    assert change is not None and change.describe() == "CPU 85 °C: fps 30 -> 15"
    change = gov.observe(sample(8.0, throttled="throttled (0x4)"))
    assert change is None  # throttling just began: it must last down_after_seconds
    change = gov.observe(sample(10.0, throttled="throttled (0x4)"))
    assert change is not None and change.describe() == "firmware reports throttled (0x4): fps 15 -> 10"


def test_encode_time_above_the_interval_steps_down() -> None:
    gov = governor()
    gov.observe(sample(0.0, encode=0.05))
    gov.observe(sample(1.0, encode=0.05))
    change = gov.observe(sample(2.0, encode=0.05))
    assert change is not None
    assert change.cause == "encode 50 ms per frame for a 33 ms interval for 2 s"


def test_steps_up_only_after_a_calm_period_with_headroom() -> None:
    gov = governor()
    gov.observe(sample(0.0, dropped=5))  # to crf 28
    gov.observe(sample(3.0, dropped=5))  # to 15 fps
    assert gov.step.fps == 15
    t = 3.0
    # At 15 fps an encode time of 30 ms is 45 % of the interval: 30 fps would need 90 %, over
    # the headroom, so it stays however long it lasts.
    for _ in range(300):
        t += 1.0
        assert gov.observe(sample(t, encode=0.030, interval=1 / 15)) is None
    # Lighter load: 20 ms would be 60 % at 30 fps; after up_after_seconds of it, one step up.
    changes = []
    for _ in range(int(SPEC.up_after_seconds) + 2):
        t += 1.0
        change = gov.observe(sample(t, encode=0.020, interval=1 / 15))
        if change is not None:
            changes.append(change)
    assert len(changes) == 1 and not changes[0].is_down
    assert changes[0].describe().endswith("fps 15 -> 30")
    assert changes[0].cause.startswith(f"calm for {SPEC.up_after_seconds:.0f} s")


class SimulatedEncoder:
    """A queue in front of an encoder whose time per frame depends on the rung and the load.

    `cost(level, t)` is the encode time of one frame at rung `level` at time `t`; the
    camera delivers 30 frames a second; decimated frames never reach the queue.
    """

    def __init__(self, gov: QualityGovernor, cost: object, queue_size: int = 60) -> None:
        self.gov = gov
        self.cost = cost
        self.queue = 0.0
        self.queue_size = queue_size
        self.dropped = 0

    def run(self, seconds: float, start: float = 0.0) -> int:
        """Steps taken in `seconds` of simulated time, sampled once a second."""
        steps = 0
        t = start
        while t < start + seconds:
            t += 1.0
            step = self.gov.step
            interval = step.decimation / 30.0
            encode = self.cost(step.level, t)  # type: ignore[operator]
            arrivals = 30.0 / step.decimation
            served = 1.0 / encode
            self.queue += arrivals - served
            dropped = 0
            if self.queue > self.queue_size:
                dropped = round(self.queue - self.queue_size)
                self.queue = float(self.queue_size)
            self.queue = max(0.0, self.queue)
            self.dropped += dropped
            change = self.gov.observe(LoadSample(t, round(self.queue), self.queue_size, dropped, encode,
                                                 interval))
            steps += change is not None
        return steps


# What a rung costs relative to the top one, for the 640x480 ladder above (crf 28, 15, 10 fps).
RUNG_COST = (1.0, 0.93, 0.93, 0.93)


@pytest.mark.parametrize("load", [0.98, 1.0, 1.02, 1.05, 1.2])
def test_a_constant_load_near_the_threshold_does_not_oscillate(load: float) -> None:
    rng = random.Random(16)
    gov = governor()

    def cost(level: int, t: float) -> float:
        # `load` x the frame interval at the top rung, with 5 % noise from sample to sample.
        return load / 30.0 * RUNG_COST[level] * rng.uniform(0.95, 1.05)

    sim = SimulatedEncoder(gov, cost)
    first_hour = sim.run(HOUR)
    later_hours = [sim.run(HOUR, start=HOUR * h) for h in range(1, 4)]
    assert first_hour <= MAX_STEPS_PER_HOUR
    assert all(steps <= MAX_STEPS_PER_HOUR for steps in later_hours)
    assert sum(later_hours) <= 3, f"still stepping hours later: {later_hours}"


def test_a_load_that_returns_at_every_step_up_is_retried_ever_more_rarely() -> None:
    """The worst case for hysteresis: the full rate looks affordable from below (a cheap
    scene, a cool CPU) but overloads once taken. Failed steps up double the calm asked for."""
    gov = governor()
    up_since: list[float] = [0.0]

    def cost(level: int, t: float) -> float:
        if level == 0:
            if not up_since:
                up_since.append(t)
            # Fine for 20 s after each step up, then twice too slow.
            return 0.01 if t - up_since[0] < 20 else 0.066
        up_since.clear()
        return 0.01

    sim = SimulatedEncoder(gov, cost)
    hours = [sim.run(HOUR, start=HOUR * h) for h in range(3)]
    assert all(steps <= MAX_STEPS_PER_HOUR for steps in hours), hours
    assert hours[2] <= 4, f"failed steps up should back off: {hours}"


def test_throttle_flags_name_what_limits_the_cpu_now() -> None:
    assert parse_throttled("throttled=0x0\n") == ""
    assert parse_throttled("throttled=0x50000\n") == ""  # only "since boot" bits
    assert parse_throttled("throttled=0x50005\n") == "under-voltage, throttled (0x50005)"
    assert parse_throttled("garbage") == ""


def test_the_throttle_reader_asks_vcgencmd_at_most_every_ten_seconds() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return "throttled=0x4\n"

    reader = ThrottleReader("/usr/bin/vcgencmd", run=run)
    assert reader.read(0.0) == "throttled (0x4)"
    assert reader.read(5.0) == "throttled (0x4)"
    assert len(calls) == 1 and calls[0] == ["/usr/bin/vcgencmd", "get_throttled"]
    reader.read(10.0)
    assert len(calls) == 2
    assert ThrottleReader(None).read(0.0) == ""  # no vcgencmd here: nothing runs


def test_the_hottest_thermal_zone_is_the_cpu_temperature(tmp_path: Path) -> None:
    for name, milli in (("thermal_zone0", "48500"), ("thermal_zone1", "61250"), ("thermal_zone2", "bad")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "temp").write_text(milli + "\n")
    assert read_cpu_temperature_c(tmp_path) == 61.25
    assert read_cpu_temperature_c(tmp_path / "none") is None


def test_the_load_meter_reports_each_period_from_running_totals() -> None:
    meter = LoadMeter(temperature=lambda: 55.0, throttle=lambda now: "")
    kw = {"queue_size": 60, "frame_interval": 1 / 30}
    assert meter.sample(10.0, queue_depth=0, dropped_total=4, encoded_total=100,
                        encode_seconds_total=1.0, **kw) is None  # the first call starts a period
    assert meter.sample(10.5, queue_depth=3, dropped_total=4, encoded_total=115,
                        encode_seconds_total=1.3, **kw) is None
    s = meter.sample(11.0, queue_depth=12, dropped_total=9, encoded_total=130,
                     encode_seconds_total=1.6, **kw)
    assert s is not None
    assert (s.queue_depth, s.dropped, s.temperature_c) == (12, 5, 55.0)
    assert s.encode_seconds == pytest.approx(0.02)
    assert s.encode_ratio == pytest.approx(0.6)
    # Nothing encoded while frames waited: the encoder was stuck the whole period.
    s = meter.sample(12.0, queue_depth=30, dropped_total=9, encoded_total=130,
                     encode_seconds_total=1.6, **kw)
    assert s is not None and s.encode_seconds == pytest.approx(1.0)


def test_a_size_step_scales_frames_in_the_encoder_and_the_frame_code_survives(tmp_path: Path) -> None:
    camera_mode = CameraMode(640, 480, 30)
    steps = build_ladder(camera_mode, preset="ultrafast", crf=23, hardware=False,
                         spec=replace(SPEC, height_floor=240))
    step = steps[-1]
    assert (step.width, step.height, step.fps) == (320, 240, 10)
    encoder = H264Encoder(step.encoder_mode(), fragment_seconds=1.0, input_size=(640, 480))
    camera = SyntheticCamera(camera_mode, paced=False, counter=FrameCounter())
    camera.open()
    data = bytearray()
    for i in range(20):
        frame = camera.read(1.0)
        frame.timestamp = i * 0.1
        for packet in encoder.encode(frame):
            data += packet.data
    for packet in encoder.flush():
        data += packet.data
    path = tmp_path / "scaled.h264"
    path.write_bytes(bytes(data))
    with av.open(str(path), format="h264") as container:
        decoded = list(container.decode(video=0))
    assert {(f.width, f.height) for f in decoded} == {(320, 240)}
    numbers = [framecode.read_video_frame(f.reformat(width=640, height=480)) for f in decoded]
    assert numbers == list(range(20))


class SimulatedPacketPath:
    """The Pi camera's packet queue in front of a recorder, on a simulated clock.

    The sensor delivers `step.fps` packets a second; the recorder needs `cost(step, t)`
    seconds a packet (a lower bit rate makes packets cheaper to handle, a lower sensor rate
    makes fewer of them); what does not fit in the queue is dropped.
    """

    def __init__(self, gov: QualityGovernor, cost: object, queue_size: int = 180) -> None:
        self.gov = gov
        self.cost = cost
        self.queue = 0.0
        self.queue_size = queue_size
        self.dropped = 0

    def run(self, seconds: float, start: float = 0.0) -> int:
        steps = 0
        t = start
        while t < start + seconds:
            t += 1.0
            step = self.gov.step
            self.queue += step.fps - 1.0 / self.cost(step, t)  # type: ignore[operator]
            dropped = 0
            if self.queue > self.queue_size:
                dropped = round(self.queue - self.queue_size)
                self.queue = float(self.queue_size)
            self.queue = max(0.0, self.queue)
            self.dropped += dropped
            change = self.gov.observe(LoadSample(t, round(self.queue), self.queue_size, dropped, 0.0,
                                                 1.0 / step.fps))
            steps += change is not None
        return steps


# The Pi camera's ladder (README "Adaptive quality"): when its top rung never fits, three
# steps down, then the step back up tried and taken back after 1, 2, 4, 8 and 16 calm
# periods: at most 13 steps in an hour; by the fourth hour the wait is 32 periods or more,
# one try (two steps) an hour at most.
PI_MAX_STEPS_PER_HOUR = 13
PI_MAX_STEPS_FOURTH_HOUR = 2


@pytest.mark.parametrize("load", [0.98, 1.0, 1.01, 1.02, 1.05, 1.2, 1.6])
def test_the_pi_cameras_ladder_under_a_constant_load_does_not_oscillate(load: float) -> None:
    """A load that fills the packet queue only slowly (1.01: 0.3 packets a second) must not
    pass a step up as held before the queue has shown it; a queue that still drains what an
    earlier step left is no reason for another step down."""
    rng = random.Random(5)
    gov = sensor_governor()

    def cost(step: QualityStep, t: float) -> float:
        # `load` x the frame interval at the top rung; half the bit rate saves a tenth.
        relief = 0.8 + 0.2 * step.bit_rate_scale
        return load / 30.0 * relief * rng.uniform(0.95, 1.05)

    sim = SimulatedPacketPath(gov, cost)
    first_hour = sim.run(HOUR)
    later_hours = [sim.run(HOUR, start=HOUR * h) for h in range(1, 4)]
    assert first_hour <= PI_MAX_STEPS_PER_HOUR
    assert all(steps <= PI_MAX_STEPS_PER_HOUR for steps in later_hours), later_hours
    assert later_hours[-1] <= PI_MAX_STEPS_FOURTH_HOUR, later_hours
    assert sim.dropped == 0
    # Never below the rung that fits: 15 fps carries any of these loads.
    assert gov.step.fps >= 15
