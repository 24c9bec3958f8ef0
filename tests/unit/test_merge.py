"""Hourly merge: real segments of a past hour, joined by stream copy, decoded back frame by frame."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from controller.storage.merge import (
    SOURCES_TAG,
    HourStillOpen,
    MergeError,
    NothingToMerge,
    Step,
    clean_interrupted_merges,
    force_merge,
    merge_hour,
    merged_sources,
    open_reason,
    verify_merged,
)
from hw.footage import MERGE_TEMP_SUFFIX, hour_folder_for, hour_folders, parse_hour
from hw.synthetic import FrameCounter
from tests.conftest import REPO
from tests.helpers import frame_numbers
from tests.pasthours import HOUR, past_hour_start, record

FPS = 30.0
STEPS: tuple[Step, ...] = ("written", "verified", "renamed", "segment_removed")


class InjectedFault(Exception):
    """Stands for a crash at one step of the merge."""


def footage_numbers(root: Path) -> list[int]:
    """Frame numbers of every file of footage under `root`: merged hours and segments."""
    numbers: list[int] = []
    for path in sorted(root.rglob("*.mp4")):
        numbers.extend(frame_numbers(path))
    return numbers


def numbers_by_segment(root: Path) -> list[int]:
    numbers: list[int] = []
    for folder in hour_folders(root):
        for path in sorted(folder.path.glob("*.mp4")):
            numbers.extend(frame_numbers(path))
    return numbers


@pytest.fixture
def hour_start() -> float:
    return past_hour_start(2)


def test_merged_hour_holds_every_frame_of_its_segments_in_order(tmp_path: Path, hour_start: float) -> None:
    root = tmp_path / "rec"
    closed = record(root, wallclock=hour_start + 600, frames=150, counter=FrameCounter())
    assert len(closed) == 5
    expected = numbers_by_segment(root)
    assert expected == list(range(150))

    results = merge_hour(hour_folder_for(root, hour_start))

    assert len(results) == 1
    merged = results[0]
    assert merged.path == hour_folder_for(root, hour_start).date_dir / f"{merged.path.stem}.mp4"
    assert merged.path.name == time.strftime("%H.mp4", time.gmtime(hour_start))
    assert frame_numbers(merged.path) == expected
    assert merged.frames == 150 and merged.gaps == ()
    assert merged.sources == tuple(seg.path.name for seg in closed)
    assert not hour_folder_for(root, hour_start).path.exists(), "segments and folder should be gone"
    head = merged.path.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat"), "index not at the front (faststart)"
    with av.open(str(merged.path)) as container:
        assert container.metadata["vigil_start"] == f"{hour_start + 600:.6f}"
        assert container.metadata[SOURCES_TAG].split(",") == list(merged.sources)


def test_a_gap_between_recordings_stays_a_gap_in_the_merged_timestamps(
    tmp_path: Path, hour_start: float,
) -> None:
    root = tmp_path / "rec"
    counter = FrameCounter()
    record(root, wallclock=hour_start + 60, frames=45, counter=counter)  # 1.5 s of video
    record(root, wallclock=hour_start + 70, frames=45, counter=counter)  # restarted 10 s later
    expected = numbers_by_segment(root)

    (merged,) = merge_hour(hour_folder_for(root, hour_start))

    with av.open(str(merged.path)) as container:
        decoded = [(frame.time, frame) for frame in container.decode(video=0)]
    times = [t for t, _ in decoded]
    assert frame_numbers(merged.path) == expected == list(range(90))
    assert times[44] == pytest.approx(44 / FPS, abs=1e-3)
    assert times[45] == pytest.approx(10.0, abs=1e-3), "the restart should sit 10 s after the start"
    assert merged.gaps == (pytest.approx((1.5, 8.5), abs=1e-3),)
    assert merged.span_seconds == pytest.approx(10.0 + 45 / FPS, abs=1e-3)


def test_segments_whose_clocks_overlap_are_placed_back_to_back(tmp_path: Path, hour_start: float) -> None:
    root = tmp_path / "rec"
    counter = FrameCounter()
    record(root, wallclock=hour_start + 60, frames=60, counter=counter)
    # The clock stepped back: the second run claims to start inside the first.
    record(root, wallclock=hour_start + 60.5, frames=30, counter=counter)

    (merged,) = merge_hour(hour_folder_for(root, hour_start))

    assert sorted(frame_numbers(merged.path)) == list(range(90))
    with av.open(str(merged.path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    assert times == sorted(times) and len(set(times)) == 90, "timestamps must keep rising"


def test_a_change_of_frame_size_within_the_hour_gives_a_second_file(
    tmp_path: Path, hour_start: float,
) -> None:
    root = tmp_path / "rec"
    counter = FrameCounter()
    record(root, wallclock=hour_start + 60, frames=30, counter=counter, width=160, height=120)
    record(root, wallclock=hour_start + 90, frames=30, counter=counter, width=320, height=240)

    results = merge_hour(hour_folder_for(root, hour_start))

    hh = time.strftime("%H", time.gmtime(hour_start))
    assert [r.path.name for r in results] == [f"{hh}.mp4", f"{hh}-1.mp4"]
    assert frame_numbers(results[0].path) + frame_numbers(results[1].path) == list(range(60))


def test_verify_rejects_a_merged_file_that_does_not_match_its_plan(tmp_path: Path, hour_start: float) -> None:
    root = tmp_path / "rec"
    record(root, wallclock=hour_start + 60, frames=60, counter=FrameCounter())
    (merged,) = merge_hour(hour_folder_for(root, hour_start))

    verify_merged(merged.path, frames=60, keyframes=4, crc=None, span=None)
    with pytest.raises(MergeError, match=r"61 frames decoded|expected 61"):
        verify_merged(merged.path, frames=61, keyframes=4, crc=None, span=None)
    truncated = merged.path.with_name("cut.mp4")
    truncated.write_bytes(merged.path.read_bytes()[: merged.bytes_out // 2])
    with pytest.raises(MergeError):
        verify_merged(truncated, frames=60, keyframes=4, crc=None, span=None)


def test_an_hour_is_closed_only_when_past_with_nothing_being_written(
    tmp_path: Path, hour_start: float,
) -> None:
    folder = hour_folder_for(tmp_path, hour_start)
    folder.path.mkdir(parents=True)
    end = hour_start + HOUR

    assert "current UTC hour" in (open_reason(folder, now=hour_start + 10) or "")
    assert "in the future" in (open_reason(folder, now=hour_start - 10) or "")
    assert "ended less than" in (open_reason(folder, now=end + 1) or "")
    assert open_reason(folder, now=end + 60) is None
    foreign = folder.path / "x.mp4.partial"  # not a name vigil writes: someone else's file
    foreign.write_bytes(b"")
    assert open_reason(folder, now=end + 60) is None
    partial = folder.path / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(hour_start)) + ".mp4.partial")
    partial.write_bytes(b"")
    assert "still being written" in (open_reason(folder, now=end + 60) or "")
    partial.unlink()
    assert "open segment" in (open_reason(folder, now=end + 60, open_segments=[folder.path / "y.mp4"]) or "")


def test_force_merge_refuses_an_open_hour_and_says_when_there_is_nothing(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    now = time.time()
    current = now // HOUR * HOUR
    record(root, wallclock=current + 1, frames=30, counter=FrameCounter())
    with pytest.raises(HourStillOpen, match="current UTC hour"):
        force_merge([root], hour=current, now=now)
    with pytest.raises(NothingToMerge):
        force_merge([root], hour=parse_hour("2001-01-01T00"), now=now)
    assert force_merge([root], hour=None, now=now) == []  # the only hour is open
    assert list(hour_folder_for(root, current).path.glob("*.mp4")), "the open hour was touched"


@pytest.mark.parametrize("step", STEPS)
def test_an_exception_at_any_step_loses_no_frame(tmp_path: Path, hour_start: float, step: Step) -> None:
    root = tmp_path / "rec"
    record(root, wallclock=hour_start + 60, frames=120, counter=FrameCounter())
    folder = hour_folder_for(root, hour_start)

    def fail(at: Step) -> None:
        if at == step:
            raise InjectedFault(at)

    with pytest.raises(InjectedFault):
        merge_hour(folder, when_step=fail)

    # Whatever the step, the footage (segments, merged file or both) still has every frame.
    assert set(footage_numbers(root)) == set(range(120))
    clean_interrupted_merges(root)
    assert sorted(footage_numbers(root)) == list(range(120)), "after start-up cleanup: each frame once"
    assert not list(root.rglob(f"*{MERGE_TEMP_SUFFIX}"))
    if step in ("renamed", "segment_removed"):
        assert not folder.path.exists(), "the cleanup should have finished the removal"
    # And the hour can be merged (again) to one file.
    if folder.path.exists():
        merge_hour(folder)
    assert [p.name for p in root.rglob("*.mp4")] == [time.strftime("%H.mp4", time.gmtime(hour_start))]


def test_start_up_cleanup_removes_a_merged_file_that_does_not_verify(
    tmp_path: Path, hour_start: float,
) -> None:
    root = tmp_path / "rec"
    record(root, wallclock=hour_start + 60, frames=60, counter=FrameCounter())
    folder = hour_folder_for(root, hour_start)
    expected = numbers_by_segment(root)
    saved = tmp_path / "saved"
    shutil.copytree(folder.path, saved)
    (merged,) = merge_hour(folder)
    # Simulate a crash right after the rename with a file that then went bad on disk.
    shutil.copytree(saved, folder.path)
    data = bytearray(merged.path.read_bytes())
    merged.path.write_bytes(bytes(data[: len(data) * 2 // 3]))
    stale_temp = folder.date_dir / f".{merged.path.name}{MERGE_TEMP_SUFFIX}"
    stale_temp.write_bytes(b"half a merge")

    clean_interrupted_merges(root)

    assert not stale_temp.exists()
    assert not merged.path.exists(), "an unverifiable merged file must go while its segments exist"
    assert numbers_by_segment(root) == expected


KILLED_MERGE = """
import os, signal, sys
from pathlib import Path
from hw.footage import hour_folder_for
from controller.storage.merge import merge_hour
root, start, step = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def hook(at):
    if at == step:
        os.kill(os.getpid(), signal.SIGKILL)
