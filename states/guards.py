"""The guard work every transition runs: validation, cleanup, directory repair.

Side effects (closing, repairing, opening) run as `prepare` callbacks; the `conditions`
are pure questions about what those left behind. A question that answers no records why
in `refusal`, so the controller can log and count the refusal; the machine stays put.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from hw.camera import Camera
from hw.errors import CameraError
from hw.footage import PARTIAL_SUFFIX
from hw.pipeline import RecordingOutput, RecordingPipeline, close_with_timeout
from hw.recovery import CloseOuts, recover_partial
from hw.storage import RootStatus, choose_root
from states.hooks import ErrorSink

if TYPE_CHECKING:
    from collections.abc import Callable

    from transitions import EventData

    from hw.factory import Hardware

CAMERA_OPEN_TIMEOUT_SECONDS = 10.0
# Transitions across which the encoder and writer stay open, so that a camera that comes
# back in the same mode continues its segment: the loss itself, and the recovery around it.
KEEPS_OUTPUT = frozenset({"fault", "recovered", "give_up", "probe"})
PIPELINE_STOP_TIMEOUT_SECONDS = 5.0


class _FdListing:
    """Failures to list /proc/self/fd, counted and logged once each way (not per transition)."""

    def __init__(self) -> None:
        self.failures = 0
        self._failing = False

    def failed(self, err: OSError) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            logger.warning("cannot list /proc/self/fd ({}); the cleanup check cannot see open "
                           "segment files until it can", err)

    def worked(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("/proc/self/fd readable again after {} failed listing(s)", self.failures)


FD_LISTING = _FdListing()


def open_partial_files() -> list[Path]:
    """Segment files this process holds open, read from /proc/self/fd.

    Listing needs a descriptor of its own: when the process has none to spare (EMFILE) the
    answer is empty, counted and logged in FD_LISTING, and the machine goes on.
    """
    found: list[Path] = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError as err:
        FD_LISTING.failed(err)
        return found
    FD_LISTING.worked()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.endswith(PARTIAL_SUFFIX) or target.endswith(PARTIAL_SUFFIX + " (deleted)"):
            found.append(Path(target))
    return found


# How long after its latest frame a camera still counts as delivering (a frame interval at
# the lowest rates, and a busy machine's scheduling), for the stable-time rule.
FRESH_FRAME_SECONDS = 0.5


class GuardWork:
    """Mixin for the machine's model; the model supplies the attributes declared here."""

    hardware: Hardware
    pipeline: RecordingPipeline | None
    held_output: RecordingOutput | None
    pending_camera: Camera | None
    root_status: RootStatus | None
    refusal: str
    abandoned: list[str]
    abandoned_threads: list[threading.Thread]
    owned_threads: list[threading.Thread]
    abandoned_paths: list[Path]
    closeouts: CloseOuts
    config_error: str | None
    report_error: ErrorSink
    clock: Callable[[], float]
    frames_until: float | None

    def last_frame_at(self) -> float | None:
        """When, on the unit's clock, the camera last handed the recording a frame: the running
        pipeline's latest, else that of the recording that ended (None: no recording yet).

        A camera that delivers one frame and then nothing (its loss reported only when a read
        times out, seconds later on a busy machine) has not recorded stably, however long the
        state says "recording": the stable-time rule measures frames (states/recovering.py).
        """
        pipeline = self.pipeline
        if pipeline is None:
            return self.frames_until
        # A frame within FRESH_FRAME_SECONDS is a frame now: the gaps of a camera that delivers.
        silent = max(0.0, time.monotonic() - pipeline.stats.last_frame_monotonic - FRESH_FRAME_SECONDS)
        return self.clock() - silent

    # -- prepare: side effects -------------------------------------------------------

    def cleanup(self, event: EventData) -> None:
        """Close whatever the source state held: pipeline (writer, camera, threads).

        A camera loss keeps a healthy encoder and writer open (`held_output`) for the
        recovery to resume into; any other transition closes it.
        """
        keep = event is not None and event.event.name in KEEPS_OUTPUT
        if self.pipeline is not None:
            self.frames_until = self.last_frame_at()
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            open_before = pipeline.writer.open_path
            report = pipeline.stop(PIPELINE_STOP_TIMEOUT_SECONDS, keep_output=keep)
            if report.kept is not None:
                self.release_output()  # cannot be one: recording resumed into it
                self.held_output = report.kept
            if report.abandoned:
                # (A camera close that hung after the output was kept: the output is fine.)
                self.abandoned.extend(report.abandoned)
                self.abandoned_threads.extend(t for t in pipeline.threads if t.is_alive())
                if open_before is not None and report.kept is None:
                    self.abandoned_paths.append(open_before)
            elif report.kept is None and open_before is not None:
                # A writer that died on a storage error left its .partial: close it out now
                # (trimmed to whole fragments) rather than at the next start, and if the
                # storage refuses that too, as soon as it allows (the housekeeper retries).
                self._close_out(open_before)
            for partial in pipeline.writer.unclosed:
                self.closeouts.add(partial)
            pipeline.writer.unclosed.clear()
        if not keep:
            self.release_output()
        self._release_pending_camera()

    def _close_out(self, partial: Path) -> None:
        try:
            recover_partial(partial)
        except FileNotFoundError:
            return  # the writer closed it (renamed), or it never reached the disk
        except OSError as err:
            logger.error("closing out partial={} failed: {}", partial, err)
            self.closeouts.add(partial)

    def release_output(self) -> None:
        """Finish the segment held across a camera loss, if any."""
        held, self.held_output = self.held_output, None
        if held is not None:
            logger.info("closing the segment held for the camera to come back path={}",
                        held.open_path)
            held.close(self.report_error)

    def release_stale_output(self) -> None:
        """Finish a held segment that would not continue anyway: the next keyframe after
        `segment_seconds` starts a new one, so a camera that stays away does not keep its
        footage in a `.partial` for longer than a segment lasts."""
        held = self.held_output
        if held is None:
            return
        age = held.writer.open_age_seconds
        if age is None or age >= self.hardware.recording.segment_seconds:
            self.release_output()

    def _release_pending_camera(self) -> None:
        camera, self.pending_camera = self.pending_camera, None
        if camera is not None and not close_with_timeout(
            camera.close, CAMERA_OPEN_TIMEOUT_SECONDS, name="vigil-camera-close",
            hung=self.abandoned_threads,
        ):
            self.abandoned.append("vigil-camera-close")

    def repair_directories(self, event: EventData) -> None:
        """Make sure a recording root exists and is writable; fall back if it is not."""
        rec = self.hardware.recording
        chosen, probes = choose_root(rec.root, rec.fallback_roots)
        previous = self.root_status
        self.root_status = chosen
        moved = chosen.is_usable and (previous is None or previous.path != chosen.path)
        if moved and chosen.path != rec.root:
            logger.warning("recording root {} is unusable ({}); recording to fallback root {}",
                           rec.root, probes[0].reason, chosen.path)
        elif moved and previous is not None:
            logger.info("recording root {} is usable again; recording there", chosen.path)
        if not chosen.is_usable:
            logger.error("no usable recording root: {}",
                         "; ".join(p.reason for p in probes))

    def open_camera(self, event: EventData) -> None:
        """Make a fresh camera instance and open it, in a worker so a hang cannot block us."""
        self._release_pending_camera()
        try:
            camera = self.hardware.make_camera()
        except CameraError as err:
            self.refusal = f"camera unavailable: {err}"
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                camera.open()
            except Exception as err:
                errors.append(err)

        opener = threading.Thread(target=run, name="vigil-camera-open", daemon=True)
        self.owned_threads.append(opener)
        opener.start()
        opener.join(CAMERA_OPEN_TIMEOUT_SECONDS)
        if opener.is_alive():
            self.abandoned.append(opener.name)
            self.abandoned_threads.append(opener)
            self.refusal = f"camera open did not return within {CAMERA_OPEN_TIMEOUT_SECONDS}s"
            return
        if errors:
            self.refusal = f"camera did not open: {errors[0]}"
            return
        self.pending_camera = camera

    def verify_cleanup(self, event: EventData) -> None:
        """After leaving a state: say what its cleanup could not close (it is abandoned)."""
        self.refusal = ""
        if not self.is_cleanup_verified(event):
            logger.error("cleanup after {} left something behind: {}", event.event.name, self.refusal)
        self.refusal = ""

    # -- conditions: pure questions --------------------------------------------------

    def is_config_valid(self, event: EventData) -> bool:
        if self.config_error is not None:
            self.refusal = f"config invalid: {self.config_error}"
            return False
        return True

    def is_cleanup_verified(self, event: EventData) -> bool:
        """Nothing of the source state is still alive, except what was abandoned.

        Checks the threads this unit started (pipeline stages, camera opens) and the segment
        files open under its recording roots; other units or services in the process are
        theirs to account for.
        """
        if self.pipeline is not None:
            self.refusal = "pipeline still held after cleanup"
            return False
        abandoned = set(self.abandoned_threads)
        self.owned_threads = [t for t in self.owned_threads if t.is_alive()]
        live = [t.name for t in self.owned_threads if t not in abandoned]
        if live:
            self.refusal = f"threads still alive after cleanup: {', '.join(live)}"
            return False
        rec = self.hardware.recording
        roots = [str(r.resolve()) + os.sep for r in (rec.root, *rec.fallback_roots)]
        kept = {self.held_output.open_path} if self.held_output is not None else set()
        held = [p for p in open_partial_files()
                if str(p).startswith(tuple(roots))
                and Path(str(p).removesuffix(" (deleted)")) not in {*self.abandoned_paths, *kept}]
        if held:
            self.refusal = f"segment files still open after cleanup: {held}"
            return False
        return True

    def is_storage_ready(self, event: EventData) -> bool:
        if self.root_status is None or not self.root_status.is_usable:
            reason = self.root_status.reason if self.root_status else "not probed"
            self.refusal = f"no usable recording root: {reason}"
            return False
        return True

    def is_camera_ready(self, event: EventData) -> bool:
        """The camera opened and delivers the configured mode."""
        camera = self.pending_camera
        if camera is None:
            if not self.refusal:
                self.refusal = "camera did not open"
            return False
        wanted = self.hardware.camera.mode
        got = camera.mode
        if (got.width, got.height) != (wanted.width, wanted.height) or abs(got.fps - wanted.fps) > 0.01:
            self.refusal = (f"camera delivers {got.width}x{got.height}@{got.fps:g}, "
                            f"configured {wanted.width}x{wanted.height}@{wanted.fps:g}")
            return False
        return True
