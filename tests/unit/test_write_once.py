"""Every footage byte written once: an hour recorded in one piece becomes its hour file by a
rename, and only an hour broken by a restart is joined, into one verified file.

The clocks are faked in-process the way tests/pasthours.py does it (each frame's wall clock
is set before it reaches the encoder; libfaketime would break Python 3.11's sleep), so a
recording crosses a real clock hour of the past in seconds. Everything else is real: the
synthetic camera's frame-number code, libx264, the segment writer with the config's default
segment length, the merge and the housekeeping worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.config.schema import RecordingConfig
from controller.keys import signer_for
from controller.storage.merge import (
    Step,
    clean_interrupted_merges,
    merge_hour,
)
from controller.surfaces import fmp4, spans
from controller.verify import verify
from hw.footage import hour_folder_for, manifest_path, merged_files_for
from hw.integrity import Signer, read_manifest
from hw.synthetic import FrameCounter
from tests.conftest import REPO
from tests.helpers import frame_numbers
from tests.pasthours import HOUR, past_hour_start, record
from tests.unit.test_housekeeping import housekeeper_for

FPS = 4.0  # an hour of footage is 14400 frames: a few seconds to encode at 160x120
DEFAULT_SEGMENT_SECONDS = RecordingConfig().segment_seconds
ADOPTION_STEPS: tuple[Step, ...] = ("verified", "renamed", "segment_removed")


@pytest.fixture
def signer() -> Signer:
    return signer_for(Ed25519PrivateKey.generate(), "unit-a")


def all_numbers(root: Path) -> list[int]:
    """Frame numbers of every footage file under `root` (hour files and segments), in order."""
    numbers: list[int] = []
    for path in sorted(root.rglob("*.mp4")):
        numbers.extend(frame_numbers(path))
    return numbers


def test_the_default_segment_ends_on_the_clock_hour() -> None:
    assert DEFAULT_SEGMENT_SECONDS == HOUR


def test_an_hour_recorded_in_one_piece_becomes_its_hour_file_without_a_copy(
    tmp_path: Path, signer: Signer,
) -> None:
    root = tmp_path / "rec"
    first, second = past_hour_start(3), past_hour_start(2)
    assert second == first + HOUR
    # From the first instant of one hour to 10 s into the next, as one run of the recorder.
    frames = int((HOUR + 10) * FPS)
    closed = record(root, wallclock=first, frames=frames, counter=FrameCounter(), fps=FPS,
                    segment_seconds=DEFAULT_SEGMENT_SECONDS, fragment_seconds=1.0, signer=signer)
    # The writer split at the clock hour, and only there.
    assert [hour_folder_for(root, c.started_wallclock).start for c in closed] == [first, second]
    per_hour = int(HOUR * FPS)
    assert [c.frames for c in closed] == [per_hour, frames - per_hour]
    before = [os.stat(c.path) for c in closed]

    housekeeper = housekeeper_for(root, signer=signer)
    housekeeper.start()
    try:
        assert housekeeper.check_now(540)  # a hang guard: the worker runs at nice 19
    finally:
        assert housekeeper.stop(5)

    merged = housekeeper.merged
    assert [m.hour for m in merged] == [hour_folder_for(root, h).key for h in (first, second)]
    for result, segment, st in zip(merged, closed, before, strict=True):
        after = os.stat(result.path)
        # The same inode, size and modification time: the segment file is the hour file,
        # renamed; not a byte of it was written again.
        assert (after.st_ino, after.st_dev) == (st.st_ino, st.st_dev), "the hour was copied"
        assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert result.sources == (segment.path.name,)
        assert result.path.parent == hour_folder_for(root, segment.started_wallclock).date_dir
        assert not segment.path.exists()
        assert not hour_folder_for(root, segment.started_wallclock).path.exists()
    # Complete and frame-exact: every frame of each hour, in order, once.
    assert frame_numbers(merged[0].path) == list(range(per_hour))
    assert frame_numbers(merged[1].path) == list(range(per_hour, frames))
    # The spans index reads the adopted hour from its fragments: one run, the whole hour.
    (run,) = spans.merged_runs(merged[0].path).runs
    assert run.frames == per_hour
    assert (run.start, run.end) == (pytest.approx(first, abs=1e-3), pytest.approx(first + HOUR, abs=1e-3))
    # The hour file's signed manifest holds its segment's and checks.
    manifest = read_manifest(merged[0].path)
    assert manifest is not None and manifest["kind"] == "merged" and len(manifest["sources"]) == 1
    report = verify([root], key=signer.public_key)
    assert report.is_ok, report.findings
    assert not list(root.rglob("*.manifest.json.partial"))


@pytest.mark.parametrize("verify_mode", ["packets", "full"])
def test_an_hour_broken_by_a_restart_is_joined_into_one_verified_file(
    tmp_path: Path, signer: Signer, verify_mode: str,
) -> None:
    root = tmp_path / "rec"
    hour = past_hour_start(2)
    counter = FrameCounter()
    # A run from :10:00 for 100 s, a restart, a run from :12:00 for 100 s: two segments.
    record(root, wallclock=hour + 600, frames=400, counter=counter, fps=FPS,
           segment_seconds=DEFAULT_SEGMENT_SECONDS, fragment_seconds=1.0, signer=signer)
    record(root, wallclock=hour + 720, frames=400, counter=counter, fps=FPS,
           segment_seconds=DEFAULT_SEGMENT_SECONDS, fragment_seconds=1.0, signer=signer)
    folder = hour_folder_for(root, hour)
    sources = sorted(p.name for p in folder.path.glob("*.mp4"))
    assert len(sources) == 2

    (merged,) = merge_hour(folder, verify=verify_mode, signer=signer)  # type: ignore[arg-type]

    assert merged.sources == tuple(sources)
    assert frame_numbers(merged.path) == list(range(800)), "a frame lost or repeated in the join"
    assert merged.gaps == (pytest.approx((100.0, 20.0), abs=1e-3),)
    assert not folder.path.exists()
    # Written once, fragmented like the segments: the index is at the front without the
    # faststart pass that rewrote the whole file a second time.
    head = merged.path.read_bytes()[:4096]
    assert head.index(b"moov") < head.index(b"moof")
    assert fmp4.is_fragmented(merged.path)
    runs = spans.merged_runs(merged.path).runs
    assert [r.frames for r in runs] == [400, 400]
    assert runs[1].start == pytest.approx(hour + 720, abs=1e-3)
    # Every fragment of both sources checks against its signed hash; the one finding is the
    # restart itself (each run here starts its own chain): the 20 s nobody recorded.
    report = verify([root], key=signer.public_key)
    assert report.fragments == 200
    assert [(f.kind, f.end - f.start) for f in report.findings] == [  # type: ignore[operator]
        ("break", pytest.approx(20.0, abs=1e-3))], report.findings


KILLED_ADOPTION = """
import os, signal, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from controller.keys import signer_for
from hw.footage import hour_folder_for
from controller.storage.merge import merge_hour
root, start, step = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def hook(at):
    if at == step:
        os.kill(os.getpid(), signal.SIGKILL)
