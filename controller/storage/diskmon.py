"""Disk monitoring: free space, write throughput, and the time left until the reserve is reached.

The housekeeper samples after each retention pass, so "low" means low even after the
oldest footage was deleted: only protected footage (or other people's files) is left.
That is logged once when it starts and once when it ends, and offered to the alerts and
the health score through `when_low_changed` and `DiskStatus.as_dict()`.
"""

from __future__ import annotations

import collections
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loguru import logger

MIB = 1024 * 1024
THROUGHPUT_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class DiskStatus:
    """One look at the filesystem that footage is written to."""

    path: str
    total_bytes: int
    free_bytes: int
    reserve_bytes: int
    write_bytes_per_second: float  # footage written, averaged over the last minute
    seconds_until_reserve: float | None  # at that rate; None when nothing is being written
    is_low: bool  # free space or free inodes below their reserve even after retention
    measured_at: float  # wall clock, UTC seconds
    total_inodes: int = 0  # 0 where the filesystem does not count inodes
    free_inodes: int = 0
    reserve_inodes: int = 0

    @property
    def is_short_of_inodes(self) -> bool:
        return self.total_inodes > 0 and self.free_inodes < self.reserve_inodes

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def warning(self) -> str | None:
        if not self.is_low:
            return None
        if self.free_bytes >= self.reserve_bytes and self.is_short_of_inodes:
            return (f"free inodes {self.free_inodes} are below the reserve {self.reserve_inodes} "
                    f"on {self.path} and no more footage may be deleted")
        return (f"free space {self.free_bytes / MIB:.1f} MiB is below the reserve "
                f"{self.reserve_bytes / MIB:.1f} MiB on {self.path} and no more footage may be deleted")

    def as_dict(self) -> dict[str, Any]:
        """The status for status pages, metrics and the health score."""
        out = asdict(self)
        out["free_percent"] = round(self.free_percent, 2)
        out["warning"] = self.warning
        return out


class DiskMonitor:
    """Turns periodic samples of one filesystem into a DiskStatus with a write rate."""

    def __init__(
        self,
        reserve_bytes: Callable[[int], int],
        *,
        window_seconds: float = THROUGHPUT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        when_low_changed: Callable[[DiskStatus], None] | None = None,
        reserve_inodes: Callable[[int], int] = lambda total_inodes: 0,
    ) -> None:
        self._reserve_bytes = reserve_bytes
        self._reserve_inodes = reserve_inodes
        self.window_seconds = window_seconds
        self._clock = clock
        self.when_low_changed = when_low_changed
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._written = 0  # bytes of footage written since monitoring began
        self._last_counter: int | None = None
        self._last_used: int | None = None
        self._path: Path | None = None
        self.latest: DiskStatus | None = None
        self.sample_failures = 0  # statvfs failures, logged once each way
        self._failing = False

    def set_reserve(self, reserve_bytes: Callable[[int], int],
                    reserve_inodes: Callable[[int], int] | None = None) -> None:
        """Measure against a new reserve from the next sample on."""
        self._reserve_bytes = reserve_bytes
        if reserve_inodes is not None:
            self._reserve_inodes = reserve_inodes

    def __repr__(self) -> str:
        latest = self.latest
        if latest is None:
            return "<DiskMonitor no sample yet>"
        return (f"<DiskMonitor {latest.path} free={latest.free_bytes / MIB:.0f}MiB "
                f"rate={latest.write_bytes_per_second / MIB:.2f}MiB/s low={latest.is_low}>")

    def sample(self, path: Path, bytes_written: int | None = None) -> DiskStatus | None:
        """Measure `path`'s filesystem now; `bytes_written` is the writer's running total
        (it may restart from zero with a new writer), else the filesystem's growth is used."""
        try:
            total, used, free = shutil.disk_usage(path)
            st = os.statvfs(path)
        except OSError as err:
            self.sample_failures += 1
            if not self._failing:
                self._failing = True
                logger.warning("disk sample failed path={} error={}; keeping the last sample", path, err)
            return None
        if self._failing:
            self._failing = False
            logger.info("disk sample works again path={} after {} failure(s)", path, self.sample_failures)
        now = self._clock()
        if path != self._path:
            self._path = path
            self._samples.clear()
            self._last_counter = self._last_used = None
        if bytes_written is not None:
            last = self._last_counter
            if last is not None:
                # A smaller total means a new writer counting from zero.
                self._written += bytes_written - last if bytes_written >= last else bytes_written
            self._last_counter = bytes_written
        else:
            # Deletions shrink the used space; only growth is footage being written.
            if self._last_used is not None:
                self._written += max(0, used - self._last_used)
            self._last_used = used
        self._samples.append((now, self._written))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_seconds:
            self._samples.popleft()
        rate = 0.0
        first_t, first_written = self._samples[0]
        if now > first_t:
            rate = (self._written - first_written) / (now - first_t)
        reserve = self._reserve_bytes(total)
        if free <= reserve:
            until: float | None = 0.0
        elif rate > 0:
            until = (free - reserve) / rate
        else:
            until = None
        was_low = self.latest.is_low if self.latest is not None else False
        total_inodes, free_inodes = st.f_files, st.f_favail
        reserve_inodes = self._reserve_inodes(total_inodes) if total_inodes else 0
        status = DiskStatus(str(path), total, free, reserve, rate, until,
                            free < reserve or (total_inodes > 0 and free_inodes < reserve_inodes),
                            time.time(), total_inodes, free_inodes, reserve_inodes)
        self.latest = status
        if status.is_low != was_low:
            if status.is_low:
                logger.warning("disk low: {}; recording will fail when it fills", status.warning)
            else:
                logger.info("disk no longer low: {:.1f} MiB free, reserve {:.1f} MiB on {}",
                            free / MIB, reserve / MIB, path)
            if self.when_low_changed is not None:
                self.when_low_changed(status)
        return status
