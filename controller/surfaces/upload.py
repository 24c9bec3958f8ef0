"""The uploader: closed footage off the unit to S3-compatible object storage, verified.

A surface like the others: it subscribes to SegmentClosed and HourMerged on the controller's
bus, keeps a durable queue on disk (controller/surfaces/upload_queue.py) and uploads from
one low-priority thread (nice 19, idle I/O class), never on the recording path.

Each file goes up as a multipart upload with S3 additional checksums (SHA-256 per part; the
object's composite checksum is the SHA-256 of the parts' digests, `-N`), or in one PUT when it
is no larger than a part. The upload id and every stored part (number, SHA-256, ETag) are in
the queue before the next part starts, so a restart resumes with `list_parts` and sends only
what the bucket lacks. An object counts as done only once verified:
- `verify: checksum` compares the bucket's checksums (get_object_attributes, else
  head_object with ChecksumMode) and size with the local file's;
- `verify: download` reads the object back and compares its SHA-256, for servers that store
  the checksum a client sends without checking it (moto does; so may others).
A mismatch deletes the object and uploads the file again, never counts it as done.

Failures back off exponentially (1 s doubling to `retry_max_seconds`, with full jitter); a
broken endpoint is one alert when it breaks and one when it works again. A permanent error
(the bucket does not exist, the credentials are refused: see `classify`) is not retried on
that schedule: it stops uploading with one alert naming the error and what to fix, keeps
every file and its queue record, and is tried again only on a config reload, `vigil upload
now`, or after PERMANENT_RETRY_SECONDS.

boto3 is imported only when an uploader starts: a unit with upload disabled never loads it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from controller.core.events import HourMerged, SegmentClosed
from controller.core.snapshot import UploadBacklog
from controller.storage.housekeeping import lower_thread_priority
from controller.storage.merge import MergeBusy, housekeeping_lock
from controller.surfaces.metrics import Exposition
from controller.surfaces.upload_queue import Backlog, Order, StoredPart, UploadItem, UploadQueue
from hw.footage import MANIFEST_SUFFIX, PARTIAL_SUFFIX, final_path, manifest_path

THREAD_NAME = "vigil-upload"
SCAN_SECONDS = 60.0
RETRY_FIRST_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 64 * 1024
ALERT_KEY = "upload-endpoint"
PERMANENT_RETRY_SECONDS = 3600.0  # a permanent error is tried again this long after, unasked
STATUS_ITEMS_SHOWN = 50  # pending and failed items an upload status lists (counts cover all)
VerifyMode = Literal["checksum", "download"]


class UploadError(Exception):
    """An upload did not reach a verified object (the endpoint failed or the copy differs)."""


class PermanentUploadError(UploadError):
    """A failure retrying cannot fix: the config or the account must change first."""


class VerifyMismatch(UploadError):
    """The bucket's copy is not the local file."""


class FootageUnreadable(UploadError):
    """The footage file itself cannot be read (a bad sector gives EIO): the card's fault, not
    the endpoint's, so it neither backs the endpoint off nor holds back the files that read."""


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Local read errors of `path` as FootageUnreadable (a file gone is not one: it was merged
    or deleted, and the caller sees it as FileNotFoundError)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as err:
        raise FootageUnreadable(f"{path} cannot be read: {err.strerror or err}") from err


@dataclass(frozen=True)
class UploadSettings:
    """What the uploader needs, from the config's `upload` section (see upload_from_config)."""

    bucket: str
    key_prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    credentials_file: Path | None = None
    profile: str | None = None
    bandwidth_bytes_per_second: float = 0.0
    hours: str | None = None
    order: Order = "newest-first"
    delete_after_upload: bool = False
    part_bytes: int = 8 * 1024 * 1024
    timeout_seconds: float = 30.0
    retry_max_seconds: float = 300.0
    verify: VerifyMode = "checksum"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def in_window(hours: str | None, now: datetime) -> bool:
    """Whether local time `now` is inside HH:MM-HH:MM (wrapping past midnight); None: always."""
    if hours is None:
        return True
    first, last = hours.split("-")
    start = int(first[:2]) * 60 + int(first[3:])
    end = int(last[:2]) * 60 + int(last[3:])
    minute = now.hour * 60 + now.minute
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


class RateLimiter:
    """A token bucket: at most `rate` bytes a second on average over a second or more.

    It starts empty and holds at most one second of tokens, so the time a request spends
    waiting for the server (not sending) is made up within that second, and no more.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            capacity = max(float(READ_CHUNK), self.rate)
            self._tokens = min(capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


def make_client(settings: UploadSettings) -> Any:
    """A boto3 S3 client for `settings` (boto3 is imported here, not at module load)."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    session_args: dict[str, Any] = {}
    if settings.profile is not None:
        session_args["profile_name"] = settings.profile
    if settings.credentials_file is not None:
        # The shared-credentials file the config names, read as the AWS CLI would.
        import os

        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(settings.credentials_file)
    session = boto3.session.Session(region_name=settings.region, **session_args)
    config = Config(connect_timeout=settings.timeout_seconds, read_timeout=settings.timeout_seconds,
                    retries={"max_attempts": 1, "mode": "standard"},  # our own backoff, counted
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    s3={"addressing_style": "path"})
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


