"""The segment writer and crash recovery, with real libx264 packets and real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import pytest

from hw.camera import CameraMode, EncodedPacket
from hw.footage import PARTIAL_SUFFIX
from hw.recovery import playable_length, recover_partial, recover_partials
from hw.writer import SegmentWriter
from tests.helpers import encode_synthetic, frame_numbers, gaps, recorded_numbers, segments

MODE = CameraMode(128, 96, 30)
START = 1_790_000_000.0  # 2026-09-21T14:13:20Z: a fixed wall clock keeps names predictable


def packets(count: int, *, fragment_seconds: float = 0.5, wall_start: float = START,
            wall_jump_at: int | None = None, jump_seconds: float = 0.0) -> list[EncodedPacket]:
    """Encoded synthetic frames, numbered from 0, timestamps 1/fps apart."""
    return encode_synthetic(MODE, count, fragment_seconds=fragment_seconds, wall_start=wall_start,
                            wall_jump_at=wall_jump_at, jump_seconds=jump_seconds)


def writer(root: Path, segment_seconds: float = 1.0) -> SegmentWriter:
    return SegmentWriter(root, width=MODE.width, height=MODE.height, fps=MODE.fps,
                         segment_seconds=segment_seconds)


def test_segments_split_at_keyframes_without_losing_or_repeating_frames(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for p in packets(100):
        w.write(p)
    w.close()
    files = segments(tmp_path)
    assert len(files) == 4  # 100 frames at 30 fps in 1 s segments: 30 + 30 + 30 + 10
    assert recorded_numbers(tmp_path) == list(range(100))
    for path in files:
        with av.open(str(path)) as c:
            first = next(c.demux(video=0))
            assert first.is_keyframe
    assert w.segments_closed == 4
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))


def test_layout_is_root_date_hour_and_utc_name(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_seconds=60)
    for p in packets(10):
        w.write(p)
    closed = w.close()
    assert closed is not None
    assert closed.path == tmp_path / "2026-09-21" / "14" / "20260921T141320Z.mp4"
    assert closed.frames == 10


def test_nothing_is_overwritten_names_get_a_suffix(tmp_path: Path) -> None:
    existing = tmp_path / "2026-09-21" / "14" / "20260921T141320Z.mp4"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"footage from before")
    w = writer(tmp_path, segment_seconds=60)
    for p in packets(10):
        w.write(p)
    closed = w.close()
    assert closed is not None and closed.path.name == "20260921T141320Z-1.mp4"
    assert existing.read_bytes() == b"footage from before"


def test_segment_splits_at_the_hour_boundary(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_seconds=60)
    for p in packets(60, wall_start=START + 2800 - 1.0):  # 14:59:59 -> 15:00:01
        w.write(p)
    w.close()
    hours = sorted(p.parent.name for p in segments(tmp_path))
    assert hours == ["14", "15"]
    assert recorded_numbers(tmp_path) == list(range(60))


def test_wall_clock_jump_starts_a_new_segment_named_by_the_new_time(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_seconds=60)
    for p in packets(60, wall_jump_at=30, jump_seconds=3 * 3600 + 0.5):
        w.write(p)
    w.close()
    files = segments(tmp_path)
    assert [f.parent.name for f in files] == ["14", "17"]
    assert recorded_numbers(tmp_path) == list(range(60))


def test_packets_before_the_first_keyframe_are_skipped_and_counted(tmp_path: Path) -> None:
    w = writer(tmp_path)
    stream = packets(40)
    for p in stream[1:]:
        w.write(p)
    w.close()
    assert w.packets_skipped == 14  # frames 1..14 precede the keyframe at 15 (gop 15)
    numbers = recorded_numbers(tmp_path)
    assert numbers == list(range(15, 40))


def test_close_is_idempotent(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for p in packets(5):
        w.write(p)
    assert w.close() is not None
    assert w.close() is None


def crash_copy(tmp_path: Path, count: int, fragment_seconds: float = 0.5) -> Path:
    """What a power cut after `count` frames leaves: the .partial as it is on disk then."""
    w = writer(tmp_path / "live", segment_seconds=600)
    for p in packets(count, fragment_seconds=fragment_seconds):
        w.write(p)
    assert w.open_path is not None
    crashed = tmp_path / "crashed" / w.open_path.name
    crashed.parent.mkdir()
    shutil.copyfile(w.open_path, crashed)
    w.close()
    return crashed


def test_recovery_keeps_every_whole_fragment(tmp_path: Path) -> None:
    crashed = crash_copy(tmp_path, 50)  # fragments of 15 frames: 0-14, 15-29, 30-44 are whole
    result = recover_partial(crashed)
    assert result.result is not None and result.result.suffix == ".mp4"
    assert not crashed.exists()
    assert frame_numbers(result.result) == list(range(45))
    assert result.fragments == 3


def test_recovery_trims_a_torn_fragment(tmp_path: Path) -> None:
    crashed = crash_copy(tmp_path, 50)
    whole, _ = playable_length(crashed)
    with open(crashed, "ab") as f:
        f.write(b"\x00\x00\x10\x00moof" + b"\x01" * 100)  # a box cut short by the power going
    result = recover_partial(crashed)
    assert result.kept_bytes == whole and result.dropped_bytes == 108
    assert result.result is not None
    assert frame_numbers(result.result) == list(range(45))


def test_recovery_removes_a_partial_with_no_whole_fragment(tmp_path: Path) -> None:
    crashed = crash_copy(tmp_path, 10)  # the first fragment is still open: nothing playable
    result = recover_partial(crashed)
    assert result.result is None and not crashed.exists()


def test_recovery_leaves_a_file_that_is_not_mp4_alone(tmp_path: Path) -> None:
    odd = tmp_path / "notes.mp4.partial"
    odd.write_bytes(b"this is not a video file at all")
    result = recover_partial(odd)
    assert result.result is None and odd.exists()


def test_recover_partials_walks_the_tree_and_does_not_clobber_a_closed_name(tmp_path: Path) -> None:
    crashed = crash_copy(tmp_path, 50)
    root = tmp_path / "root"
    hour = root / "2026-09-21" / "14"
    hour.mkdir(parents=True)
    taken = hour / crashed.name.removesuffix(PARTIAL_SUFFIX)
    taken.write_bytes(b"an older closed segment")
    shutil.move(crashed, hour / crashed.name)
    [result] = recover_partials(root)
    assert result.result == hour / (taken.stem + "-1.mp4")
    assert taken.read_bytes() == b"an older closed segment"
    assert gaps(frame_numbers(result.result)) == []


@pytest.mark.parametrize("count", [16, 31, 46, 59])
def test_power_cut_loses_at_most_the_open_fragment(tmp_path: Path, count: int) -> None:
    crashed = crash_copy(tmp_path, count)
    result = recover_partial(crashed)
    kept = frame_numbers(result.result) if result.result else []
    assert kept == list(range(len(kept)))
    assert count - len(kept) <= 15  # one fragment at 0.5 s x 30 fps


def test_running_out_of_descriptors_at_a_new_segment_leaves_no_file_open(tmp_path: Path) -> None:
    """EMFILE for real: the opener takes the last descriptors, so starting the segment fails
    (in the muxer's set-up, here); the new `.partial` must be closed and removed, or the
    cleanup guard refuses every recovery attempt ("segment files still open after cleanup")."""
    import os
    import resource

    from hw.errors import StorageError
    from hw.writer import open_exclusive
    from states.guards import open_partial_files

    fillers: list[int] = []

    def opener_that_takes_every_descriptor(path: Path):  # type: ignore[no-untyped-def]
        f = open_exclusive(path)
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass  # EMFILE: none left for the directory
        return f

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    w = SegmentWriter(tmp_path, width=MODE.width, height=MODE.height, fps=MODE.fps,
                      segment_seconds=1.0, opener=opener_that_takes_every_descriptor)
    try:
        with pytest.raises(StorageError, match="Too many open files"):
            w.write(packets(1)[0])
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fillers, "the opener never ran out of descriptors"
    assert not [p for p in open_partial_files() if str(p).startswith(str(tmp_path))]
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
    assert w.open_path is None


def test_a_failed_directory_fsync_at_a_new_segment_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory fsync after creating the segment fails (EMFILE: it needs a descriptor of
    its own); injected at that one call, since which call meets a real EMFILE first depends on
    how many descriptors the muxer's set-up takes."""
    import errno
    import os

    import hw.writer
    from hw.errors import StorageError
    from states.guards import open_partial_files

    def no_descriptor_left(path: Path) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))

    monkeypatch.setattr(hw.writer, "fsync_directory", no_descriptor_left)
    w = writer(tmp_path)
    with pytest.raises(StorageError, match="Too many open files"):
        w.write(packets(1)[0])
    assert not [p for p in open_partial_files() if str(p).startswith(str(tmp_path))]
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
    assert w.open_path is None


