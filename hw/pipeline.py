"""The recording path: camera -> validator -> bounded queue -> encoder -> segment writer.

Two named threads: capture (camera reads and validation) and encode (libx264 and muxing;
PyAV releases the GIL while encoding, so the stages overlap). Neither raises into anyone:
errors are reported through `when_error(category, reason)` and a stage that cannot go on
marks the pipeline dead. Stopping never blocks forever: a thread stuck in a hung driver call
is abandoned after its timeout and named in the StopReport.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from hw.adaptive import LoadMeter, PacketLoad, QualityGovernor, QualityStep, StepChange
from hw.camera import Camera, CameraMode, EncodedPacket, Frame
from hw.encoder import H264Encoder
from hw.errors import CameraError, CameraTimeout, EncoderError, StorageError
from hw.validate import FrameValidator
from hw.writer import SegmentWriter

ErrorSink = Callable[[str, str], None]
StepSink = Callable[[StepChange], None]
EncoderMaker = Callable[[QualityStep], H264Encoder]
_STOP = object()
STOP_GRACE_SECONDS = 1.0


@dataclass
class PipelineStats:
    """Counters a status page or the health score reads; written by the pipeline threads."""

    frames_captured: int = 0
    frames_invalid: int = 0
    frames_dropped: int = 0
    frames_recorded: int = 0
    # Frames the quality ladder skipped on purpose (frame-rate decimation): not dropped.
    frames_decimated: int = 0
    quality_level: int = 0
    quality_steps: int = 0
    last_frame_monotonic: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class RecordingOutput:
    """An encoder and segment writer kept open across a camera loss, to resume into.

    A camera that comes back in the same mode continues the open segment (with a gap in its
    timestamps) instead of starting a new file for every reopen.
    """

    mode: CameraMode
    encoder: H264Encoder | None
    writer: SegmentWriter
    quality_level: int = 0  # the ladder's rung the encoder was set for

    @property
    def open_path(self) -> Path | None:
        return self.writer.open_path

    def fits(self, mode: CameraMode) -> bool:
        """Whether a camera delivering `mode` can continue into this output (a new pipeline
        starts at the top of the quality ladder, so an encoder stepped down does not fit)."""
        return mode == self.mode and not self.writer.is_dead and self.quality_level == 0

    def close(self, when_error: ErrorSink) -> object | None:
        """Finish the open segment (flushing the encoder into it); storage errors are reported."""
        return _close_output(self.encoder, self.writer, when_error, flush=True)


@dataclass(frozen=True)
class _QualityCut:
    """Queued by the capture thread where a quality step takes effect: the encode thread
    finishes the segment there and carries on with an encoder set for `step`."""

    step: QualityStep


@dataclass(frozen=True)
class _StreamCut:
    """Queued by the capture thread before the first packet of a changed stream (a camera
    that encodes itself took a quality step): the writer starts a new segment at its
    keyframe, so each segment holds one stream's parameters."""

    step: QualityStep


@dataclass
class QualityControl:
    """What a pipeline needs to adapt its quality: the governor, a load meter and a way to
    open an encoder for a step (hw.factory builds it from the config's ladder).

    A camera that encodes itself (picamera2) sets its own knobs instead: `apply` takes the
    step and answers the timestamp of the new stream's first packet when the step cut it
    (None: the stream goes on, e.g. a sensor frame-rate change); the pipeline reads its load
    from the camera's `packet_load()`.
    """

    governor: QualityGovernor
    make_encoder: EncoderMaker | None
    meter: LoadMeter = field(default_factory=LoadMeter)
    when_step: StepSink | None = None
    # Told the sequence number of each frame decimated (a test's record of what was skipped).
    when_decimated: Callable[[int], None] | None = None
    apply: Callable[[QualityStep], float | None] | None = None

    @property
    def for_packets(self) -> bool:
        return self.apply is not None


@dataclass(frozen=True)
class StopReport:
    """How a stop went: threads that would not end, calls that were abandoned, and the
    output kept open when the stop was asked to keep it."""

    abandoned: tuple[str, ...] = ()
    closed_segment: object | None = None
    kept: RecordingOutput | None = None


