"""Disk monitoring: write rate, time until the reserve, and low-disk warnings once each way."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from controller.storage.diskmon import DiskMonitor, DiskStatus
from tests.tmpfs import mounted_tmpfs

MIB = 1024 * 1024


class Clock:
    """A clock the test moves by hand (the monitor's rate is per second of this clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def test_rate_comes_from_the_writers_bytes_and_survives_a_new_writer(tmp_path: Path) -> None:
    clock = Clock()
    monitor = DiskMonitor(lambda total: 0, clock=clock)
    monitor.sample(tmp_path, 0)
    for written in (1_000_000, 2_000_000):
        clock.now += 1
        status = monitor.sample(tmp_path, written)
    assert status is not None and status.write_bytes_per_second == pytest.approx(1_000_000)
    clock.now += 1
    status = monitor.sample(tmp_path, 1_000_000)  # a new writer counted from zero
    assert status is not None and status.write_bytes_per_second == pytest.approx(1_000_000)
    free = status.free_bytes
    assert status.seconds_until_reserve == pytest.approx(free / 1_000_000, rel=1e-3)


def test_no_writes_means_no_projection(tmp_path: Path) -> None:
    clock = Clock()
    monitor = DiskMonitor(lambda total: 0, clock=clock)
    monitor.sample(tmp_path, 500)
    clock.now += 5
    status = monitor.sample(tmp_path, 500)
    assert status is not None
    assert status.write_bytes_per_second == 0.0 and status.seconds_until_reserve is None
    assert set(status.as_dict()) >= {"free_bytes", "total_bytes", "reserve_bytes", "write_bytes_per_second",
                                     "seconds_until_reserve", "is_low", "free_percent", "warning"}


def test_low_disk_is_reported_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, log_lines: list[str],
) -> None:
    changes: list[DiskStatus] = []
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        monitor = DiskMonitor(lambda total: 2 * MIB, when_low_changed=changes.append)
        filler = disk / "filler"
        monitor.sample(disk)
        filler.write_bytes(os.urandom(3 * MIB))
        for _ in range(3):
            status = monitor.sample(disk)
        assert status is not None and status.is_low and status.seconds_until_reserve == 0.0
        assert status.warning and "below the reserve" in status.warning
        assert shutil.disk_usage(disk).free < 2 * MIB
        filler.unlink()
        for _ in range(3):
            status = monitor.sample(disk)
        assert status is not None and not status.is_low

    assert [c.is_low for c in changes] == [True, False]
    assert sum("disk low" in line for line in log_lines) == 1
    assert sum("disk no longer low" in line for line in log_lines) == 1
