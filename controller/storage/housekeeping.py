"""The storage housekeeper: one low-priority thread that merges, deletes and watches the disk.

It runs off the recording path: the recording threads never wait for it, and it only
touches closed footage (it asks the controller which segment is open). Each pass:
close-outs of segments whose close failed, retention when the free space or the free inodes
are short (or a storage_full error asked for it), a disk
sample, forced merges asked for through `request_merge`, and every `check_seconds` the
age rule and the merge of closed hours. Every `scrub_seconds` (integrity.scrub_hours) a
scrub re-hashes the closed footage against its manifests (controller/verify.py), a few
hundred MB a pass so merges and retention never wait long behind it, and reports each file
found altered once (`when_footage_altered`: the controller raises a footage_altered alert).
A merge gives way at once to a shutdown or to a
request for space: it is aborted (its temporary file removed, the segments untouched) and
tried again later.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import queue
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loguru import logger

from controller.core.events import FootageDeleted, HourMerged
from controller.storage.diskmon import DiskMonitor, DiskStatus
from controller.storage.merge import (
    DEFAULT_VERIFY,
    MergeAborted,
    MergeBusy,
    MergeDeferred,
    MergedHour,
    MergeError,
    NothingToMerge,
    VerifyMode,
    clean_interrupted_merges,
    closed_hours,
    force_merge,
    has_footage_of,
    housekeeping_lock,
    merge_hour,
)
from controller.storage.retention import RetentionPolicy, RetentionReport, enforce_retention, inode_usage
from controller.storage.scrubstate import ScrubState, scrub_order
from hw.footage import HourFolder, hour_key, parse_hour
from hw.integrity import Signer
from hw.recovery import CloseOuts
from hw.storage import MIN_FREE_BYTES, MIN_FREE_INODES

THREAD_NAME = "vigil-housekeeping"
SAMPLE_SECONDS = 5.0
# After ENOSPC, free at least this much (four times what a recording root needs to be usable).
RECLAIM_MIN_BYTES = 4 * MIN_FREE_BYTES
# ... and at least this many inodes (ENOSPC also means no inode left for a new segment).
RECLAIM_MIN_INODES = 4 * MIN_FREE_INODES
CHECK_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 5.0
# Keep free what the recording writes in this many samples, on top of the reserve, so the
# reserve still holds when the next sample comes.
HEADROOM_SAMPLES = 2
# How often a running merge looks at the free space (statvfs) while it writes.
MERGE_SPACE_CHECK_SECONDS = 1.0
MERGE_ATTEMPTS = 3
MERGES_KEPT = 100  # the newest merge results kept for status and tests
SCRUB_BYTES_PER_PASS = 256 * 1024 * 1024  # then the pass ends; the scrub goes on in the next
SCRUB_FINDINGS = ("altered", "signature")  # what a scrub calls altered footage

# Linux ioprio_set(2): no libc wrapper, so the raw syscall; numbers per architecture.
IOPRIO_SET_SYSCALL = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "armv6l": 314, "i686": 289,
                      "riscv64": 30}
IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread only
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13
LOWEST_CPU_PRIORITY = 19

MergeMode = Literal["hourly", "off"]
Roots = Callable[[], Sequence[Path]]
OpenSegments = Callable[[], Sequence[Path]]


@dataclass(frozen=True)
class StorageSettings:
    """What the config's `recording.merge*` and `storage` keys ask of the housekeeper."""

    merge: MergeMode = "hourly"
    merge_verify: VerifyMode = DEFAULT_VERIFY
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    check_seconds: float = CHECK_SECONDS
    sample_seconds: float = SAMPLE_SECONDS
    signer: Signer | None = None  # signs merged hours' manifests (hw.integrity)
    scrub_seconds: float = 0.0  # how often closed footage is re-hashed; 0: never
    scrub_state: Path | None = None  # where the scrub's progress is kept (scrubstate); None: memory only


