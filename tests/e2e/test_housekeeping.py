"""The storage lifecycle end to end: a full tmpfs, `vigil merge` beside `vigil run`, the daemon's hooks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.core.controller import Controller
from controller.storage.housekeeping import THREAD_NAME, StorageHousekeeper, StorageSettings
from controller.storage.merge import HourStillOpen
from controller.storage.retention import RetentionPolicy
from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.factory import Hardware
from hw.footage import hour_folder_for, hour_key
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import ClosedSegment, SegmentWriter
from tests.helpers import frame_numbers, gaps
from tests.pasthours import HOUR, past_hour_start, record
from tests.specs import camera_spec, recording_spec
from tests.tmpfs import mounted_tmpfs

MIB = 1024 * 1024
PASS_TIMEOUT = 30.0


def test_recording_past_a_full_disk_keeps_the_reserve_and_the_newest_footage(tmp_path: Path) -> None:
    reserve = 2 * MIB
    with mounted_tmpfs(tmp_path / "disk", "8m") as disk:
        root = disk / "rec"
        mode = CameraMode(320, 240, 30.0)
        camera = SyntheticCamera(mode, paced=False, counter=FrameCounter())
        camera.open()
        encoder = H264Encoder(mode, fragment_seconds=0.5, crf=0)
        closed: list[ClosedSegment] = []
        writer = SegmentWriter(root, width=320, height=240, fps=30.0, segment_seconds=2.0,
                               when_segment_closed=closed.append)
        seen_open: list[Path] = []
        housekeeper = StorageHousekeeper(
            StorageSettings(merge="off", retention=RetentionPolicy(0, reserve / MIB, 0),
                            sample_seconds=0.05, check_seconds=3600),
            roots=lambda: [root], active_root=lambda: root,
            open_segments=lambda: [p for p in [writer.open_path] if p is not None],
            bytes_written=lambda: writer.bytes_written,
        )
        housekeeper.start()
        free_after_passes: list[int] = []
        start = past_hour_start(1) + 60
        frames = 0
        try:
            # About 3 KB a frame: 4800 frames are more than the disk holds.
            while frames < 4800:
                frame = camera.read(1.0)
                frame.timestamp = frames / 30.0
                frame.wallclock = start + frames / 30.0
                before = len(closed)
                for packet in encoder.encode(frame):
                    writer.write(packet)  # a StorageFull here fails the test: the reserve did not hold
                frames += 1
                if len(closed) > before:
                    # A segment closed: let housekeeping run a whole pass, then look at the disk.
                    assert writer.open_path is not None and writer.open_path.exists()
                    seen_open.append(writer.open_path)
                    assert housekeeper.check_now(PASS_TIMEOUT)
                    free_after_passes.append(shutil.disk_usage(disk).free)
                    assert writer.open_path.exists(), "the open segment was deleted"
            for packet in encoder.flush():
                writer.write(packet)
            writer.close()
        finally:
            assert housekeeper.stop(5.0)
            camera.close()

        written = sum(seg.size_bytes for seg in closed)
        assert written > 10 * MIB, f"only {written} bytes written: the disk never filled"
        assert min(free_after_passes) >= reserve, "free space fell below the reserve after a pass"
        remaining = sorted(p for p in root.rglob("*.mp4"))
        names = [seg.path for seg in closed]
        assert remaining == names[len(names) - len(remaining):], "something other than the oldest went"
        assert len(remaining) < len(names)
        numbers = [n for path in remaining for n in frame_numbers(path)]
        assert gaps(numbers) == [], "the newest footage should be complete"
        assert numbers[-1] == frames - 1 and numbers[0] > 0
        assert housekeeper.disk_status() is not None


def write_config(path: Path, root: Path, *extra: str) -> Path:
    lines = ["camera:", "  backend: synthetic", "  width: 320", "  height: 240", "  fps: 30",
             "recording:", f"  root: {root}", "  segment_seconds: 1", "  fragment_seconds: 0.5",
             "  merge: off", "storage:", "  retention_days: 0", "  reserve_mb: 0", "  reserve_percent: 0",
             *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(predicate: object, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        assert proc is None or proc.poll() is None, "vigil exited early"
        time.sleep(0.05)
    raise AssertionError("timed out")


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_force_merge_beside_a_running_recorder_leaves_its_frame_stream_alone(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    past = past_hour_start(2)
    record(root, wallclock=past + 300, frames=900, counter=FrameCounter(), width=320, height=240)
    past_folder = hour_folder_for(root, past)
    expected = [n for p in sorted(past_folder.path.glob("*.mp4")) for n in frame_numbers(p)]
    config = write_config(tmp_path / "vigil.yaml", root)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(hour_folder_for(root, time.time() // HOUR * HOUR).path.glob("*.mp4*")),
                 30, proc)

        bad = vigil("merge", "--root", str(root), "--hour", "yesterday")
        current = vigil("merge", "--root", str(root), "--hour", hour_key(time.time()))
        merged = vigil("merge", "--root", str(root))

        # Recording goes on after the merge: two more segments must close.
        closed_before = len(list(root.rglob("*.mp4")))
        wait_for(lambda: len(list(root.rglob("*.mp4"))) >= closed_before + 2, 30, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output

    assert bad.returncode == 2 and "YYYY-MM-DDTHH" in bad.stderr
    assert current.returncode == 1 and "still being recorded" in current.stderr
    assert merged.returncode == 0, merged.stderr
    assert f"merged {hour_key(past)}" in merged.stdout
    merged_file = past_folder.date_dir / f"{past_folder.path.name}.mp4"
    assert not past_folder.path.exists() and frame_numbers(merged_file) == expected

    recorded = [n for p in sorted(root.rglob("*.mp4")) if p != merged_file for n in frame_numbers(p)]
    assert recorded[0] == 0 and gaps(recorded) == [], "the recording's frame stream was disturbed"
    assert not list(root.rglob("*.partial"))


def test_the_controller_runs_housekeeping_and_hands_it_merges_and_full_disks(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    past = past_hour_start(3)
    record(root, wallclock=past + 60, frames=60, counter=FrameCounter())
    hardware = Hardware(camera_spec(backend="synthetic", width=160, height=120, fps=30),
                        recording_spec(root=root, segment_seconds=1, fragment_seconds=0.5))
    controller = Controller(hardware, autostart=False, storage=StorageSettings(
        merge="off", retention=RetentionPolicy(0, 0, 0), sample_seconds=0.1))
    loop = threading.Thread(target=controller.run, name="test-controller-loop")
    loop.start()
    try:
        assert controller.wait_until(lambda: controller.housekeeper.passes > 0, 30)
        assert any(t.name == THREAD_NAME for t in threading.enumerate())

        with pytest.raises(ValueError, match="YYYY-MM-DDTHH"):
            controller.request_merge("12 o'clock")
        open_hour = controller.request_merge(hour_key(time.time()))
        results = controller.request_merge(None).result(timeout=60)
        with pytest.raises(HourStillOpen):
            open_hour.result(timeout=60)
        assert [r.hour for r in results] == [hour_key(past)]
        assert frame_numbers(results[0].path) == list(range(60))

        controller.report_error("storage_full", "No space left on device (test)")
        assert controller.wait_until(lambda: controller.housekeeper.reclaims > 0, 30)
        assert controller.wait_until(lambda: controller.snapshot.disk is not None, 10)
        disk = controller.snapshot.as_dict()["disk"]
        assert disk is not None and disk["path"] == str(root)
        assert {"free_bytes", "reserve_bytes", "write_bytes_per_second", "seconds_until_reserve",
                "is_low"} <= set(disk)
    finally:
        controller.request_shutdown()
        loop.join(30)
    assert not loop.is_alive()
    assert not controller.housekeeper.is_running