def test_footage_held_on_a_full_disk_is_bounded_in_bytes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (a real tmpfs, filled) holds the footage in memory only up to HOLD_MAX_BYTES
    (the README's bound): past it the writer gives up with StorageFull, having held no more
    than the bound plus the packet that crossed it, and says how much it held."""
    from hw import writer as writing
    from hw.errors import StorageFull
    from tests.tmpfs import mounted_tmpfs

    bound = 64 * 1024
    monkeypatch.setattr(writing, "HOLD_MAX_BYTES", bound)
    monkeypatch.setattr(writing, "HOLD_SECONDS", 3600.0)  # the byte bound, not the time, is under test
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        w = SegmentWriter(disk, width=MODE.width, height=MODE.height, fps=MODE.fps,
                          segment_seconds=3600.0)
        stream = packets(3000)
        for p in stream[:30]:
            w.write(p)
        with open(disk / "filler", "wb", buffering=0) as filler:  # another program takes the rest
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass  # ENOSPC: the disk is full
        held_when_given_up = None
        largest = 0
        with pytest.raises(StorageFull, match="MiB held"):
            for p in stream[30:]:
                largest = max(largest, len(p.data))
                if w.is_holding:
                    held_when_given_up = w._held_bytes
                w.write(p)
        assert held_when_given_up is not None, "the writer never held footage"
        assert held_when_given_up <= bound  # before the last packet it was within the bound
        assert w.packets_lost > 0 and not w.is_holding
        w.close()


def test_an_open_segment_only_grows_its_bytes_are_a_prefix_of_the_closed_file(tmp_path: Path) -> None:
    """What uploading an open segment part by part relies on (controller/surfaces/upload.py):
    the writer appends fragments and never rewrites a byte it wrote, not even at the close."""
    mode = CameraMode(160, 120, 30)
    packets = encode_synthetic(mode, 150, fragment_seconds=0.5, wall_start=1_700_000_000.0)
    writer = SegmentWriter(tmp_path / "rec", width=160, height=120, fps=30, segment_seconds=3600,
                           fsync=False)
    seen: list[bytes] = []
    for n, packet in enumerate(packets):
        writer.write(packet)
        if n % 40 == 39:
            assert writer.open_path is not None
            seen.append(writer.open_path.read_bytes())
    closed = writer.close()
    assert closed is not None
    final = closed.path.read_bytes()
    assert len(seen) == 3 and len(seen[0]) < len(seen[1]) < len(seen[2]) < len(final)
    for prefix in seen:
        assert final.startswith(prefix)
    assert frame_numbers(closed.path) == list(range(150))