def lower_thread_priority() -> str:
    """Give the calling thread (and threads it starts) the lowest CPU and I/O priority.

    Linux keeps a nice value and an I/O priority per thread, so both are set with this
    thread's id and the recording threads keep theirs. The I/O class is idle (served when
    the disk has nothing else to do; mq-deadline ages it so it is never starved for long),
    best-effort 7 where idle is refused. Returns what was applied, for the log.
    """
    tid = threading.get_native_id()
    applied = []
    try:
        os.setpriority(os.PRIO_PROCESS, tid, LOWEST_CPU_PRIORITY)
        applied.append(f"nice {LOWEST_CPU_PRIORITY}")
    except (OSError, AttributeError) as err:
        applied.append(f"nice unchanged ({err})")
    number = IOPRIO_SET_SYSCALL.get(platform.machine())
    if number is None or platform.system() != "Linux":
        applied.append(f"I/O priority unchanged (no ioprio_set on {platform.system()} {platform.machine()})")
        return ", ".join(applied)
    libc = ctypes.CDLL(None, use_errno=True)
    for io_class, label in ((IOPRIO_CLASS_IDLE, "idle"), (IOPRIO_CLASS_BE, "best-effort 7")):
        level = 7 if io_class == IOPRIO_CLASS_BE else 0
        if libc.syscall(number, IOPRIO_WHO_PROCESS, tid, (io_class << IOPRIO_CLASS_SHIFT) | level) == 0:
            applied.append(f"I/O class {label}")
            break
    else:
        applied.append(f"I/O priority unchanged ({os.strerror(ctypes.get_errno())})")
    return ", ".join(applied)