print("ready", flush=True)
merge_hour(hour_folder_for(root, start), when_step=hook)
print("done", flush=True)
"""


def test_a_merge_killed_at_any_point_loses_no_frame(tmp_path: Path, hour_start: float) -> None:
    original = tmp_path / "original"
    record(original, wallclock=hour_start + 60, frames=240, counter=FrameCounter(), width=320, height=240)
    expected = list(range(240))
    rng = random.Random(4)
    # Each step, then random moments: the merge itself takes about 50 ms on the dev machine.
    plans: list[tuple[str, float | None]] = [(step, None) for step in STEPS]
    plans += [("none", rng.uniform(0.0, 0.08)) for _ in range(6)]
    for index, (step, delay) in enumerate(plans):
        root = tmp_path / f"run{index}"
        shutil.copytree(original, root)
        proc = subprocess.Popen([sys.executable, "-c", KILLED_MERGE, str(root), str(hour_start), step],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            if delay is not None:
                time.sleep(delay)  # the random moment of the kill, not a synchronisation
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        if delay is None:
            assert proc.returncode == -signal.SIGKILL, f"step {step} was never reached"
        clean_interrupted_merges(root)
        assert sorted(footage_numbers(root)) == expected, f"plan {step} {delay}: frames lost or doubled"
        assert not list(root.rglob(f"*{MERGE_TEMP_SUFFIX}"))
        for merged in root.rglob("??.mp4"):
            assert merged_sources(merged), "a merged file without its sources tag"
