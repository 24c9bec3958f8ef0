"""The housekeeping worker: merges on its own, cleans up after crashes, gives way, stays low priority."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from pathlib import Path

import pytest

from controller.storage.housekeeping import (
    IOPRIO_CLASS_IDLE,
    IOPRIO_CLASS_SHIFT,
    IOPRIO_SET_SYSCALL,
    StorageHousekeeper,
    StorageSettings,
    lower_thread_priority,
)
from controller.storage.merge import MergeAborted, MergeDeferred, merge_hour
from controller.storage.retention import RetentionPolicy
from hw.footage import MERGE_TEMP_SUFFIX, hour_folder_for
from hw.synthetic import FrameCounter
from tests.helpers import frame_numbers
from tests.pasthours import past_hour_start, record
from tests.tmpfs import mounted_tmpfs

IOPRIO_GET_SYSCALL = {"x86_64": 252, "aarch64": 31, "armv7l": 315, "armv6l": 315}
NO_RETENTION = RetentionPolicy(retention_days=0, reserve_mb=0, reserve_percent=0)


def housekeeper_for(root: Path, **settings: object) -> StorageHousekeeper:
    return StorageHousekeeper(
        StorageSettings(**{"retention": NO_RETENTION, "sample_seconds": 0.05, **settings}),  # type: ignore[arg-type]
        roots=lambda: [root], active_root=lambda: root, open_segments=list,
    )


def test_closed_hours_are_merged_and_crash_leftovers_cleaned_without_being_asked(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    counter = FrameCounter()
    older, old = past_hour_start(3), past_hour_start(2)
    record(root, wallclock=older + 60, frames=45, counter=counter)
    record(root, wallclock=old + 60, frames=45, counter=counter)
    folder = hour_folder_for(root, old)
    leftover = folder.date_dir / f".{folder.path.name}.mp4{MERGE_TEMP_SUFFIX}"
    leftover.write_bytes(b"the start of a merge that a power cut ended")
    housekeeper = housekeeper_for(root)
    housekeeper.start()
    try:
        assert housekeeper.check_now(60)
    finally:
        assert housekeeper.stop(5)

    assert not leftover.exists()
    assert [m.hour for m in housekeeper.merged] == [hour_folder_for(root, h).key for h in (older, old)]
    assert frame_numbers(housekeeper.merged[0].path) + frame_numbers(housekeeper.merged[1].path) \
        == list(range(90))
    assert housekeeper.priority, "the worker says which priority it got"


def test_merge_off_leaves_the_segments_but_a_request_still_merges(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    past = past_hour_start(2)
    record(root, wallclock=past + 60, frames=30, counter=FrameCounter())
    housekeeper = housekeeper_for(root, merge="off")
    housekeeper.start()
    try:
        assert housekeeper.check_now(60)
        assert list(hour_folder_for(root, past).path.glob("*.mp4")), "merge: off merged anyway"
        results = housekeeper.request_merge(hour_folder_for(root, past).key).result(timeout=60)
    finally:
        assert housekeeper.stop(5)
    assert len(results) == 1 and frame_numbers(results[0].path) == list(range(30))


def test_a_merge_gives_way_and_leaves_the_segments(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    past = past_hour_start(2)
    record(root, wallclock=past + 60, frames=60, counter=FrameCounter())
    folder = hour_folder_for(root, past)
    before = sorted(folder.path.iterdir())

    with pytest.raises(MergeAborted):
        merge_hour(folder, should_abort=lambda: True)
    with pytest.raises(MergeDeferred, match="reserve"):
        merge_hour(folder, reserve_bytes=2**62)

    assert sorted(folder.path.iterdir()) == before
    assert not list(root.rglob(f"*{MERGE_TEMP_SUFFIX}")) and not list(folder.date_dir.glob("*.mp4"))


def test_the_stop_of_a_housekeeper_is_prompt_and_final(tmp_path: Path) -> None:
    housekeeper = housekeeper_for(tmp_path, sample_seconds=600)
    housekeeper.start()
    assert housekeeper.check_now(30)
    assert housekeeper.stop(5) and not housekeeper.is_running
    with pytest.raises(MergeAborted):
        housekeeper.request_merge(None).result(timeout=1)


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in IOPRIO_GET_SYSCALL,
                    reason="per-thread nice and ioprio_get are Linux syscalls; this machine is not Linux "
                           "on a known architecture")
def test_the_worker_thread_runs_at_the_lowest_priority_and_only_it(tmp_path: Path) -> None:
    assert platform.machine() in IOPRIO_SET_SYSCALL
    seen: dict[str, int | str] = {}

    def worker() -> None:
        seen["applied"] = lower_thread_priority()
        tid = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["ioprio"] = ctypes.CDLL(None).syscall(IOPRIO_GET_SYSCALL[platform.machine()], 1, tid)

    thread = threading.Thread(target=worker, name="test-low-priority")
    thread.start()
    thread.join(10)
    me = threading.get_native_id()
    assert seen["nice"] == 19 and "nice 19" in str(seen["applied"])
    assert seen["ioprio"] == IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT, seen
    assert os.getpriority(os.PRIO_PROCESS, me) != 19, "the caller's thread must keep its priority"


def test_reclaim_now_runs_retention_and_hands_back_its_report(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        root = disk / "rec"
        past = past_hour_start(2)
        closed = record(root, wallclock=past + 60, frames=60, counter=FrameCounter())
        (root / "not-footage").write_bytes(os.urandom(600 * 1024))
        # Half this disk can never be free: all footage goes (nothing is being recorded).
        housekeeper = housekeeper_for(root, merge="off", sample_seconds=600,
                                      retention=RetentionPolicy(retention_days=0, reserve_mb=2**20))
        housekeeper.start()
        try:
            report = housekeeper.reclaim_now(30)
        finally:
            assert housekeeper.stop(5)
        # The first pass may have seen the shortage on its own; either way the footage went.
        assert report is not None and report.short and housekeeper.reclaims == 1
        assert closed and not any(seg.path.exists() for seg in closed)
        assert (root / "not-footage").exists(), "only footage is retention's to delete"


def test_a_failing_pass_logs_its_traceback_once_per_distinct_error(tmp_path: Path) -> None:
    from loguru import logger

    errors = [OSError(24, "Too many open files")] * 4 + [RuntimeError("a bug")] * 3
    calls = []

    def roots() -> list[Path]:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return [tmp_path]

    lines: list[tuple[str, bool]] = []
    sink = logger.add(lambda m: lines.append((m.record["message"], m.record["exception"] is not None)),
                      level="ERROR", filter="controller.storage.housekeeping")
    housekeeper = StorageHousekeeper(StorageSettings(retention=NO_RETENTION, sample_seconds=0.01),
                                     roots=roots, active_root=lambda: tmp_path, open_segments=list)
    housekeeper.start()
    try:
        assert housekeeper.check_now(30)
        with housekeeper._done:
            assert housekeeper._done.wait_for(lambda: not errors and housekeeper.passes >= 9, 30)
    finally:
        assert housekeeper.stop(5)
        logger.remove(sink)
    failed = [(m, tb) for m, tb in lines if "housekeeping pass failed" in m]
    assert len(failed) == 7 and housekeeper.failed_passes == 7
    with_traceback = [m for m, tb in failed if tb]
    assert len(with_traceback) == 2, failed  # one per distinct error, then a short line each
    assert "Too many open files" in with_traceback[0] and "a bug" in with_traceback[1]