class StorageHousekeeper:
    """Runs merge, retention and disk monitoring in one named worker thread."""

    def __init__(
        self,
        settings: StorageSettings,
        *,
        roots: Roots,
        active_root: Callable[[], Path | None],
        open_segments: OpenSegments,
        bytes_written: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
        when_disk_low_changed: Callable[[DiskStatus], None] | None = None,
        publish: Callable[[object], None] | None = None,
        closeouts: CloseOuts | None = None,
        when_footage_altered: Callable[[Path, str], object] | None = None,
    ) -> None:
        self.settings = settings
        self._when_footage_altered = when_footage_altered
        self._scrub_queue: list[Path] = []
        self._scrub_state = (ScrubState.load(settings.scrub_state) if settings.scrub_state is not None
                             else ScrubState())
        self._resume_after = self._scrub_state.position  # a scrub a restart interrupted
        due_in = (settings.scrub_seconds if self._scrub_state.next_due is None
                  else max(0.0, self._scrub_state.next_due - time.time()))
        self._next_scrub = time.monotonic() + due_in
        self._altered: set[Path] = {Path(p) for p in self._scrub_state.altered}  # reported once each
        self.scrubbed_files = 0
        self.scrubs_done = 0
        self._closeouts = closeouts
        self._publish = publish
        self._roots = roots
        self._active_root = active_root
        self._open_segments = open_segments
        self._bytes_written = bytes_written
        self._clock = clock
        self.monitor = DiskMonitor(settings.retention.reserve_bytes, when_low_changed=when_disk_low_changed,
                                   reserve_inodes=settings.retention.reserve_inode_count)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reclaim = threading.Event()
        self._merge_requests: queue.Queue[tuple[float | None, Future[list[MergedHour]]]] = queue.Queue()
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cleaned: set[Path] = set()
        self._unreadable: set[Path] = set()
        self._failures: dict[Path, int] = {}
        self._deferred: set[Path] = set()
        self._next_check = 0.0
        self.passes = 0
        self._passes_started = 0
        self.failed_passes = 0
        self._failing: str | None = None  # the error the latest pass failed with, if it did
        self.reclaims = 0
        self.priority = ""
        self.last_retention: RetentionReport | None = None
        self.merged: deque[MergedHour] = deque(maxlen=MERGES_KEPT)
        self.merge_counts: Counter[str] = Counter()
        # Set by the uploader (daemon.py): which footage is verified in the bucket, and who
        # hears of footage retention had to delete before it was uploaded.
        self.is_uploaded: Callable[[Path], bool] | None = None
        self.when_footage_lost: Callable[[Path, str], None] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<StorageHousekeeper {state} passes={self.passes} merged={len(self.merged)}>"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- what other threads may call -------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a housekeeper starts once")
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Stop the worker (a merge in progress is aborted); False if it did not end in time."""
        with self._done:
            self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            with self._done:
                self._fail_pending(MergeAborted("housekeeping never started"))
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.error("housekeeping thread did not stop within {:.1f}s; leaving it", timeout)
            return False
        return True

    def reconfigure(self, settings: StorageSettings) -> None:
        """Use `settings` from the next pass on (a reset reloaded the config)."""
        self.settings = settings
        self.monitor.set_reserve(settings.retention.reserve_bytes, settings.retention.reserve_inode_count)
        self._next_check = 0.0
        logger.info("housekeeping reconfigured merge={} retention_days={:g} reserve_mb={:g} "
                    "reserve_percent={:g}", settings.merge, settings.retention.retention_days,
                    settings.retention.reserve_mb, settings.retention.reserve_percent)
        self._wake.set()

    def wake(self) -> None:
        """Run a pass now instead of at the next sample."""
        self._wake.set()

    def request_reclaim(self) -> None:
        """Free space now (a storage_full error): any merge in progress gives way. Never blocks."""
        self._reclaim.set()
        self._wake.set()

    def reclaim_now(self, timeout: float) -> RetentionReport | None:
        """Free space now and wait for it (at most `timeout` s); the pass's report, or None."""
        with self._done:
            before = self.reclaims
            self.request_reclaim()
            self._done.wait_for(lambda: self.reclaims > before or not self.is_running, timeout)
            return self.last_retention if self.reclaims > before else None

    def request_merge(self, hour: str | None = None) -> Future[list[MergedHour]]:
        """Merge `hour` (YYYY-MM-DDTHH) or every closed hour soon; ValueError for a bad hour.

        The future's result is the merged files; its exception HourStillOpen, NothingToMerge,
        MergeBusy or MergeError says why nothing was merged.
        """
        start = parse_hour(hour) if hour is not None else None
        future: Future[list[MergedHour]] = Future()
        with self._done:  # against a stop that has already failed the pending requests
            if self._stop.is_set():
                future.set_exception(MergeAborted("housekeeping is stopped"))
                return future
            self._merge_requests.put((start, future))
        self._wake.set()
        return future

    def check_now(self, timeout: float) -> bool:
        """Run a whole pass that starts after this call; True once it has completed."""
        with self._done:
            target = self._passes_started + 1
            self._wake.set()
            return self._done.wait_for(lambda: self.passes >= target, timeout)

    def wait_for_pass(self, count: int, timeout: float) -> bool:
        """Block until `count` passes have completed (True) or `timeout` passes (False)."""
        with self._done:
            return self._done.wait_for(lambda: self.passes >= count, timeout)

    def disk_status(self) -> dict[str, object] | None:
        """The latest disk sample as a dict (see DiskStatus), or None before the first."""
        latest = self.monitor.latest
        return latest.as_dict() if latest is not None else None

    # -- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        self.priority = lower_thread_priority()
        logger.info("housekeeping started merge={} retention_days={:g} reserve_mb={:g} "
                    "reserve_percent={:g} priority={}", self.settings.merge,
                    self.settings.retention.retention_days, self.settings.retention.reserve_mb,
                    self.settings.retention.reserve_percent, self.priority)
        while not self._stop.is_set():
            with self._done:
                self._passes_started += 1
            try:
                self._pass()
            except Exception as err:
                # A bug here must not end housekeeping for good; the next pass tries again.
                self._pass_failed(err)
            else:
                self._failing = None
            with self._done:
                self.passes += 1
                self._done.notify_all()
            self._wake.wait(self.settings.sample_seconds)
            self._wake.clear()
        with self._done:
            self._fail_pending(MergeAborted("the daemon is shutting down"))
            self._done.notify_all()

    def _pass_failed(self, err: Exception) -> None:
        """A traceback once per distinct error (type and message); while it repeats, a line."""
        key = f"{type(err).__name__}: {err}"
        self.failed_passes += 1
        if key != self._failing:
            self._failing = key
            logger.opt(exception=err).error("housekeeping pass failed: {}; trying again every "
                                            "{:g}s", key, self.settings.sample_seconds)
        else:
            logger.error("housekeeping pass failed again: {} ({} failed passes)", key,
                         self.failed_passes)

    def _pass(self) -> None:
        if self._closeouts is not None:
            # Segments whose close failed (a full or read-only card) are closed out as soon
            # as the storage allows, not at the next start.
            for done in self._closeouts.retry():
                logger.info("closed out a segment whose close had failed path={}", done.result)
        roots = [r for r in self._roots() if r.is_dir()]
        self._clean_up_once(roots)
        open_segments = list(self._open_segments())
        reclaim = self._reclaim.is_set()
        self._reclaim.clear()
        due = time.monotonic() >= self._next_check
        if reclaim or due or self._short_of_space(roots):
            headroom = self._headroom()
            headroom_inodes = 0
            if reclaim:
                # The disk is already full: make room to record again even with no reserve.
                headroom = max(headroom, RECLAIM_MIN_BYTES)
                headroom_inodes = RECLAIM_MIN_INODES
            self.last_retention = enforce_retention(
                roots, self.settings.retention, now=self._clock(), open_segments=open_segments,
                headroom_bytes=headroom, headroom_inodes=headroom_inodes, by_age=due,
                is_uploaded=self.is_uploaded,
            )
            lost = self.when_footage_lost
            for deletion in self.last_retention.deletions:
                if deletion.uploaded is False and lost is not None:
                    lost(deletion.path, deletion.reason)
            if self._publish is not None:
                for deletion in self.last_retention.deletions:
                    self._publish(FootageDeleted(deletion.path, deletion.bytes, deletion.reason))
            if reclaim:
                with self._done:
                    self.reclaims += 1
                    self._done.notify_all()
        active = self._active_root() or (roots[0] if roots else None)
        if active is not None:
            written = self._bytes_written() if self._bytes_written is not None else None
            self.monitor.sample(active, written)
        self._run_merge_requests(roots)
        self._scrub(roots, open_segments)
        if due:
            self._next_check = time.monotonic() + self.settings.check_seconds
            if self.settings.merge == "hourly":
                self._merge_closed_hours(roots)

    def _scrub(self, roots: Sequence[Path], open_segments: Sequence[Path]) -> None:
        """Re-hash the next files of the scrub (one started when it is due) against their manifests."""
        from controller.verify import footage_files, verify
        from hw.footage import manifest_path

        every = self.settings.scrub_seconds
        if every <= 0:
            self._scrub_queue.clear()
            return
        if not self._scrub_queue:
            resume = self._resume_after
            if resume is None and time.monotonic() < self._next_scrub:
                return
            self._resume_after = None
            self._next_scrub = time.monotonic() + every
            skip = set(open_segments)
            # Popped from the end: oldest first; after a restart, from where the last one stopped.
            self._scrub_queue = sorted((p for p in footage_files(roots) if p not in skip
                                        and (resume is None or scrub_order(p) > resume)),
                                       key=scrub_order, reverse=True)
            if resume is not None:
                logger.info("scrub resumed after path={} files_left={}", resume, len(self._scrub_queue))
            if not self._scrub_queue:
                self._scrub_finished()
                return
        signer = self.settings.signer
        budget = SCRUB_BYTES_PER_PASS
        checked: Path | None = None
        while self._scrub_queue and budget > 0 and not self._stop.is_set() and not self._reclaim.is_set():
            path = self._scrub_queue.pop()
            checked = path
            if not manifest_path(path).is_file():
                continue  # gone meanwhile (merged, retention) or recorded without integrity
            try:
                budget -= path.stat().st_size
            except OSError:
                continue
            report = verify([path], key=signer.public_key if signer is not None else None)
            self.scrubbed_files += 1
            found = [f for f in report.findings if f.kind in SCRUB_FINDINGS]
            if not found or not path.exists() or path in self._altered:
                continue
            self._altered.add(path)
            self._scrub_state.altered.append(str(path))
            detail = "; ".join(f.describe() for f in found[:3]) + (
                f" (and {len(found) - 3} more)" if len(found) > 3 else "")
            logger.error("scrub: footage altered since it was recorded path={} {}", path, detail)
            if self._when_footage_altered is not None:
                self._when_footage_altered(path, detail)
        if not self._scrub_queue:
            self._scrub_finished()
            logger.info("scrub done files={} altered={}", self.scrubbed_files, len(self._altered))
        elif checked is not None:
            self._scrub_state.position = scrub_order(checked)
            self._save_scrub_state()

    def _scrub_finished(self) -> None:
        self.scrubs_done += 1
        self._scrub_state.position = None
        self._scrub_state.next_due = time.time() + max(0.0, self._next_scrub - time.monotonic())
        self._scrub_state.altered = [p for p in self._scrub_state.altered if Path(p).exists()]
        self._altered = {Path(p) for p in self._scrub_state.altered}
        self._save_scrub_state()

    def _save_scrub_state(self) -> None:
        if self.settings.scrub_state is not None:
            self._scrub_state.save(self.settings.scrub_state)

    def _clean_up_once(self, roots: Sequence[Path]) -> None:
        for root in roots:
            if root in self._cleaned:
                continue
            try:
                with housekeeping_lock(root, timeout=0):
                    clean_interrupted_merges(root, verify=self.settings.merge_verify)
            except MergeBusy:
                continue  # a `vigil merge` is running there: its files are not leftovers
            except (MergeError, OSError) as err:
                logger.error("cleaning up interrupted merges failed root={} error={}", root, err)
            self._cleaned.add(root)

    def _headroom(self) -> int:
        latest = self.monitor.latest
        rate = latest.write_bytes_per_second if latest is not None else 0.0
        return int(rate * self.settings.sample_seconds * HEADROOM_SAMPLES)

    def _short_of_space(self, roots: Sequence[Path]) -> bool:
        headroom = self._headroom()
        for root in roots:
            try:
                total, _, free = shutil.disk_usage(root)
                total_inodes, free_inodes = inode_usage(root)
            except OSError:
                continue
            if free < self.settings.retention.reserve_bytes(total) + headroom:
                return True
            if total_inodes and free_inodes < self.settings.retention.reserve_inode_count(total_inodes):
                return True
        return False

    def _abort_check(self, where: Path) -> Callable[[], bool]:
        """What a merge writing under `where` asks between packets: should it give way?"""
        next_space_check = 0.0

        def should_abort() -> bool:
            nonlocal next_space_check
            if self._stop.is_set() or self._reclaim.is_set():
                return True
            now = time.monotonic()
            if now < next_space_check:
                return False
            next_space_check = now + MERGE_SPACE_CHECK_SECONDS
            # The merged copy must not eat the reserve the recording relies on.
            return self._short_of_space([where])

        return should_abort

    def _reserve_for(self, path: Path) -> int:
        try:
            total = shutil.disk_usage(path).total
        except OSError:
            return 0
        return self.settings.retention.reserve_bytes(total) + self._headroom()

    def _merge_closed_hours(self, roots: Sequence[Path]) -> None:
        for root in roots:
            hours = [h for h in closed_hours(root, now=self._clock(),
                                             open_segments=list(self._open_segments()))
                     if self._failures.get(h.path, 0) < MERGE_ATTEMPTS]
            if not hours:
                continue
            try:
                with housekeeping_lock(root, timeout=0):
                    for hour in hours:
                        if self._stop.is_set() or self._reclaim.is_set():
                            return
                        self._merge_one(hour)
            except MergeBusy:
                logger.debug("housekeeping lock of {} is held by another process; merging later", root)

    def _merge_one(self, hour: HourFolder) -> None:
        try:
            results = merge_hour(
                hour, verify=self.settings.merge_verify, should_abort=self._abort_check(hour.date_dir),
                reserve_bytes=self._reserve_for(hour.date_dir), skip=frozenset(self._unreadable),
                unreadable=self._unreadable, signer=self.settings.signer,
            )
        except MergeAborted:
            self.merge_counts["aborted"] += 1
            logger.info("merge of hour {} gave way (shutdown or disk space); it runs again later",
                        hour.key)
            return
        except MergeDeferred as err:
            self.merge_counts["deferred"] += 1
            if hour.path not in self._deferred:
                self._deferred.add(hour.path)
                logger.warning("{}; the segments stay as they are and the merge waits. Keep "
                               "storage.reserve_mb above an hour of footage to merge on a full disk", err)
            return
        except (MergeError, OSError) as err:
            self.merge_counts["failed"] += 1
            count = self._failures[hour.path] = self._failures.get(hour.path, 0) + 1
            logger.error("merge of hour {} failed (attempt {} of {}); its segments stay: {}",
                         hour.key, count, MERGE_ATTEMPTS, err)
            return
        self._deferred.discard(hour.path)
        self._merged(results)

    def _run_merge_requests(self, roots: Sequence[Path]) -> None:
        while True:
            try:
                hour, future = self._merge_requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                results = []
                for root in roots:
                    results.extend(force_merge(
                        [root], hour=hour, now=self._clock(), verify=self.settings.merge_verify,
                        open_segments=list(self._open_segments()), lock_timeout=0,
                        should_abort=self._abort_check(root), reserve_bytes=self._reserve_for,
                        missing_ok=True, signer=self.settings.signer,
                    ))
                if hour is not None and not results and not any(
                        has_footage_of(root, hour) for root in roots):
                    raise NothingToMerge(f"no footage of hour {hour_key(hour)} under "
                                         f"{', '.join(str(r) for r in roots)}")
            except Exception as err:
                future.set_exception(err)
            else:
                self._merged(results)
                future.set_result(results)

    def _merged(self, results: Sequence[MergedHour]) -> None:
        self.merged.extend(results)
        self.merge_counts["merged"] += len(results)
        if self._publish is not None:
            for result in results:
                self._publish(HourMerged(result.hour, result.path, result.source_paths))

    def _fail_pending(self, err: Exception) -> None:
        while True:
            try:
                _, future = self._merge_requests.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                if future.set_running_or_notify_cancel():
                    future.set_exception(err)