# S3 error codes that retrying does not fix, with what the operator has to change. Anything
# else (connection refused or cut, timeouts, DNS, TLS, 5xx, SlowDown, RequestTimeout,
# ExpiredToken that the credential chain renews) is transient and retried with backoff.
PERMANENT_HINTS: dict[str, str] = {
    "AccessDenied": "the credentials may not write to bucket {bucket}: grant them s3:PutObject, "
                    "s3:GetObject and the multipart actions on it, or fix upload.credentials_file / "
                    "upload.profile",
    "403": "the endpoint refused the credentials for bucket {bucket} (403): fix upload.credentials_file "
           "/ upload.profile or the bucket's policy",
    "AllAccessDisabled": "all access to bucket {bucket} is disabled: the account owner must enable it",
    "AccountProblem": "the storage account has a problem (billing, suspended): see the provider",
    "NoSuchBucket": "bucket {bucket} does not exist at {endpoint}: create it, or fix upload.bucket "
                    "(and upload.endpoint_url / upload.region)",
    "InvalidBucketName": "{bucket} is not a valid bucket name: fix upload.bucket",
    "InvalidAccessKeyId": "{endpoint} does not know the access key: fix the credentials "
                          "(upload.credentials_file, upload.profile or AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key does not match the access key: fix the credentials "
                             "(upload.credentials_file, upload.profile or AWS_SECRET_ACCESS_KEY)",
    "InvalidToken": "the session token is malformed: fix the credentials",
    "AuthorizationHeaderMalformed": "the request names the wrong region: fix upload.region",
    "PermanentRedirect": "bucket {bucket} lives at another endpoint or region: fix upload.endpoint_url "
                         "/ upload.region",
    "NoCredentials": "no credentials were found: set upload.credentials_file, upload.profile or the "
                     "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment",
    "NoChecksum": "the endpoint keeps no SHA-256 checksums: set upload.verify: download",
}


@dataclass(frozen=True)
class Stoppage:
    """Uploading stopped by a permanent error: which, what to fix, since when (wall clock)."""

    code: str
    error: str
    fix: str
    since: float

    def describe(self) -> str:
        return f"{self.code} ({self.error}): {self.fix}"


def classify(err: BaseException, settings: UploadSettings) -> Stoppage | None:
    """The Stoppage for a permanent error; None for a transient one (retried with backoff)."""
    code = _error_code(err)
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        code = "NoCredentials"
    elif isinstance(err, PermanentUploadError) and not code:
        code = "NoChecksum"
    hint = PERMANENT_HINTS.get(code)
    if hint is None:
        return None
    fix = hint.format(bucket=settings.bucket, endpoint=settings.endpoint_url or "AWS S3")
    return Stoppage(code, f"{name}: {err}", fix, time.time())


def file_digests(path: Path, part_bytes: int) -> tuple[str, list[str]]:
    """(SHA-256 of the whole file, SHA-256 of each part), base64."""
    whole = hashlib.sha256()
    parts: list[str] = []
    with path.open("rb") as f:
        while chunk := f.read(part_bytes):
            whole.update(chunk)
            parts.append(b64(hashlib.sha256(chunk).digest()))
    return b64(whole.digest()), parts


def composite(part_digests: Sequence[str]) -> str:
    joined = b"".join(base64.b64decode(d) for d in part_digests)
    return f"{b64(hashlib.sha256(joined).digest())}-{len(part_digests)}"


@dataclass
class NowRequest:
    """`vigil upload now`: the files pending when it was asked, and how far they got."""

    requested_at: float
    paths: set[Path]
    uploaded: set[Path] = field(default_factory=set)

    def progress(self, queue: UploadQueue) -> dict[str, Any]:
        left: list[UploadItem] = []
        gone = 0
        for path in self.paths - self.uploaded:
            item = queue.get(path)
            if item is None:
                gone += 1  # deleted (by hand, by retention) before it could go up
            elif item.state == "pending":
                left.append(item)
        return {"requested_at": self.requested_at, "files": len(self.paths),
                "uploaded": len(self.uploaded), "left": len(left),
                "left_bytes": sum(i.size for i in left), "gone": gone,
                "finished": not left}


@dataclass
class UploadStats:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    sent_bytes: int = 0
    parts_sent: int = 0
    parts_resumed: int = 0
    mismatches: int = 0
    failures: int = 0
    permanent_failures: int = 0
    deleted_after_upload: int = 0
    copied_files: int = 0  # hours copied inside the bucket from their uploaded segment
    unreadable: int = 0  # attempts that failed reading the footage file itself (EIO)


