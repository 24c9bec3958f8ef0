"""The history surface: samples the status snapshot into the 24-hour ring and keeps it on disk.

A thread of its own looks at `controller.snapshot` every few seconds (never touching the
unit) and hands it to the minute sampler (controller/core/history.py); alerts come from the
event bus, and so do the states entered between two looks. When a minute closes the ring
is written to a small gzip'd JSON file in the state directory, atomically (temporary
file, fsync, rename, fsync of the directory), so at most once a minute. A file that cannot
be read back (truncated, corrupt, hostile, not a regular file) is logged and replaced by
the next write; a write that fails is logged and tried again next minute. Recording never
waits for any of it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from controller.core.events import AlertRaised, StateChanged
from controller.core.history import WINDOW_SECONDS, HistoryAlert, HistoryFileError, HistoryRing, MinuteSampler
from controller.statedir import state_directory

if TYPE_CHECKING:
    from controller.core.controller import Controller
    from controller.core.events import Subscription

HISTORY_FILE_NAME = "history.json.gz"
POLL_SECONDS = 5.0
JOIN_SECONDS = 5.0
MAX_FILE_BYTES = 1 << 20  # a full ring is ~30 KB on disk; anything near this is not ours
MAX_JSON_BYTES = 4 << 20  # a full ring is ~250 KB of JSON; a gzip bomb stops here
FILE_MODE = 0o600


def history_path(configured: Path | None, env: dict[str, str] | None = None) -> Path:
    """Where the history file lives: `api.history_file`, else the state directory."""
    return configured if configured is not None else state_directory(env) / HISTORY_FILE_NAME


def read_history(path: Path, now: float) -> HistoryRing:
    """The ring stored in `path`, without samples older than 24 h before `now`.

    FileNotFoundError when there is none; HistoryFileError for anything vigil did not write.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise HistoryFileError(f"cannot open it: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HistoryFileError("it is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise HistoryFileError(f"{info.st_size} bytes, more than a history file's {MAX_FILE_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as file:
            packed = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise HistoryFileError(f"cannot read it: {err.strerror or err}") from err
    finally:
        os.close(fd)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed), mode="rb") as unpacked:
            text = unpacked.read(MAX_JSON_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise HistoryFileError(f"not a whole gzip file: {err}") from err
    if len(text) > MAX_JSON_BYTES:
        raise HistoryFileError(f"it unpacks to more than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HistoryFileError(f"not JSON: {err}") from err
    return HistoryRing.from_file(data, now)


def write_history(path: Path, ring: HistoryRing) -> int:
    """Write `ring` to `path` atomically and durably; answers the file's size in bytes."""
    packed = gzip.compress(json.dumps(ring.to_file(), separators=(",", ":")).encode(), mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(packed)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return len(packed)


class HistoryRecorder:
    """The ring, fed from `controller`'s snapshot every `poll_seconds` and kept in `path`.

    `clock` is the wall clock the minutes are cut by (tests pass a fake one and call
    `observe()` themselves). `path` None keeps the history in memory only.
    """

    def __init__(self, controller: Controller, path: Path | None, *, clock: Callable[[], float] = time.time,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.controller = controller
        self.path = path
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.ring = HistoryRing()
        self.sampler = MinuteSampler(self.ring)
        self.file_bytes: int | None = None  # the size of the latest write
        self.writes = 0
        self.write_failures = 0
        self._lock = threading.Lock()  # one observe/flush/write at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: Subscription | None = None
        self._write_failing = False
        self._loaded = threading.Event()

    def __repr__(self) -> str:
        return f"<HistoryRecorder path={self.path} {self.ring!r} writes={self.writes}>"

    def window(self, hours: int) -> dict[str, Any]:
        """The `GET /history` answer for the last `hours` hours."""
        return self.ring.window(self.clock(), hours)

    def start(self) -> None:
        """Subscribe to alerts and state changes and start sampling; the file is read on the
        sampling thread."""
        self._events = self.controller.bus.subscribe("history", self._on_event,
                                                     kinds=(AlertRaised, StateChanged))
        self._thread = threading.Thread(target=self._run, name="vigil-history", daemon=True)
        self._thread.start()

    def wait_for_load(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    def load(self) -> None:
        """Put what the file holds before what this run sampled; a bad file is logged, not used."""
        try:
            if self.path is None:
                return
            now = self.clock()
            try:
                stored = read_history(self.path, now)
            except FileNotFoundError:
                logger.info("history: no file at {} yet; starting an empty history", self.path)
                return
            except HistoryFileError as err:
                logger.error("history file {} is unusable ({}); starting an empty history, the file "
                             "is replaced at the next minute", self.path, err)
                return
            self.ring.take_older(stored)
            logger.info("history: {} minutes and {} alerts read from {}", len(stored), len(stored.alerts()),
                        self.path)
        finally:
            self._loaded.set()

    def observe(self) -> None:
        """Look at the snapshot now; write the file when this closed a minute."""
        with self._lock:
            now = self.clock()
            closed = self.sampler.observe(self.controller.snapshot, now)
            if closed is not None:
                self.ring.drop_before(now - WINDOW_SECONDS)
                self._write()

    def stop(self) -> None:
        """Stop sampling, close the minute under way and write the file (the daemon stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
            if self._thread.is_alive():
                logger.warning("history thread did not stop within {} s; the last minute is not written",
                               JOIN_SECONDS)
                return
        if self._events is not None:
            self.controller.bus.unsubscribe(self._events)
            self._events = None
        with self._lock:
            self.sampler.flush(self.controller.snapshot, self.clock())
            self._write()

    def _run(self) -> None:
        self.load()
        self.observe()  # the first look: this minute begins now, not a poll later
        while not self._stop.wait(self.poll_seconds):
            try:
                self.observe()
            except Exception:
                # The history is worth less than the thread that keeps it: log, go on.
                logger.exception("history: sampling failed; trying again in {} s", self.poll_seconds)

    def _on_event(self, event: AlertRaised | StateChanged) -> None:
        if isinstance(event, AlertRaised):
            self.ring.add_alert(HistoryAlert.of(event.alert))
        else:
            with self._lock:
                self.sampler.note_state(event.after)

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.file_bytes = write_history(self.path, self.ring)
        except OSError as err:
            self.write_failures += 1
            if not self._write_failing:
                logger.error("history: cannot write {}: {}; recording goes on, trying again each minute",
                             self.path, err.strerror or err)
            self._write_failing = True
            return
        self.writes += 1
        if self._write_failing:
            logger.info("history: {} written again", self.path)
        self._write_failing = False