class RecordingPipeline:
    """Moves frames or packets from one camera into one segment writer until stopped."""

    def __init__(
        self,
        camera: Camera,
        writer: SegmentWriter,
        *,
        encoder: H264Encoder | None,
        validator: FrameValidator | None,
        when_error: ErrorSink,
        queue_frames: int = 60,
        read_timeout: float = 2.0,
        quality: QualityControl | None = None,
    ) -> None:
        self.camera = camera
        self.writer = writer
        self.encoder = encoder
        self.validator = validator
        self.when_error = when_error
        self.read_timeout = read_timeout
        self.stats = PipelineStats()
        # The newest frame that passed validation, for snapshots: a reference, never a copy,
        # so the capture thread pays one attribute store per frame.
        self.latest_frame: Frame | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_frames)
        # A camera that encodes itself reports what it lost before the pipeline saw it
        # (picamera2: packets its full queue dropped, frames that never reached its encoder);
        # they count as dropped here, from what it had lost when this pipeline started.
        self._camera_load: Callable[[], PacketLoad] | None = getattr(camera, "packet_load", None)
        self._camera_drops = 0
        self.quality = quality if encoder is not None or (
            quality is not None and quality.for_packets and self._camera_load is not None) else None
        self._cut_at: tuple[float, QualityStep] | None = None  # a packet camera's stream cut
        self._decimation = 1
        self._decimation_count = 0
        self._pending_step: QualityStep | None = None
        # Written by the encode thread only; the capture thread reads them for the meter.
        self._encode_seconds = 0.0
        self._encoded = 0
        self._stop = threading.Event()
        self._dead = threading.Event()
        self._output_failed = threading.Event()
        self._capture = threading.Thread(target=self._capture_loop, name="vigil-capture", daemon=True)
        self._encode = threading.Thread(target=self._encode_loop, name="vigil-encode", daemon=True)
        self._hung_closes: list[threading.Thread] = []  # camera.close() calls abandoned by stop()
        self._started = False
        # A writer resumed from an earlier run has counted already; this run counts from here.
        self._writer_base = (writer.segments_closed, writer.bytes_written)

    def __repr__(self) -> str:
        state = "dead" if self.is_dead else ("running" if self.is_running else "stopped")
        return f"<RecordingPipeline {self.camera.name} {state} frames={self.stats.frames_recorded}>"

    @property
    def is_running(self) -> bool:
        return self._started and not self._stop.is_set() and not self._dead.is_set()

    @property
    def is_dead(self) -> bool:
        return self._dead.is_set()

    @property
    def segments_closed(self) -> int:
        """Segments closed during this run (a resumed writer's earlier ones not counted)."""
        return self.writer.segments_closed - self._writer_base[0]

    @property
    def bytes_written(self) -> int:
        """Bytes written during this run."""
        return self.writer.bytes_written - self._writer_base[1]

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return (self._capture, self._encode, *self._hung_closes)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a pipeline starts once; make a new one")
        self._started = True
        self.stats.last_frame_monotonic = time.monotonic()
        if self._camera_load is not None:
            self._camera_drops = self._camera_load().dropped_total
        # A camera that checks a side stream of its own (the Pi's lores) reports its verdicts
        # here and hands over its newest checked frame for snapshots.
        attach = getattr(self.camera, "attach_sinks", None)
        if attach is not None:
            attach(when_error=self.when_error, when_frame=self._keep_latest_frame)
        self._encode.start()
        self._capture.start()

    def _keep_latest_frame(self, frame: Frame) -> None:
        self.latest_frame = frame

    def _fail(self, category: str, reason: str) -> None:
        self._dead.set()
        self.when_error(category, reason)

    def _fail_output(self, category: str, reason: str) -> None:
        self._output_failed.set()
        self._fail(category, reason)

    def _capture_loop(self) -> None:
        camera, validator, stats, q = self.camera, self.validator, self.stats, self._queue
        resync = False  # an encoded packet was dropped: skip to the next keyframe
        while not self._stop.is_set():
            try:
                item = camera.read(self.read_timeout)
            except CameraTimeout as err:
                self.when_error(err.category, str(err))
                continue
            except CameraError as err:
                self._fail(err.category, str(err))
                return
            except Exception as err:  # a backend bug must not kill recording silently
                self._fail("camera_lost", f"camera read raised {err!r}")
                return
            stats.frames_captured += 1
            stats.last_frame_monotonic = time.monotonic()
            if isinstance(item, Frame):
                verdict = validator.check(item) if validator is not None else None
                if verdict is not None:
                    self.when_error(verdict.category, verdict.reason)
                    if verdict.drops_frame:
                        stats.frames_invalid += 1
                        continue
                self.latest_frame = item
                # Load is a matter of real time, whatever clock the camera stamps frames with.
                if self.quality is not None and self._adapt(time.monotonic()):
                    stats.frames_decimated += 1
                    if self.quality.when_decimated is not None:
                        self.quality.when_decimated(item.sequence)
                    continue
            elif self._camera_load is not None:
                load = self._camera_load()
                if load.dropped_total > self._camera_drops:
                    stats.frames_dropped += load.dropped_total - self._camera_drops
                    self._camera_drops = load.dropped_total
                if self.quality is not None and self.quality.for_packets:
                    self._adapt_packets(time.monotonic(), item, load)
            if resync and isinstance(item, EncodedPacket):
                if not item.is_keyframe:
                    stats.frames_dropped += 1  # refers to a frame that was dropped: undecodable
                    continue
                resync = False
            try:
                q.put_nowait(item)
            except queue.Full:
                stats.frames_dropped += 1
                # The packets after a dropped one refer to it until the next keyframe: they go
                # too, or the footage would hold frames that do not decode.
                resync = isinstance(item, EncodedPacket)

    def _adapt(self, now: float) -> bool:
        """Measure, maybe take a quality step, and say whether this frame is decimated.

        Runs on the capture thread, which owns the decimation: a step is queued as a cut
        before the first frame it applies to, so the encode thread switches exactly there.
        """
        quality = self.quality
        assert quality is not None
        if self._pending_step is None:
            sample = quality.meter.sample(
                now, queue_depth=self._queue.qsize(), queue_size=self._queue.maxsize,
                dropped_total=self.stats.frames_dropped, encoded_total=self._encoded,
                encode_seconds_total=self._encode_seconds,
                frame_interval=self._decimation / self.camera.mode.fps)
            change = quality.governor.observe(sample) if sample is not None else None
            if change is not None:
                self._pending_step = change.new
                self._took_step(quality, change)
        if self._pending_step is not None:
            try:
                self._queue.put_nowait(_QualityCut(self._pending_step))
            except queue.Full:
                pass  # the encoder is behind: the cut goes in at the next frame
            else:
                self._decimation = self._pending_step.decimation
                self._decimation_count = 0
                self._pending_step = None
        keep = self._decimation_count % self._decimation == 0
        self._decimation_count += 1
        return not keep

    def _took_step(self, quality: QualityControl, change: StepChange) -> None:
        """Count, log and report a step the governor took (either path)."""
        self.stats.quality_level = change.new.level
        self.stats.quality_steps += 1
        logger.warning("quality step {} level={} {}", "down" if change.is_down else "up",
                       change.new.level, change.describe())
        if quality.when_step is not None:
            quality.when_step(change)

    def _adapt_packets(self, now: float, packet: EncodedPacket, load: PacketLoad) -> None:
        """The packet path's measure-and-step, on the capture thread before `packet` is queued.

        The camera applies a step itself; a step that cut its stream queues a _StreamCut
        before the first packet of the new stream (found by its timestamp), one that changed
        the sensor's rate queues it at once (the next keyframe starts the new segment).
        """
        quality = self.quality
        assert quality is not None and quality.apply is not None
        if self._cut_at is not None and packet.timestamp >= self._cut_at[0]:
            self._put_cut(self._cut_at[1])
            self._cut_at = None
        governor = quality.governor
        sample = quality.meter.sample(
            now, queue_depth=load.queue_depth + self._queue.qsize(),
            queue_size=load.queue_size + self._queue.maxsize,
            dropped_total=self.stats.frames_dropped,
            encoded_total=self.stats.frames_recorded, encode_seconds_total=0.0,
            frame_interval=1.0 / governor.step.fps, lag_seconds=load.lag_seconds)
        change = governor.observe(sample) if sample is not None else None
        if change is None:
            return
        self._took_step(quality, change)
        try:
            cut = quality.apply(change.new)
        except Exception as err:  # the camera's library failing must not stop recording
            logger.opt(exception=err).error("applying quality level={} failed", change.new.level)
            return
        if cut is not None:
            self._cut_at = (cut, change.new)
        elif change.new.fps != change.old.fps:
            self._put_cut(change.new)

    def _put_cut(self, step: QualityStep) -> None:
        try:
            self._queue.put(_StreamCut(step), timeout=self.read_timeout)
        except queue.Full:
            logger.warning("the writer is behind: quality level={} starts no new segment", step.level)

    def _encode_loop(self) -> None:
        encoder, writer, stats, q = self.encoder, self.writer, self.stats, self._queue
        while True:
            item = q.get()
            if item is _STOP:
                break
            if self._output_failed.is_set():
                continue  # keep draining so the capture side never blocks
            try:
                if isinstance(item, _QualityCut):
                    encoder = self._cut(item.step)
                    continue
                if isinstance(item, _StreamCut):
                    step = item.step
                    writer.restream(step.width, step.height, step.fps)
                    continue
                if encoder is not None and isinstance(item, Frame):
                    started = time.perf_counter()
                    packets = encoder.encode(item)
                elif isinstance(item, EncodedPacket):
                    packets = [item]
                else:
                    raise EncoderError(f"camera handed over {type(item).__name__}")
                for packet in packets:
                    writer.write(packet)
                stats.frames_recorded += len(packets)
                if encoder is not None and isinstance(item, Frame):
                    self._encode_seconds += time.perf_counter() - started
                    self._encoded += 1
            except StorageError as err:
                self._fail_output(err.category, str(err))
            except EncoderError as err:
                self._fail_output(err.category, str(err))
            except Exception as err:
                self._fail_output("encoder_error", f"encode/write raised {err!r}")

    def _cut(self, step: QualityStep) -> H264Encoder:
        """Finish the open segment with the old encoder and open one for `step`: the new
        encoder starts on a keyframe, which starts the next segment in the new parameters."""
        assert self.encoder is not None and self.quality is not None
        assert self.quality.make_encoder is not None
        for packet in self.encoder.flush():
            self.writer.write(packet)
            self.stats.frames_recorded += 1
        self.writer.restream(step.width, step.height, step.fps)
        self.encoder = self.quality.make_encoder(step)
        logger.info("encoder reopened for quality level={} {}", step.level, step.describe())
        return self.encoder

    def stop(self, timeout: float = 5.0, *, keep_output: bool = False) -> StopReport:
        """Stop both threads, close the segment and the camera; never blocks past `timeout`.

        With `keep_output`, a healthy encoder and writer are left open and handed back in the
        report (`kept`) for the next pipeline to resume into; a failed one, or one whose stop
        abandoned a hung thread, is closed as usual.
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        abandoned: list[str] = []
        if self._started:
            self._capture.join(max(0.0, min(self.read_timeout + STOP_GRACE_SECONDS,
                                             deadline - time.monotonic())))
            if self._capture.is_alive():
                abandoned.append(self._capture.name)
            self._put_stop(deadline)
            self._encode.join(max(0.0, deadline - time.monotonic()))
            if self._encode.is_alive():
                abandoned.append(self._encode.name)
        closed = None
        kept = None
        finish = getattr(self.camera, "finish_encoding", None)
        tail: list[EncodedPacket] = []
        if finish is not None:
            # A camera with its own encoder (picamera2's LibavH264Encoder: libx264 holds a few
            # frames for its threads) hands those over when it stops encoding: they go into
            # the segment before it closes. Stopping may hang like the rest of the close.
            flushed = threading.Event()

            def finish_and_close() -> None:
                try:
                    tail.extend(finish())
                finally:
                    flushed.set()
                self.camera.close()

            if not close_with_timeout(finish_and_close, max(0.5, deadline - time.monotonic()),
                                      name="vigil-camera-close", hung=self._hung_closes):
                abandoned.append("vigil-camera-close")
            if not flushed.is_set():
                tail = []
        if self._encode.is_alive():
            self.writer.abandon()
        elif (keep_output and not abandoned and not self._output_failed.is_set()
              and not self.writer.is_dead):
            if self._write_tail(tail):
                kept = RecordingOutput(self.camera.mode, self.encoder, self.writer,
                                       self.stats.quality_level)
        else:
            closed = self._close_writer(tail)
        if finish is None and not close_with_timeout(
                self.camera.close, max(0.5, deadline - time.monotonic()),
                name="vigil-camera-close", hung=self._hung_closes):
            abandoned.append("vigil-camera-close")
        for name in abandoned:
            logger.error("abandoned a hung call thread={} (it may still hold the device)", name)
        return StopReport(tuple(abandoned), closed, kept)

    def _put_stop(self, deadline: float) -> None:
        while self._encode.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    return

    def _close_writer(self, tail: list[EncodedPacket] | None = None) -> object | None:
        if tail and not self._write_tail(tail):
            return None
        return _close_output(self.encoder, self.writer, self.when_error,
                             flush=not self._output_failed.is_set())

    def _write_tail(self, tail: list[EncodedPacket]) -> bool:
        """Write what the camera's own encoder handed over as it stopped; False if that failed."""
        if self._output_failed.is_set():
            return True
        try:
            for packet in tail:
                self.writer.write(packet)
        except (StorageError, EncoderError) as err:
            self.when_error(err.category, f"closing segment: {err}")
            self.writer.abandon()
            return False
        self.stats.frames_recorded += len(tail)
        return True


def _close_output(encoder: H264Encoder | None, writer: SegmentWriter, when_error: ErrorSink, *,
                  flush: bool) -> object | None:
    """Flush `encoder` into `writer` (when `flush`) and close the writer's open segment."""
    try:
        if encoder is not None and flush:
            for packet in encoder.flush():
                writer.write(packet)
        return writer.close()
    except (StorageError, EncoderError) as err:
        when_error(err.category, f"closing segment: {err}")
        writer.abandon()
        return None


def close_with_timeout(close: Callable[[], None], timeout: float, *, name: str,
                       hung: list[threading.Thread] | None = None) -> bool:
    """Run a close call that might hang in its own thread; False if it did not return.

    The abandoned thread goes into `hung`, so whoever verifies cleanup knows it was given up.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            close()
        except Exception as err:
            errors.append(err)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() and hung is not None:
        hung.append(worker)
    if errors:
        logger.warning("close raised during cleanup call={} error={!r}", name, errors[0])
    return not worker.is_alive()