class Uploader:
    """The upload surface: queue, worker thread, alerts; `start()`/`stop()` symmetric."""

    def __init__(self, settings: UploadSettings, *, roots: Callable[[], Sequence[Path]],
                 open_segments: Callable[[], Sequence[Path]] = tuple,
                 alert: Callable[[bool, str], None] | None = None,
                 client_factory: Callable[[UploadSettings], Any] = make_client,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.queue = UploadQueue(key_prefix=settings.key_prefix, order=settings.order, clock=clock)
        self.stats = UploadStats()
        self.limiter = RateLimiter(settings.bandwidth_bytes_per_second)
        self._roots = roots
        self._open_segments = open_segments
        self._alert = alert
        self._client_factory = client_factory
        self._client: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._failing: str | None = None  # the alert out for this failure episode
        self._failing_kind = ""  # "transient" or the permanent error's code
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.stoppage: Stoppage | None = None  # set while a permanent error holds uploading
        self.retry_at = 0.0
        self._retry_delay = 0.0
        self._next_scan = 0.0
        self._scan_lock = threading.Lock()
        self.current: UploadItem | None = None  # the item being uploaded now
        self.now_request: NowRequest | None = None
        self.priority = ""

    def __repr__(self) -> str:
        return f"<Uploader bucket={self.settings.bucket} backlog={self.queue.backlog()}>"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- feeding ---------------------------------------------------------------------

    def when_event(self, event: object) -> None:
        """The bus subscriber: queue a closed segment or a merged hour (durably), wake the worker."""
        if isinstance(event, SegmentClosed):
            self._enqueue(event.path)
        elif isinstance(event, HourMerged):
            self._enqueue(event.path)
            self._copy_if_adopted(event)
            request = self.now_request
            for source in event.sources:  # the hour covers them: drop those not yet started
                item = self.queue.get(source)
                if item is not None and item.state == "pending" and item.upload_id is None:
                    self.queue.forget(item)
                    if request is not None and source in request.paths:
                        # `upload now` waits for the hour instead of its segments
                        request.paths.discard(source)
                        request.paths.add(event.path)
        self._wake.set()

    def _copy_if_adopted(self, event: HourMerged) -> None:
        """An hour that is its only segment renamed (write once) holds the bytes the bucket
        already has: the same size and mtime (a rename keeps both) after a verified upload.
        Mark it to be copied inside the bucket instead of sent again."""
        if len(event.sources) != 1:
            return
        source, hour = self.queue.get(event.sources[0]), self.queue.get(event.path)
        if source is None or hour is None or source.state != "done" or hour.state != "pending":
            return
        if (source.size, source.mtime_ns) != (hour.size, hour.mtime_ns) or hour.upload_id is not None:
            return
        hour.copy_from = source.key
        try:
            self.queue.save(hour)
        except OSError as err:
            logger.error("upload: could not record {} as a copy of {}: {}", hour.path, source.key, err)

    def _enqueue(self, path: Path) -> None:
        root = next((r for r in self._roots() if _is_under(path, r)), None)
        if root is None:
            logger.warning("upload: {} is under no recording root; not queued", path)
            return
        if not self.queue.load(root):
            return  # another process uploads this root (logged once)
        try:
            self.queue.add(root, path)
        except OSError as err:
            logger.error("upload: could not queue {}: {}", path, err)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("an uploader starts once")
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False  # still mid-request: its queue stays locked
        self.queue.close()  # the next uploader of these roots (a reset's) takes their locks
        return True

    def wake(self) -> None:
        self._wake.set()

    def retry_now(self) -> None:
        """Lift the backoff and any permanent-error hold: try at once (config reload, `upload now`)."""
        if self.stoppage is not None:
            logger.info("upload: trying again after {}", self.stoppage.code)
        self.stoppage = None
        self.retry_at = 0.0
        self._retry_delay = 0.0
        self._wake.set()

    def request_now(self) -> dict[str, Any]:
        """`vigil upload now`: queue what is on disk, then upload everything pending now, at
        once (outside upload.hours too, past a permanent-error hold); its progress."""
        self._scan()
        self.now_request = NowRequest(time.time(), {i.path for i in self.queue.pending()})
        self.retry_now()
        return self.now_progress() or {}

    def now_progress(self) -> dict[str, Any] | None:
        """How far the latest `upload now` got; None when none was asked."""
        request = self.now_request
        return request.progress(self.queue) if request is not None else None

    def _now_in_force(self) -> bool:
        request = self.now_request
        return request is not None and not request.progress(self.queue)["finished"]

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is pending and the worker rests (True), or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy or self.queue.backlog().files:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.5))
        return True

    # -- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        self.priority = lower_thread_priority()
        logger.info("uploader started bucket={} endpoint={} prefix={} priority={}", self.settings.bucket,
                    self.settings.endpoint_url or "AWS", self.settings.key_prefix, self.priority)
        while not self._stop.is_set():
            if time.monotonic() >= self._next_scan:
                self._next_scan = time.monotonic() + SCAN_SECONDS
                self._scan()
            worked = False
            if time.monotonic() >= self.retry_at and (
                    in_window(self.settings.hours, datetime.now()) or self._now_in_force()):
                worked = self.run_once() or self.upload_growing()
            with self._idle:
                self._idle.notify_all()
            if not worked:
                wait = max(0.1, min(SCAN_SECONDS, self.retry_at - time.monotonic()))
                self._wake.wait(wait)
                self._wake.clear()

    def _scan(self) -> None:
        try:
            with self._scan_lock:  # the worker's minute scan and an `upload now` from the API
                added = self.queue.scan(list(self._roots()), list(self._open_segments()))
        except OSError as err:
            logger.error("upload: scanning the recording roots failed: {}", err)
            return
        if added:
            logger.info("upload: queued {} closed file(s) found on disk", added)

    def run_once(self) -> bool:
        """Upload the next pending item; False when there was none or it failed."""
        pending = self.queue.pending()
        if not pending:
            return False
        request = self.now_request
        if request is not None and not request.progress(self.queue)["finished"]:
            # `upload now` first: what it asked for, in the queue's order
            pending = [i for i in pending if i.path in request.paths] or pending
        item = pending[0]
        with self._idle:
            self._busy = True
            self.current = item
        try:
            self.upload(item)
        except Exception as err:
            self._failed(item, err)
            return False
        else:
            if request is not None and item.path in request.paths:
                request.uploaded.add(item.path)
            self._worked()
            return True
        finally:
            with self._idle:
                self._busy = False
                self.current = None
                self._idle.notify_all()

    def upload_all(self, *, deadline: float,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Upload everything pending now (`vigil upload now` on a card), retrying transient
        failures with backoff until `deadline` (monotonic); True when all of it is in the
        bucket, verified. A permanent error ends it at once (see `stoppage`)."""
        self.request_now()
        while True:
            state = self.now_progress() or {}
            if progress is not None:
                progress(state)
            if state.get("finished"):
                return True
            if self.stoppage is not None or time.monotonic() >= deadline:
                return False
            if time.monotonic() < self.retry_at:
                self._stop.wait(max(0.0, min(self.retry_at, deadline) - time.monotonic()))
                continue
            self.run_once()

    # -- failures, once each way -----------------------------------------------------

    def _failed(self, item: UploadItem, err: Exception) -> None:
        self.stats.failures += 1
        item.attempts += 1
        message = f"{type(err).__name__}: {err}"
        item.last_error = message
        if isinstance(err, FootageUnreadable):
            item.read_failures += 1
        with contextlib.suppress(OSError):
            self.queue.save(item)
        self.last_error = message
        if isinstance(err, FootageUnreadable):
            self.stats.unreadable += 1
            log = logger.error if item.read_failures == 1 else logger.debug
            log("upload: {}; it stays on the card, pending, and goes after every file that reads "
                "(attempt {})", err, item.read_failures)
            if any(i.read_failures == 0 for i in self.queue.pending()):
                return  # the endpoint is not at fault: the next file goes at once
            self._back_off()  # nothing else waits: try the damaged file later, not in a tight loop
            return
        stoppage = None if isinstance(err, VerifyMismatch) else classify(err, self.settings)
        if stoppage is not None:
            # Retrying cannot fix this: hold until the config changes, `upload now`, or long after.
            # The file and its record stay; retention still treats it as not uploaded.
            self.stoppage = stoppage
            self._retry_delay = 0.0
            self.retry_at = time.monotonic() + PERMANENT_RETRY_SECONDS
            self.stats.permanent_failures += 1
            self._raise_alert(stoppage.code, f"upload to bucket {self.settings.bucket} stopped by "
                                             f"{stoppage.describe()}; footage is kept and tried again "
                                             f"on a config reload, `vigil upload now` or in "
                                             f"{PERMANENT_RETRY_SECONDS / 60:g} min")
            return
        delay = self._back_off()
        if isinstance(err, VerifyMismatch):
            logger.warning("upload: {} ({}); uploading it again", item.key, err)
            return
        if self._failing is None or self._failing_kind != "transient":
            logger.error("upload endpoint {} failing: {}; retrying with backoff up to {:g}s",
                         self.settings.endpoint_url or "AWS", message, self.settings.retry_max_seconds)
        else:
            logger.debug("upload still failing: {} (next try in {:.1f}s)", message, delay)
        self._raise_alert("transient", f"upload to bucket {self.settings.bucket} failing: {message}")

    def _back_off(self) -> float:
        """Double the wait before the next attempt (up to retry_max_seconds, with jitter)."""
        self._retry_delay = min(self.settings.retry_max_seconds,
                                max(RETRY_FIRST_SECONDS, self._retry_delay * 2))
        delay = random.uniform(self._retry_delay / 2, self._retry_delay)
        self.retry_at = time.monotonic() + delay
        return delay

    def _raise_alert(self, kind: str, message: str) -> None:
        """One alert per failure episode; a new one only when the kind of failure changes."""
        if self._failing is not None and self._failing_kind == kind:
            return
        if kind != "transient":
            logger.error("{}", message)
        if self._alert is not None and self._failing is not None:
            self._alert(False, self._failing)  # the episode turned into another kind of failure
        self._failing, self._failing_kind = message, kind
        if self.failing_since is None:
            self.failing_since = time.time()
        if self._alert is not None:
            self._alert(True, message)

    def _worked(self) -> None:
        self._retry_delay = 0.0
        self.retry_at = 0.0
        self.stoppage = None
        if self._failing is not None:
            logger.info("upload endpoint {} works again", self.settings.endpoint_url or "AWS")
            if self._alert is not None:
                self._alert(False, f"upload to bucket {self.settings.bucket} works again")
            self._failing, self._failing_kind = None, ""
            self.failing_since = None

    # -- one file --------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory(self.settings)
        return self._client

    def _pay(self, n: int) -> None:
        """Wait until the bandwidth cap lets `n` bytes go (in read-chunk steps), and count them.

        botocore may read a file-like body more than once (length, signing), so the request
        gets plain bytes and the limiter is paid here, once per byte sent.
        """
        for offset in range(0, n, READ_CHUNK):
            self.limiter.take(min(READ_CHUNK, n - offset))
        self.stats.sent_bytes += n

    def upload(self, item: UploadItem) -> None:
        """Bring `item` to a verified object in the bucket, resuming a stored multipart upload."""
        path = item.path
        try:
            st = path.stat()
        except FileNotFoundError:
            logger.info("upload: {} is gone before it was uploaded (merged or deleted)", path)
            self._abort(item)
            self.queue.forget(item)
            return
        part_bytes = self.settings.part_bytes
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns or (
                item.upload_id is not None and item.part_size != part_bytes):
            self._abort(item)
            item.size, item.mtime_ns, item.upload_id, item.parts = st.st_size, st.st_mtime_ns, None, []
        with reading(path):
            whole, part_digests = file_digests(path, part_bytes)
        self._put_manifest(item)  # the proof first: an object in the bucket never lacks its own
        if item.copy_from is not None and self._copied(item, whole, part_digests):
            pass
        elif len(part_digests) <= 1:
            self._abort(item)  # parts sent while it grew, if any: one put is the whole file
            self._put_whole(item, part_digests[0] if part_digests else b64(hashlib.sha256().digest()))
        else:
            self._multipart(item, part_digests)
        try:
            self._verify(item, whole, part_digests)
        except VerifyMismatch:
            self.stats.mismatches += 1
            with contextlib.suppress(Exception):
                self.client().delete_object(Bucket=self.settings.bucket, Key=item.key)
            item.upload_id, item.parts = None, []
            self.queue.save(item)
            raise
        item.state = "done"
        item.checksum = composite(part_digests) if len(part_digests) > 1 else (part_digests or [whole])[0]
        item.verified_by = self.settings.verify
        item.done_at = time.time()
        item.upload_id, item.parts, item.last_error, item.read_failures = None, [], None, 0
        self.queue.save(item)
        self.stats.uploaded_files += 1
        self.stats.uploaded_bytes += item.size
        logger.info("uploaded {} -> s3://{}/{} bytes={} verified by {}", path, self.settings.bucket, item.key,
                    item.size, item.verified_by)
        if self.settings.delete_after_upload:
            self._delete_local(item)

    def _copied(self, item: UploadItem, whole: str, digests: list[str]) -> bool:
        """Copy `item.copy_from` to `item.key` inside the bucket and check the copy against the
        file (the verification below does it again, as for any upload); False, and the item is
        sent as usual, when the bucket cannot copy it (gone, over 5 GB, not supported) or the
        copy is not the file's bytes."""
        source, item.copy_from = item.copy_from, None
        self.queue.save(item)  # whatever happens, a retry sends the file
        client, bucket = self.client(), self.settings.bucket
        try:
            client.copy_object(Bucket=bucket, Key=item.key, CopySource={"Bucket": bucket, "Key": source},
                               ChecksumAlgorithm="SHA256", ContentType="video/mp4",
                               MetadataDirective="REPLACE")
            head = client.head_object(Bucket=bucket, Key=item.key, ChecksumMode="ENABLED")
        except Exception as err:
            logger.info("upload: the bucket could not copy {} to {} ({}); sending the file", source, item.key,
                        err)
            return False
        expected = {whole.split("-")[0], (composite(digests) if len(digests) > 1 else whole).split("-")[0]}
        checksum = head.get("ChecksumSHA256")
        if int(head.get("ContentLength", -1)) != item.size or (checksum is not None and
                                                               checksum.split("-")[0] not in expected):
            logger.warning("upload: the bucket's copy {} of {} is not the file's bytes; sending the file",
                           item.key, source)
            return False
        self.stats.copied_files += 1
        logger.info("upload: {} copied inside the bucket from {} (the same bytes, renamed on the card)",
                    item.key, source)
        return True

    def _put_manifest(self, item: UploadItem) -> None:
        """The footage's signed manifest (integrity), if it has one, as the object KEY plus
        `.manifest.json` beside it, checked by its SHA-256 as the footage is; `vigil verify`
        reads a downloaded pair as it reads them on a card."""
        manifest = manifest_path(item.path)
        try:
            data = manifest.read_bytes()
        except FileNotFoundError:
            return
        digest = b64(hashlib.sha256(data).digest())
        key = item.key + MANIFEST_SUFFIX
        self._pay(len(data))
        reply = self.client().put_object(Bucket=self.settings.bucket, Key=key, Body=data,
                                         ContentLength=len(data), ContentType="application/json",
                                         ChecksumSHA256=digest)
        echoed = reply.get("ChecksumSHA256")
        if echoed is not None and echoed != digest:
            raise VerifyMismatch(f"{key} stored with SHA-256 {echoed}, sent {digest}")

    def _put_whole(self, item: UploadItem, digest: str) -> None:
        with reading(item.path):
            data = item.path.read_bytes()
        self._pay(len(data))
        self.client().put_object(Bucket=self.settings.bucket, Key=item.key, Body=data,
                                 ContentLength=len(data), ContentType="video/mp4",
                                 ChecksumSHA256=digest)
        self.stats.parts_sent += 1

    def _begin_multipart(self, item: UploadItem) -> None:
        reply = self.client().create_multipart_upload(Bucket=self.settings.bucket, Key=item.key,
                                                      ContentType="video/mp4", ChecksumAlgorithm="SHA256")
        item.upload_id, item.part_size, item.parts = str(reply["UploadId"]), self.settings.part_bytes, []
        self.queue.save(item)  # the id is durable before the first part goes

    def _send_part(self, item: UploadItem, number: int, data: bytes, digest: str) -> StoredPart:
        self._pay(len(data))
        reply = self.client().upload_part(Bucket=self.settings.bucket, Key=item.key, UploadId=item.upload_id,
                                          PartNumber=number, Body=data, ContentLength=len(data),
                                          ChecksumSHA256=digest)
        echoed = reply.get("ChecksumSHA256")
        if echoed is not None and echoed != digest:
            raise VerifyMismatch(f"part {number} stored with SHA-256 {echoed}, sent {digest}")
        self.stats.parts_sent += 1
        return StoredPart(number, digest, str(reply["ETag"]))

    def upload_growing(self) -> bool:
        """Send the next whole part of an open segment while it is recorded (segments are an
        hour long: footage leaves the unit a part behind recording, not an hour); False when no
        open segment has a whole part unsent. The parts go as a multipart upload under the
        segment's closed name; when it closes, its upload sends only the rest and completes it
        (each stored part checked against the closed file first). If the unit is destroyed
        first, `vigil upload salvage` completes such uploads from anywhere: the object is the
        footage up to its last part, playable up to its last whole fragment."""
        if self.stoppage is not None or time.monotonic() < self.retry_at:
            return False
        part_bytes = self.settings.part_bytes
        for partial in self._open_segments():
            if not partial.name.endswith(PARTIAL_SUFFIX):
                continue
            root = next((r for r in self._roots() if _is_under(partial, r)), None)
            final = final_path(partial)
            known = self.queue.get(final)
            if root is None or not self.queue.load(root) or (known is not None and known.state != "growing"):
                continue
            number = len(known.parts) + 1 if known is not None else 1
            try:
                size = partial.stat().st_size
            except OSError:
                continue
            if size < number * part_bytes:
                continue
            item = known if known is not None else self.queue.growing(root, final)
            with self._idle:
                self._busy, self.current = True, item
            try:
                if item.upload_id is None:
                    self._begin_multipart(item)
                with reading(partial), partial.open("rb") as f:
                    f.seek((number - 1) * part_bytes)
                    data = f.read(part_bytes)
                if len(data) < part_bytes:
                    return False  # cut short under us (a crash's recovery trims to fragments)
                digest = b64(hashlib.sha256(data).digest())
                item.parts = [*item.parts, self._send_part(item, number, data, digest)]
                self.queue.save(item)
            except Exception as err:
                self._failed(item, err)
                return False
            finally:
                with self._idle:
                    self._busy, self.current = False, None
                    self._idle.notify_all()
            self._worked()
            logger.debug("upload: part {} of open {} sent ({} bytes recorded)", number, partial.name, size)
            return True
        return False

    def _multipart(self, item: UploadItem, digests: list[str]) -> None:
        client, bucket, part_bytes = self.client(), self.settings.bucket, self.settings.part_bytes
        stored: dict[int, StoredPart] = {}
        if item.upload_id is not None:
            stored = self._stored_parts(item, digests)
        if item.upload_id is None:
            self._begin_multipart(item)
        self.stats.parts_resumed += len(stored)
        with item.path.open("rb") as f:
            for number, digest in enumerate(digests, 1):
                if number in stored:
                    continue
                if self._stop.is_set():
                    raise UploadError("the uploader is stopping")
                with reading(item.path):
                    f.seek((number - 1) * part_bytes)
                    data = f.read(part_bytes)
                if b64(hashlib.sha256(data).digest()) != digest:
                    raise UploadError(f"{item.path} changed while it was uploaded")
                stored[number] = self._send_part(item, number, data, digest)
                item.parts = sorted(stored.values(), key=lambda p: p.number)
                self.queue.save(item)
        client.complete_multipart_upload(
            Bucket=bucket, Key=item.key, UploadId=item.upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.sha256}
                                       for p in item.parts]})

    def _stored_parts(self, item: UploadItem, digests: list[str]) -> dict[int, StoredPart]:
        """The parts of `item`'s upload the bucket holds and the queue recorded, that still match
        the file; an upload the bucket no longer knows starts over."""
        client = self.client()
        try:
            listed: dict[int, str] = {}
            marker = 0
            while True:
                reply = client.list_parts(Bucket=self.settings.bucket, Key=item.key, UploadId=item.upload_id,
                                          PartNumberMarker=marker)
                for part in reply.get("Parts", []):
                    listed[int(part["PartNumber"])] = str(part["ETag"])
                if not reply.get("IsTruncated"):
                    break
                marker = int(reply["NextPartNumberMarker"])
        except Exception as err:
            if _error_code(err) in ("NoSuchUpload", "404"):
                logger.info("upload: the bucket no longer has upload {} of {}; starting over",
                            item.upload_id, item.key)
                item.upload_id, item.parts = None, []
                return {}
            raise
        kept = {p.number: p for p in item.parts if listed.get(p.number) == p.etag
                and p.number <= len(digests) and digests[p.number - 1] == p.sha256}
        logger.info("upload: resuming {} with {} of {} parts already stored", item.key, len(kept),
                    len(digests))
        return kept

    def _abort(self, item: UploadItem) -> None:
        if item.upload_id is None:
            return
        with contextlib.suppress(Exception):
            self.client().abort_multipart_upload(Bucket=self.settings.bucket, Key=item.key,
                                                 UploadId=item.upload_id)
        item.upload_id, item.parts = None, []

    def _verify(self, item: UploadItem, whole: str, digests: list[str]) -> None:
        client, bucket = self.client(), self.settings.bucket
        if self.settings.verify == "download":
            reply = client.get_object(Bucket=bucket, Key=item.key)
            sha = hashlib.sha256()
            size = 0
            for chunk in reply["Body"].iter_chunks(READ_CHUNK):
                sha.update(chunk)
                size += len(chunk)
            if size != item.size or b64(sha.digest()) != whole:
                raise VerifyMismatch(f"the bucket's copy of {item.key} differs from the file "
                                     f"({size} bytes, SHA-256 {b64(sha.digest())})")
            return
        expected = composite(digests) if len(digests) > 1 else (digests[0] if digests else whole)
        try:
            attrs = client.get_object_attributes(Bucket=bucket, Key=item.key,
                                                 ObjectAttributes=["Checksum", "ObjectSize"])
            size = int(attrs.get("ObjectSize", -1))
            checksum = attrs.get("Checksum", {}).get("ChecksumSHA256")
        except Exception as err:
            if _error_code(err) not in ("NotImplemented", "MethodNotAllowed", "InvalidRequest", "400", "501"):
                raise
            head = client.head_object(Bucket=bucket, Key=item.key, ChecksumMode="ENABLED")
            size, checksum = int(head["ContentLength"]), head.get("ChecksumSHA256")
        if checksum is None:
            raise PermanentUploadError(f"the endpoint keeps no SHA-256 for {item.key}; "
                                       "set upload.verify: download")
        if size != item.size or checksum.split("-")[0] != expected.split("-")[0]:
            raise VerifyMismatch(f"the bucket holds {item.key} with {size} bytes and SHA-256 {checksum}; "
                                 f"the file has {item.size} bytes and {expected}")

    def _delete_local(self, item: UploadItem) -> None:
        """delete_after_upload: free the card once the copy is verified (not while a merge runs)."""
        try:
            with housekeeping_lock(Path(item.root), timeout=0):
                if self.queue.is_uploaded(item.path):
                    item.path.unlink()
                    self.stats.deleted_after_upload += 1
                    logger.info("deleted {} after its verified upload", item.path)
                    self.queue.forget(item)
        except MergeBusy:
            logger.debug("upload: {} kept for now, housekeeping holds its root", item.path)
        except OSError as err:
            logger.warning("upload: could not delete {} after upload: {}", item.path, err)

    # -- status ----------------------------------------------------------------------

    def backlog(self) -> Backlog:
        return self.queue.backlog()

    def endpoint_state(self) -> str:
        """"ok", "failing" (transient, retried with backoff) or "stopped" (a permanent error)."""
        return "stopped" if self.stoppage is not None else "failing" if self._failing else "ok"

    def summary(self) -> UploadBacklog:
        """The backlog as the status snapshot carries it (cheap: called every loop iteration)."""
        backlog = self.backlog()
        stoppage = self.stoppage
        return UploadBacklog(
            files=backlog.files, bytes=backlog.bytes, oldest_pending_seconds=backlog.oldest_age_seconds,
            in_flight=1 if self.current is not None else 0, started=backlog.started, failed=backlog.failed,
            endpoint=self.endpoint_state(), error=self._failing,
            stopped_by=stoppage.code if stoppage is not None else None,
            fix=stoppage.fix if stoppage is not None else None)

    def status(self) -> dict[str, Any]:
        """The queue in full: what `GET /upload/status` and `vigil upload status` show."""
        stoppage = self.stoppage
        return {
            "enabled": True,
            "bucket": self.settings.bucket, "endpoint_url": self.settings.endpoint_url,
            "prefix": self.settings.key_prefix, "running": self.is_running,
            "endpoint": self.endpoint_state(), "error": self._failing, "last_error": self.last_error,
            "failing_since": self.failing_since,
            "stopped": None if stoppage is None else {"code": stoppage.code, "error": stoppage.error,
                                                      "fix": stoppage.fix, "since": stoppage.since},
            "retry_in_seconds": round(max(0.0, self.retry_at - time.monotonic()), 1),
            **queue_status(self.queue, self.current),
            "now": self.now_progress(),
            "stats": dict(vars(self.stats)),
        }

    def metrics(self, out: Exposition) -> None:
        """This surface's backlog and counters on the metrics page (a MetricsHook)."""
        backlog = self.backlog()
        out.gauge("vigil_upload_backlog_files", "Closed footage files not yet uploaded and verified.",
                  backlog.files)
        out.gauge("vigil_upload_backlog_bytes", "Bytes of closed footage not yet uploaded and verified.",
                  backlog.bytes)
        out.gauge("vigil_upload_oldest_pending_seconds", "Age of the oldest pending upload, in seconds.",
                  backlog.oldest_age_seconds)
        out.gauge("vigil_upload_endpoint_up", "1 while the latest upload attempt worked.",
                  0 if self._failing else 1)
        out.gauge("vigil_upload_stopped", "1 while a permanent error (no such bucket, access denied, "
                  "...) holds uploading until the config is fixed.", 1 if self.stoppage else 0)
        out.gauge("vigil_upload_in_flight_files", "Files being uploaded now.", 1 if self.current else 0)
        out.gauge("vigil_upload_failed_files", "Pending files whose latest attempt failed.", backlog.failed)
        out.counter("vigil_upload_files_total", "Files uploaded and verified.", self.stats.uploaded_files)
        out.counter("vigil_upload_copied_files_total",
                    "Hours copied inside the bucket from their uploaded segment (renamed on the card).",
                    self.stats.copied_files)
        out.counter("vigil_upload_sent_bytes_total", "Bytes sent to the bucket, retries included.",
                    self.stats.sent_bytes)
        out.counter("vigil_upload_failures_total", "Upload attempts that failed.", self.stats.failures)
        out.counter("vigil_upload_permanent_failures_total",
                    "Upload attempts that failed with an error retrying cannot fix.",
                    self.stats.permanent_failures)
        out.counter("vigil_upload_mismatches_total",
                    "Objects whose copy in the bucket differed from the file and went up again.",
                    self.stats.mismatches)


