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
broken endpoint is one alert when it breaks and one when it works again.

boto3 is imported only when an uploader starts: a unit with upload disabled never loads it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from controller.core.events import HourMerged, SegmentClosed
from controller.storage.housekeeping import lower_thread_priority
from controller.storage.merge import MergeBusy, housekeeping_lock
from controller.surfaces.metrics import Exposition
from controller.surfaces.upload_queue import Backlog, Order, StoredPart, UploadItem, UploadQueue

THREAD_NAME = "vigil-upload"
SCAN_SECONDS = 60.0
RETRY_FIRST_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 64 * 1024
ALERT_KEY = "upload-endpoint"
VerifyMode = Literal["checksum", "download"]


class UploadError(Exception):
    """An upload did not reach a verified object (the endpoint failed or the copy differs)."""


class VerifyMismatch(UploadError):
    """The bucket's copy is not the local file."""


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
class UploadStats:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    sent_bytes: int = 0
    parts_sent: int = 0
    parts_resumed: int = 0
    mismatches: int = 0
    failures: int = 0
    deleted_after_upload: int = 0


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
        self._failing: str | None = None
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.retry_at = 0.0
        self._retry_delay = 0.0
        self._next_scan = 0.0
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
            for source in event.sources:  # the hour covers them: drop those not yet started
                item = self.queue.get(source)
                if item is not None and item.state == "pending" and item.upload_id is None:
                    self.queue.forget(item)
        self._wake.set()

    def _enqueue(self, path: Path) -> None:
        root = next((r for r in self._roots() if _is_under(path, r)), None)
        if root is None:
            logger.warning("upload: {} is under no recording root; not queued", path)
            return
        self.queue.load(root)
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
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

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
            if time.monotonic() >= self.retry_at and in_window(self.settings.hours, datetime.now()):
                worked = self.run_once()
            with self._idle:
                self._idle.notify_all()
            if not worked:
                wait = max(0.1, min(SCAN_SECONDS, self.retry_at - time.monotonic()))
                self._wake.wait(wait)
                self._wake.clear()

    def _scan(self) -> None:
        try:
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
        item = pending[0]
        with self._idle:
            self._busy = True
        try:
            self.upload(item)
        except Exception as err:
            self._failed(item, err)
            return False
        else:
            self._worked()
            return True
        finally:
            with self._idle:
                self._busy = False
                self._idle.notify_all()

    def upload_all(self, *, deadline: float) -> bool:
        """Upload everything pending now, retrying with backoff until `deadline` (monotonic);
        True when nothing is left pending (`vigil upload now`)."""
        self._scan()
        while self.queue.pending():
            if time.monotonic() >= deadline:
                return False
            if time.monotonic() < self.retry_at:
                time.sleep(min(self.retry_at, deadline) - time.monotonic() if self.retry_at < deadline
                           else max(0.0, deadline - time.monotonic()))
                continue
            self.run_once()
        return True

    # -- failures, once each way -----------------------------------------------------

    def _failed(self, item: UploadItem, err: Exception) -> None:
        self.stats.failures += 1
        item.attempts += 1
        with contextlib.suppress(OSError):
            self.queue.save(item)
        message = f"{type(err).__name__}: {err}"
        self.last_error = message
        self._retry_delay = min(self.settings.retry_max_seconds,
                                max(RETRY_FIRST_SECONDS, self._retry_delay * 2))
        delay = random.uniform(self._retry_delay / 2, self._retry_delay)  # jitter
        self.retry_at = time.monotonic() + delay
        if isinstance(err, VerifyMismatch):
            logger.warning("upload: {} ({}); uploading it again", item.key, err)
            return
        if self._failing is None:
            self._failing = message
            self.failing_since = time.time()
            logger.error("upload endpoint {} failing: {}; retrying with backoff up to {:g}s",
                         self.settings.endpoint_url or "AWS", message, self.settings.retry_max_seconds)
            if self._alert is not None:
                self._alert(True, f"upload to bucket {self.settings.bucket} failing: {message}")
        else:
            logger.debug("upload still failing: {} (next try in {:.1f}s)", message, delay)

    def _worked(self) -> None:
        self._retry_delay = 0.0
        self.retry_at = 0.0
        if self._failing is not None:
            logger.info("upload endpoint {} works again", self.settings.endpoint_url or "AWS")
            if self._alert is not None:
                self._alert(False, f"upload to bucket {self.settings.bucket} works again")
            self._failing = None
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
        whole, part_digests = file_digests(path, part_bytes)
        if len(part_digests) <= 1:
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
        item.upload_id, item.parts = None, []
        self.queue.save(item)
        self.stats.uploaded_files += 1
        self.stats.uploaded_bytes += item.size
        logger.info("uploaded {} -> s3://{}/{} bytes={} verified by {}", path, self.settings.bucket, item.key,
                    item.size, item.verified_by)
        if self.settings.delete_after_upload:
            self._delete_local(item)

    def _put_whole(self, item: UploadItem, digest: str) -> None:
        data = item.path.read_bytes()
        self._pay(len(data))
        self.client().put_object(Bucket=self.settings.bucket, Key=item.key, Body=data,
                                 ContentLength=len(data), ContentType="video/mp4",
                                 ChecksumSHA256=digest)
        self.stats.parts_sent += 1

    def _multipart(self, item: UploadItem, digests: list[str]) -> None:
        client, bucket, part_bytes = self.client(), self.settings.bucket, self.settings.part_bytes
        stored: dict[int, StoredPart] = {}
        if item.upload_id is not None:
            stored = self._stored_parts(item, digests)
        if item.upload_id is None:
            reply = client.create_multipart_upload(Bucket=bucket, Key=item.key, ContentType="video/mp4",
                                                   ChecksumAlgorithm="SHA256")
            item.upload_id, item.part_size, item.parts = str(reply["UploadId"]), part_bytes, []
            self.queue.save(item)  # the id is durable before the first part goes
        self.stats.parts_resumed += len(stored)
        with item.path.open("rb") as f:
            for number, digest in enumerate(digests, 1):
                if number in stored:
                    continue
                if self._stop.is_set():
                    raise UploadError("the uploader is stopping")
                f.seek((number - 1) * part_bytes)
                data = f.read(part_bytes)
                if b64(hashlib.sha256(data).digest()) != digest:
                    raise UploadError(f"{item.path} changed while it was uploaded")
                self._pay(len(data))
                reply = client.upload_part(Bucket=bucket, Key=item.key, UploadId=item.upload_id,
                                           PartNumber=number, Body=data, ContentLength=len(data),
                                           ChecksumSHA256=digest)
                echoed = reply.get("ChecksumSHA256")
                if echoed is not None and echoed != digest:
                    raise VerifyMismatch(f"part {number} stored with SHA-256 {echoed}, sent {digest}")
                self.stats.parts_sent += 1
                stored[number] = StoredPart(number, digest, str(reply["ETag"]))
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
            raise UploadError(f"the endpoint keeps no SHA-256 for {item.key}; set upload.verify: download")
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

    def status(self) -> dict[str, Any]:
        backlog = self.backlog()
        return {
            "bucket": self.settings.bucket, "endpoint_url": self.settings.endpoint_url,
            "prefix": self.settings.key_prefix, "running": self.is_running,
            "backlog_files": backlog.files, "backlog_bytes": backlog.bytes,
            "oldest_pending_seconds": round(backlog.oldest_age_seconds, 1),
            "failing": self._failing, "last_error": self.last_error,
            **{k: v for k, v in vars(self.stats).items()},
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
        out.counter("vigil_upload_files_total", "Files uploaded and verified.", self.stats.uploaded_files)
        out.counter("vigil_upload_sent_bytes_total", "Bytes sent to the bucket, retries included.",
                    self.stats.sent_bytes)
        out.counter("vigil_upload_failures_total", "Upload attempts that failed.", self.stats.failures)
        out.counter("vigil_upload_mismatches_total",
                    "Objects whose copy in the bucket differed from the file and went up again.",
                    self.stats.mismatches)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
