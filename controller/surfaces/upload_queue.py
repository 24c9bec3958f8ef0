"""The durable upload queue: one small JSON file per footage file, beside the footage.

Each root keeps its queue in ROOT/.vigil-upload/ (a dot folder: the footage walker in
hw/footage.py ignores it), so an item lives on the same card as the file it stands for. An
item is written as the segment writer writes: to a temporary file, fsynced, renamed over
the old one, and the folder fsynced, so a kill -9 or a power cut leaves either the old or
the new record, never half of one. An item holds what a restart needs to resume a multipart
upload: the upload id and each stored part's number, SHA-256 and ETag.

An item is `pending` until its object is verified in the bucket, then `done`; a done item is
kept while its file exists, so retention can ask whether a file is already off the unit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from hw.footage import list_footage, partial_path, segment_start
from hw.writer import fsync_directory

QUEUE_DIR_NAME = ".vigil-upload"
LOCK_NAME = "lock"  # one uploading process per root: `vigil upload now --root` beside a daemon
ITEM_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
ItemState = Literal["growing", "pending", "done"]  # growing: the segment is still open
Order = Literal["newest-first", "oldest-first"]


@dataclass(frozen=True, slots=True)
class StoredPart:
    """One part the bucket holds for an unfinished multipart upload."""

    number: int
    sha256: str  # base64, as S3 spells ChecksumSHA256
    etag: str


@dataclass
class UploadItem:
    """One footage file on its way to the bucket (or already there: state `done`)."""

    root: str
    relative: str  # YYYY-MM-DD/HH/NAME.mp4 or YYYY-MM-DD/HH.mp4
    key: str
    start: float  # the footage's start (UTC seconds), for the order
    size: int
    mtime_ns: int
    enqueued_at: float
    state: ItemState = "pending"
    upload_id: str | None = None
    part_size: int = 0
    parts: list[StoredPart] = field(default_factory=list)
    checksum: str | None = None  # the verified object's checksum, once done
    verified_by: str | None = None  # how: "checksum" (the bucket's SHA-256s) or "download"
    done_at: float | None = None
    attempts: int = 0
    last_error: str | None = None  # why the latest attempt failed, until one works
    # The bucket already holds these bytes under this key (an hour adopted from an uploaded
    # segment by a rename): the bucket copies them, nothing crosses the uplink again.
    copy_from: str | None = None
    # Attempts that failed reading the file itself (a bad sector: EIO); such an item goes after
    # every file that can be read, so one damaged file does not hold the rest of the card back.
    read_failures: int = 0

    @property
    def path(self) -> Path:
        return Path(self.root) / self.relative

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UploadItem:
        data: dict[str, Any] = json.loads(text)
        data["parts"] = [StoredPart(**p) for p in data.get("parts", [])]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # a newer vigil's extra fields


@dataclass(frozen=True, slots=True)
class Backlog:
    files: int
    bytes: int
    oldest_age_seconds: float  # 0 when nothing is pending
    started: int = 0  # pending items with a multipart upload under way (resumable)
    failed: int = 0  # pending items whose latest attempt failed


@dataclass(frozen=True, slots=True)
class _Tally:
    """The pending items' totals, kept until the queue changes."""

    files: int
    bytes: int
    oldest_enqueued_at: float | None
    started: int
    failed: int
    done: int


def item_file(root: Path, relative: str) -> Path:
    digest = hashlib.sha256(relative.encode()).hexdigest()[:32]
    return root / QUEUE_DIR_NAME / (digest + ITEM_SUFFIX)