def queue_status(queue: UploadQueue, current: UploadItem | None = None, *,
                 unqueued: Sequence[Path] = ()) -> dict[str, Any]:
    """The queue's side of an upload status: counts, bytes, the oldest pending's age, and the
    pending and failed items (the first STATUS_ITEMS_SHOWN); `unqueued` closed files no
    record covers yet (a card read offline) count as pending."""
    now = time.time()
    pending = queue.pending()
    backlog = queue.backlog()

    def row(item: UploadItem) -> dict[str, Any]:
        return {"key": item.key, "path": str(item.path), "bytes": item.size,
                "age_seconds": round(max(0.0, now - item.enqueued_at), 1),
                "parts_stored": len(item.parts), "attempts": item.attempts, "error": item.last_error}

    failed = [i for i in pending if i.last_error is not None]
    unqueued_bytes = 0
    for path in unqueued:
        with contextlib.suppress(OSError):
            unqueued_bytes += path.stat().st_size
    return {
        "pending": backlog.files + len(unqueued), "pending_bytes": backlog.bytes + unqueued_bytes,
        "unqueued": len(unqueued),
        "oldest_pending_seconds": round(backlog.oldest_age_seconds, 1),
        "in_flight": [row(current)] if current is not None else [],
        "started": backlog.started, "failed": len(failed), "done": queue.done_count(),
        "pending_items": [row(i) for i in pending[:STATUS_ITEMS_SHOWN]],
        "failed_items": [row(i) for i in failed[:STATUS_ITEMS_SHOWN]],
    }


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def salvage(settings: UploadSettings, client: Any) -> list[dict[str, Any]]:
    """Complete every unfinished multipart upload under the key prefix with the parts the
    bucket holds (`vigil upload salvage`, from any machine, after a unit was lost): each
    becomes an object of the footage up to its last stored part, a fragmented MP4 cut at a
    part boundary that plays up to its last whole fragment. What was completed, in order."""
    done: list[dict[str, Any]] = []
    bucket = settings.bucket
    marker: dict[str, str] = {}
    while True:
        listing = client.list_multipart_uploads(Bucket=bucket, Prefix=settings.key_prefix, **marker)
        for upload in listing.get("Uploads", []):
            key, upload_id = str(upload["Key"]), str(upload["UploadId"])
            parts: list[dict[str, Any]] = []
            part_marker = 0
            while True:
                reply = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id,
                                          PartNumberMarker=part_marker)
                parts += reply.get("Parts", [])
                if not reply.get("IsTruncated"):
                    break
                part_marker = int(reply["NextPartNumberMarker"])
            if not parts:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                continue
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [
                    {"PartNumber": int(p["PartNumber"]), "ETag": p["ETag"],
                     **({"ChecksumSHA256": p["ChecksumSHA256"]} if p.get("ChecksumSHA256") else {})}
                    for p in sorted(parts, key=lambda p: int(p["PartNumber"]))]})
            done.append({"key": key, "parts": len(parts), "bytes": sum(int(p["Size"]) for p in parts)})
        if not listing.get("IsTruncated"):
            return done
        marker = {"KeyMarker": listing["NextKeyMarker"], "UploadIdMarker": listing["NextUploadIdMarker"]}
