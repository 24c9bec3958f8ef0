"""The one place a camera backend is chosen and the recording path is assembled."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loguru import logger

from hw.adaptive import AdaptiveSpec, LoadMeter, QualityGovernor, QualityStep, build_ladder
from hw.camera import Camera, CameraMode
from hw.encoder import LIBX264, EncoderChoice, H264Encoder, choose_encoder, probe_m2m_encoder
from hw.errors import BackendUnavailable, CameraUnavailable, EncoderError
from hw.filecam import FileCamera
from hw.integrity import Chain, Signer, newest_link
from hw.pipeline import ErrorSink, QualityControl, RecordingOutput, RecordingPipeline, StepSink
from hw.probe import BackendProbe
from hw.synthetic import FaultPlan, SyntheticCamera
from hw.validate import FrameValidator
from hw.writer import ClosedSegment, SegmentWriter

# Raw frames waiting for the encoder are the one buffer that grows with the frame size: a
# 1080p YUV420 frame is 3.1 MB, so 60 of them would hold 187 MB when encoding falls behind.
QUEUE_BUDGET_BYTES = 48 * 2**20


def queue_frames_for(mode: CameraMode, configured: int) -> int:
    """The frame queue's length: as configured, but within QUEUE_BUDGET_BYTES of raw frames."""
    if mode.output != "frames":
        return configured  # encoded packets are small
    frame_bytes = mode.width * mode.height * 3 // 2
    return max(2, min(configured, QUEUE_BUDGET_BYTES // frame_bytes))


BACKENDS = ("auto", "synthetic", "file", "v4l2", "picamera2")


@dataclass(frozen=True)
class CameraSpec:
    """What the configuration asks of the camera.

    Types only: the defaults live in one place, the config schema (controller/config/schema.py),
    and controller/daemon.py builds the specs from a validated config.
    """

    backend: str
    width: int
    height: int
    fps: float
    source: str | None
    device: str
    pace: bool
    read_timeout_seconds: float
    frozen_seconds: float
    input_format: str  # v4l2: auto, h264, mjpeg or yuyv422
    # Keyframe period for cameras that encode themselves (picamera2); Hardware keeps it equal
    # to recording.fragment_seconds so that fragments and keyframes line up.
    fragment_seconds: float

    @property
    def mode(self) -> CameraMode:
        return CameraMode(self.width, self.height, self.fps)


@dataclass(frozen=True)
class RecordingSpec:
    """What the configuration asks of the recording path (types only, as CameraSpec)."""

    root: Path
    fallback_roots: tuple[Path, ...]
    segment_seconds: float
    fragment_seconds: float
    encoder_preset: str
    crf: int
    queue_frames: int
    adaptive: AdaptiveSpec


CameraMaker = Callable[[CameraSpec, FaultPlan], Camera]


def _make_synthetic(spec: CameraSpec, faults: FaultPlan) -> Camera:
    return SyntheticCamera(spec.mode, faults=faults)


def _make_file(spec: CameraSpec, faults: FaultPlan) -> Camera:
    if not spec.source:
        raise CameraUnavailable("camera.backend is file but camera.source is not set")
    return FileCamera(spec.mode, spec.source, paced=spec.pace)


class _DeferredMaker:
    """A backend's maker whose module is imported on first use, not with the factory.

    A unit records from one camera: the file or synthetic camera never loads the V4L2 or
    picamera2 code (nor a Pi camera the V4L2 code). Calls and attributes (`probe`,
    `load_failure`, ...) go to the real maker, made with `options` on first use.
    """

    _module = ""
    _name = ""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._real: Any = None

    def _load(self) -> Any:
        if self._real is None:
            self._real = getattr(importlib.import_module(self._module), self._name)(**self._options)
        return self._real

    def __call__(self, spec: CameraSpec, faults: FaultPlan) -> Camera:
        camera: Camera = self._load()(spec, faults)
        return camera

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._load(), name)


class DeferredV4L2Maker(_DeferredMaker):
    """hw.v4l2.probe.V4L2Maker, imported on first use."""

    _module, _name = "hw.v4l2.probe", "V4L2Maker"


class DeferredPicameraMaker(_DeferredMaker):
    """hw.picam.PicameraMaker, imported on first use."""

    _module, _name = "hw.picam", "PicameraMaker"


DEFAULT_MAKERS: Mapping[str, CameraMaker] = {
    "synthetic": _make_synthetic,
    "file": _make_file,
    "v4l2": DeferredV4L2Maker(),
    "picamera2": DeferredPicameraMaker(),
}
# auto-detection asks these backends, in this order, whether they see a camera.
PROBE_ORDER = ("picamera2", "v4l2")


def probe_backend(makers: Mapping[str, CameraMaker], backend: str) -> BackendProbe | None:
    """What the maker for `backend` sees, or None when it cannot probe (a plain function)."""
    probe = getattr(makers.get(backend), "probe", None)
    return probe() if probe is not None else None


def detect_backend(makers: Mapping[str, CameraMaker]) -> tuple[str, str]:
    """(backend, why) for `camera.backend: auto`: the Pi camera, else a V4L2 camera, else synthetic.

    Each probe's result is logged, found or not.
    """
    reasons = []
    for backend in PROBE_ORDER:
        result = probe_backend(makers, backend)
        reason = "no backend for it in this build" if result is None else result.summary
        if result is not None and result.failure:
            logger.warning("camera backend {} is {}; trying the next backend", backend, result.failure)
        else:
            logger.info("camera probe backend={} found={} {}", backend,
                        bool(result and result.is_found), reason)
        if result is not None and result.is_found:
            return backend, f"{backend}: {reason}"
        reasons.append(f"{backend}: {reason}")
    return "synthetic", "; ".join(reasons) + "; falling back to synthetic"


@dataclass
class Hardware:
    """Makes cameras and recording pipelines from the camera and recording specs.

    Tests pass `makers` to put a fake behind a backend name, and drive `faults` to inject
    synthetic-camera faults; every camera this factory makes shares that plan.
    """

    camera: CameraSpec
    recording: RecordingSpec
    faults: FaultPlan = field(default_factory=FaultPlan)
    makers: Mapping[str, CameraMaker] = field(default_factory=lambda: dict(DEFAULT_MAKERS))
    # Answers "" when the board's hardware H.264 encoder is there (tests inject their own).
    encoder_probe: Callable[[], str] = probe_m2m_encoder
    backend: str = ""
    backend_reason: str = ""
    # Why the configured backend's library cannot load here ("" when it can): `vigil run`
    # exits with EX_CONFIG on it rather than crash-looping under systemd.
    unavailable: str = ""
    # Signs each closed segment's manifest (hw.integrity); None records without manifests.
    signer: Signer | None = None
    # Makes each pipeline's load meter for adaptive quality (tests inject one whose
    # thermometer they control).
    load_meter: Callable[[], LoadMeter] = LoadMeter
    _chain: Chain | None = field(default=None, init=False, repr=False)
    _encoder_choice: EncoderChoice | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.camera.fragment_seconds != self.recording.fragment_seconds:
            self.camera = replace(self.camera, fragment_seconds=self.recording.fragment_seconds)
        if self.camera.backend == "auto":
            self.backend, self.backend_reason = detect_backend(self.makers)
            logger.info("camera backend auto-selected backend={} reason={}",
                        self.backend, self.backend_reason)
        else:
            self.backend, self.backend_reason = self.camera.backend, "configured"
            load_failure = getattr(self.makers.get(self.backend), "load_failure", None)
            self.unavailable = load_failure() if load_failure is not None else ""

    def rebuilt(self) -> Hardware:
        """A fresh factory for the same specs: backend detection runs again."""
        return Hardware(self.camera, self.recording, faults=self.faults, makers=self.makers,
                        encoder_probe=self.encoder_probe, signer=self.signer,
                        load_meter=self.load_meter)

    @property
    def chain(self) -> Chain:
        """The fragment chain of this factory's writers: on first use it continues from the
        newest manifest under the roots (start-up recovery has written those of a crash)."""
        if self._chain is None:
            rec = self.recording
            last = newest_link((rec.root, *rec.fallback_roots))
            self._chain = Chain() if last is None else Chain(last, continues_from=last)
            if last is not None:
                logger.info("fragment chain continues from link={}", last.hex())
        return self._chain

    @property
    def encoder_choice(self) -> EncoderChoice:
        """The encoder raw frames would go through; probed once, then kept (with any fallback)."""
        if self._encoder_choice is None:
            self._encoder_choice = choose_encoder(self.encoder_probe)
            # Absent hardware is the normal case off a Pi: info, not a warning.
            logger.info("H.264 encoder for raw frames: {}", self._encoder_choice.describe())
        return self._encoder_choice

    def make_encoder(self, mode: CameraMode) -> H264Encoder:
        """The encoder for raw frames of `mode`: the hardware one when chosen and it opens."""
        rec = self.recording
        choice = self.encoder_choice
        try:
            return H264Encoder(mode, fragment_seconds=rec.fragment_seconds, preset=rec.encoder_preset,
                               crf=rec.crf, codec=choice.codec)
        except EncoderError as err:
            if not choice.is_hardware:
                raise
            # The device answered but FFmpeg could not open it (busy, a mode it cannot do):
            # record with libx264 rather than not at all, and stay there.
            self._encoder_choice = EncoderChoice(LIBX264, f"{choice.codec} failed to open: {err}")
            logger.warning("H.264 encoder falls back to {}", self._encoder_choice.describe())
            return H264Encoder(mode, fragment_seconds=rec.fragment_seconds, preset=rec.encoder_preset,
                               crf=rec.crf)

    def quality_ladder(self, mode: CameraMode,
                       camera: Camera | None = None) -> tuple[QualityStep, ...]:
        """The adaptive-quality ladder for raw frames of `mode` (one step: adaptation off);
        for a camera that encodes itself, the ladder of its own knobs (none: one step)."""
        rec = self.recording
        if mode.output != "frames":
            own = getattr(camera, "quality_ladder", None)
            if own is None:
                return (QualityStep(0, "", 0, 1.0, 1, mode.width, mode.height, mode.fps,
                                    packets=True),)
            ladder: tuple[QualityStep, ...] = own(rec.adaptive)
            return ladder
        return build_ladder(mode, preset=rec.encoder_preset, crf=rec.crf,
                            hardware=self.encoder_choice.is_hardware, spec=rec.adaptive)

    def make_step_encoder(self, mode: CameraMode, step: QualityStep) -> H264Encoder:
        """An encoder for raw frames of `mode` set as the ladder's `step` says."""
        rec = self.recording
        return H264Encoder(step.encoder_mode(), fragment_seconds=rec.fragment_seconds,
                           preset=step.preset, crf=step.crf, codec=self.encoder_choice.codec,
                           bit_rate_scale=step.bit_rate_scale, input_size=(mode.width, mode.height))

    def quality_control(self, mode: CameraMode, when_step: StepSink | None = None,
                        camera: Camera | None = None) -> QualityControl | None:
        """What a pipeline of `mode` needs to adapt; None when nothing can adapt (adaptation
        off, a ladder of one step, or a camera that encodes itself and has no knobs)."""
        ladder = self.quality_ladder(mode, camera)
        if len(ladder) < 2:
            return None
        if mode.output != "frames":
            apply = getattr(camera, "apply_quality", None)
            if apply is None or getattr(camera, "packet_load", None) is None:
                return None
            return QualityControl(QualityGovernor(ladder, self.recording.adaptive), None,
                                  meter=self.load_meter(), when_step=when_step, apply=apply)
        return QualityControl(QualityGovernor(ladder, self.recording.adaptive),
                              lambda step: self.make_step_encoder(mode, step),
                              meter=self.load_meter(), when_step=when_step)

    def make_camera(self) -> Camera:
        if self.unavailable:
            raise BackendUnavailable(self.unavailable)
        maker = self.makers.get(self.backend)
        if maker is None:
            raise CameraUnavailable(
                f"camera backend {self.backend!r} is not available in this build; "
                f"available: {', '.join(sorted(self.makers))}"
            )
        return maker(self.camera, self.faults)

    def make_pipeline(
        self, camera: Camera, root: Path, when_error: ErrorSink,
        when_segment_closed: Callable[[ClosedSegment], None] | None = None,
        *, resume: RecordingOutput | None = None, when_quality_step: StepSink | None = None,
    ) -> RecordingPipeline:
        """A pipeline from an opened camera into segments under `root`; not yet started.

        `resume` is an output kept open across a camera loss: when the camera delivers the
        same mode, the pipeline continues its open segment; otherwise it is closed first.
        """
        mode = camera.mode
        rec = self.recording
        if resume is not None and resume.fits(mode):
            writer, encoder = resume.writer, resume.encoder
            if writer.root != Path(root):
                writer.retarget(root)
            if encoder is not None:
                encoder.force_keyframe()
            logger.info("resuming the open segment path={} after the camera came back",
                        writer.open_path)
        else:
            if resume is not None:
                resume.close(when_error)
            writer = SegmentWriter(root, width=mode.width, height=mode.height, fps=mode.fps,
                                   segment_seconds=rec.segment_seconds, when_error=when_error,
                                   when_segment_closed=when_segment_closed,
                                   fallback_roots=rec.fallback_roots, signer=self.signer,
                                   chain=self.chain if self.signer is not None else None)
            encoder = self.make_encoder(mode) if mode.output == "frames" else None
        validator = FrameValidator(mode, frozen_seconds=self.camera.frozen_seconds)
        return RecordingPipeline(camera, writer, encoder=encoder, validator=validator,
                                 when_error=when_error, queue_frames=queue_frames_for(mode, rec.queue_frames),
                                 read_timeout=self.camera.read_timeout_seconds,
                                 quality=self.quality_control(mode, when_quality_step, camera))