def write_durably(path: Path, text: str) -> None:
    """temp -> fsync -> rename -> fsync of the folder: the writer's discipline (hw/writer.py)."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


class UploadQueue:
    """Every upload item of a set of roots, on disk and in memory; safe from any thread."""

    def __init__(self, *, key_prefix: str, order: Order = "newest-first",
                 clock: Any = time.time) -> None:
        self.key_prefix = key_prefix
        self.order = order
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[Path, UploadItem] = {}
        self._loaded: set[Path] = set()
        self._lock_fds: list[int] = []  # held until the process ends
        self.busy: dict[Path, str] = {}  # roots whose queue another process holds, and why
        self._told_busy: set[Path] = set()
        self.broken_records = 0
        # The status snapshot asks for the backlog every loop iteration: the totals are
        # counted again only after an item changed (save/forget bump the version).
        self._version = 0
        self._tally: tuple[int, _Tally] | None = None

    def __repr__(self) -> str:
        return f"<UploadQueue items={len(self._items)} backlog={self.backlog()}>"

    # -- loading and feeding ---------------------------------------------------------

    def load(self, root: Path, *, read_only: bool = False) -> bool:
        """Read ROOT's queue folder once (a restart resumes from it); `read_only` changes
        nothing on disk (`vigil upload status` on a card). Unless read-only, this process then
        holds the folder's lock for as long as it lives: False (logged once) while another
        process (a `vigil upload now --root` beside a daemon) holds it, and nothing of ROOT may
        be uploaded or recorded here until it lets go."""
        if root in self._loaded:
            return True
        folder = root / QUEUE_DIR_NAME
        try:
            if not read_only:
                folder.mkdir(exist_ok=True)
                if not self._lock_folder(root, folder):
                    return False
            entries = list(folder.iterdir()) if folder.is_dir() else []
        except OSError as err:
            logger.error("upload queue folder {} is unusable: {}", folder, err)
            return False
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX):
                if not read_only:
                    with contextlib.suppress(OSError):
                        entry.unlink()  # a write a crash interrupted: the old record still stands
                continue
            if not entry.name.endswith(ITEM_SUFFIX):
                continue
            try:
                item = UploadItem.from_json(entry.read_text())
            except (OSError, ValueError, TypeError) as err:
                self.broken_records += 1
                logger.error("upload queue record {} is unreadable ({}); the file is queued again",
                             entry, err)
                if not read_only:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                continue
            item.root = str(root)  # the root may have been mounted elsewhere since
            with self._lock:
                self._items[item.path] = item
                self._version += 1
        self._loaded.add(root)
        return True

    def close(self) -> None:
        """Let go of the roots' locks; the queue is not used after this."""
        for fd in self._lock_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lock_fds.clear()
        self._loaded.clear()

    def _lock_folder(self, root: Path, folder: Path) -> bool:
        """Take the queue folder's lock (flock: the kernel lets go when the process ends, however
        it ends) and write our pid in it; False when another process holds it."""
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            self.busy[root] = f"another uploader (pid {holder}) holds the upload queue of {root}"
            if root not in self._told_busy:
                self._told_busy.add(root)
                logger.error("upload: {}; this process leaves that root alone until it is done",
                             self.busy[root])
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fds.append(fd)
        self.busy.pop(root, None)
        return True

    def add(self, root: Path, path: Path) -> UploadItem | None:
        """Queue the closed footage file `path` under `root` (again, if it changed); None if gone."""
        try:
            st = path.stat()
            relative = path.relative_to(root).as_posix()
        except (OSError, ValueError):
            return None
        with self._lock:
            known = self._items.get(path)
            if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
                return known
        if known is not None and known.state == "growing":
            # Closed: the parts sent while it grew stay, checked against the file when it goes.
            known.size, known.mtime_ns, known.state = st.st_size, st.st_mtime_ns, "pending"
            self.save(known)
            return known
        footage = next((f for f in list_footage(root) if f.path == path), None)
        start = footage.start if footage is not None else st.st_mtime
        item = UploadItem(root=str(root), relative=relative, key=self.key_prefix + relative, start=start,
                          size=st.st_size, mtime_ns=st.st_mtime_ns, enqueued_at=self._clock())
        self.save(item)
        return item

    def growing(self, root: Path, final: Path) -> UploadItem:
        """The record of the open segment that will close as `final`, made when the first of its
        parts is about to go up while it is recorded."""
        with self._lock:
            known = self._items.get(final)
        if known is not None:
            return known
        relative = final.relative_to(root).as_posix()
        start = segment_start(final.name)
        item = UploadItem(root=str(root), relative=relative, key=self.key_prefix + relative,
                          start=start if start is not None else self._clock(), size=0, mtime_ns=0,
                          enqueued_at=self._clock(), state="growing")
        self.save(item)
        return item

    def scan(self, roots: Iterable[Path], open_segments: Sequence[Path] = ()) -> int:
        """Queue closed footage no record covers (events a crash lost) and forget vanished files;
        how many were queued."""
        added = 0
        open_set = set(open_segments)
        for root in roots:
            if not root.is_dir() or not self.load(root):
                continue
            for footage in list_footage(root):
                if footage.path in open_set:
                    continue
                with self._lock:
                    known = footage.path in self._items
                if not known and self.add(root, footage.path) is not None:
                    added += 1
        for item in self.items():
            if item.state == "growing":
                if item.path.exists() and item.path not in open_set:
                    self.add(Path(item.root), item.path)  # closed while no event said so (a crash)
                    continue
                if partial_path(item.path).exists():
                    continue  # still being recorded
            if not item.path.exists() and Path(item.root).is_dir():
                self.forget(item)
        return added

    # -- reading ---------------------------------------------------------------------

    def items(self) -> list[UploadItem]:
        with self._lock:
            return list(self._items.values())

    def get(self, path: Path) -> UploadItem | None:
        with self._lock:
            return self._items.get(path)

    def pending(self) -> list[UploadItem]:
        """Pending items in upload order (a started multipart upload first: it is half paid; a
        file that could not be read last)."""
        items = [i for i in self.items() if i.state == "pending"]
        newest = self.order == "newest-first"
        items.sort(key=lambda i: (i.read_failures > 0, i.upload_id is None, -i.start if newest else i.start,
                                  i.relative))
        return items

    def is_uploaded(self, path: Path) -> bool:
        """Whether `path` is in the bucket, verified, as it is on disk now."""
        item = self.get(path)
        if item is None or item.state != "done":
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == item.size and st.st_mtime_ns == item.mtime_ns

    def _totals(self) -> _Tally:
        with self._lock:
            if self._tally is not None and self._tally[0] == self._version:
                return self._tally[1]
            version = self._version
            items = list(self._items.values())
        pending = [i for i in items if i.state == "pending"]
        tally = _Tally(len(pending), sum(i.size for i in pending),
                       min((i.enqueued_at for i in pending), default=None),
                       sum(1 for i in pending if i.upload_id is not None),
                       sum(1 for i in pending if i.last_error is not None),
                       sum(1 for i in items if i.state == "done"))
        with self._lock:
            self._tally = (version, tally)
        return tally

    def backlog(self, now: float | None = None) -> Backlog:
        """Pending files, their bytes and how long the oldest has waited (cheap: counted once
        per change of the queue)."""
        tally = self._totals()
        if tally.oldest_enqueued_at is None:
            return Backlog(0, 0, 0.0)
        now = self._clock() if now is None else now
        return Backlog(tally.files, tally.bytes, max(0.0, now - tally.oldest_enqueued_at),
                       tally.started, tally.failed)

    def done_count(self) -> int:
        """Files verified in the bucket whose local copy is still known to the queue."""
        return self._totals().done

    # -- writing ---------------------------------------------------------------------

    def save(self, item: UploadItem) -> None:
        """Make `item` durable (OSError if its root cannot be written), then keep it."""
        root = Path(item.root)
        (root / QUEUE_DIR_NAME).mkdir(exist_ok=True)
        write_durably(item_file(root, item.relative), item.as_json())
        with self._lock:
            self._items[item.path] = item
            self._version += 1

    def forget(self, item: UploadItem) -> None:
        with self._lock:
            self._items.pop(item.path, None)
            self._version += 1
        record = item_file(Path(item.root), item.relative)
        try:
            record.unlink()
            fsync_directory(record.parent)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not remove upload record {}: {}", record, err)