merge_hour(hour_folder_for(root, start), when_step=hook,
           signer=signer_for(Ed25519PrivateKey.generate(), "unit-a"))
print("done", flush=True)
"""


@pytest.mark.parametrize("step", ADOPTION_STEPS)
def test_an_adoption_killed_at_any_step_loses_no_frame(
    tmp_path: Path, signer: Signer, step: Step,
) -> None:
    root = tmp_path / "rec"
    hour = past_hour_start(2)
    record(root, wallclock=hour + 60, frames=120, counter=FrameCounter(), fps=FPS,
           segment_seconds=DEFAULT_SEGMENT_SECONDS, fragment_seconds=1.0, signer=signer)
    folder = hour_folder_for(root, hour)
    assert len(list(folder.path.glob("*.mp4"))) == 1

    proc = subprocess.run([sys.executable, "-c", KILLED_ADOPTION, str(root), str(hour), step],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, f"step {step} was never reached: {proc.stderr}"

    assert all_numbers(root) == list(range(120)), "after the kill: every frame, once"
    clean_interrupted_merges(root)
    if folder.path.exists():
        merge_hour(folder, signer=signer)
    (merged,) = merged_files_for(folder)
    assert frame_numbers(merged) == list(range(120))
    assert not folder.path.exists(), "no segment and no orphan manifest left behind"
    assert manifest_path(merged).exists()


def test_a_cut_that_left_the_adopted_file_under_both_names_is_finished(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    hour = past_hour_start(2)
    (segment,) = record(root, wallclock=hour + 60, frames=80, counter=FrameCounter(), fps=FPS,
                        segment_seconds=DEFAULT_SEGMENT_SECONDS, fragment_seconds=1.0)
    folder = hour_folder_for(root, hour)
    # A filesystem that made the new name durable but not yet the old one's removal.
    hour_file = folder.date_dir / f"{folder.path.name}.mp4"
    os.link(segment.path, hour_file)

    clean_interrupted_merges(root)

    assert not segment.path.exists(), "the segment name of an adopted hour should go"
    assert frame_numbers(hour_file) == list(range(80))
    assert all_numbers(root) == list(range(80))

