"""durablefs, through a real FUSE mount: only what was fsynced survives a cut."""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakes.durablefs import DurableMount, is_mounted


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DurableMount]:
    with DurableMount(tmp_path / "mnt", tmp_path / "fs") as mount:
        yield mount


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    with open(path, "wb", buffering=0) as f:
        f.write(data)
        if sync:
            os.fsync(f.fileno())


def tree(root: Path) -> dict[str, bytes | None]:
    """{relative path: bytes, or None for a directory} of a real directory."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def cut(disk: DurableMount, tmp_path: Path, keep_unsynced: float = 0.0) -> dict[str, bytes | None]:
    image = tmp_path / "image"
    disk.cut(image, keep_unsynced=keep_unsynced)
    return tree(image)


def test_a_write_without_fsync_vanishes_and_one_with_fsync_survives(disk: DurableMount,
                                                                     tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "synced", b"kept", sync=True)
    write_file(mnt / "unsynced", b"lost", sync=False)
    with open(mnt / "synced", "ab", buffering=0) as f:
        f.write(b" and lost")  # after the fsync
    fsync_dir(mnt)
    assert (mnt / "synced").read_bytes() == b"kept and lost"  # the live view has it all
    assert cut(disk, tmp_path) == {"synced": b"kept", "unsynced": b""}


def test_fdatasync_makes_data_durable_too(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    with open(mnt / "f", "wb", buffering=0) as f:
        f.write(b"data")
        os.fdatasync(f.fileno())
    fsync_dir(mnt)
    assert cut(disk, tmp_path) == {"f": b"data"}


def test_a_new_file_needs_its_directory_fsynced(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "f", b"synced data, unsynced entry", sync=True)
    assert cut(disk, tmp_path) == {}


def test_a_new_directory_needs_its_parent_and_its_own_fsync(disk: DurableMount,
                                                           tmp_path: Path) -> None:
    mnt = disk.mountpoint
    (mnt / "a" / "b").mkdir(parents=True)
    write_file(mnt / "a" / "b" / "f", b"x", sync=True)
    fsync_dir(mnt)
    fsync_dir(mnt / "a")  # a/b's entry is durable, but b itself was never synced
    assert cut(disk, tmp_path) == {"a": None, "a/b": None}


def test_a_rename_without_a_directory_fsync_reverts(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "x.partial", b"segment", sync=True)
    fsync_dir(mnt)
    os.rename(mnt / "x.partial", mnt / "x")
    assert os.listdir(mnt) == ["x"]
    assert cut(disk, tmp_path) == {"x.partial": b"segment"}


def test_a_rename_with_a_directory_fsync_sticks(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "x.partial", b"segment", sync=True)
    fsync_dir(mnt)
    os.rename(mnt / "x.partial", mnt / "x")
    fsync_dir(mnt)
    assert cut(disk, tmp_path) == {"x": b"segment"}


def test_a_rename_over_a_file_without_a_directory_fsync_keeps_the_old_file(
    disk: DurableMount, tmp_path: Path
) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "config", b"old", sync=True)
    write_file(mnt / "config.new", b"new", sync=True)
    fsync_dir(mnt)
    os.replace(mnt / "config.new", mnt / "config")
    assert (mnt / "config").read_bytes() == b"new"
    assert cut(disk, tmp_path) == {"config": b"old", "config.new": b"new"}


def test_an_unlink_with_a_directory_fsync_sticks(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "f", b"gone", sync=True)
    fsync_dir(mnt)
    os.unlink(mnt / "f")
    fsync_dir(mnt)
    assert cut(disk, tmp_path) == {}


def test_an_unsynced_unlink_comes_back(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "f", b"still here", sync=True)
    fsync_dir(mnt)
    os.unlink(mnt / "f")
    assert not (mnt / "f").exists()
    assert cut(disk, tmp_path) == {"f": b"still here"}


def test_a_truncate_is_durable_only_after_fsync(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "synced", b"0123456789", sync=True)
    write_file(mnt / "unsynced", b"0123456789", sync=True)
    fsync_dir(mnt)
    with open(mnt / "synced", "r+b") as f:
        f.truncate(4)
        os.fsync(f.fileno())
    os.truncate(mnt / "unsynced", 4)
    assert (mnt / "unsynced").stat().st_size == 4
    assert cut(disk, tmp_path) == {"synced": b"0123", "unsynced": b"0123456789"}


def test_a_torn_tail_keeps_a_prefix_of_the_unsynced_bytes(disk: DurableMount, tmp_path: Path) -> None:
    mnt = disk.mountpoint
    with open(mnt / "f", "wb", buffering=0) as f:
        f.write(b"synced|")
        os.fsync(f.fileno())
        f.write(b"01234567")
    fsync_dir(mnt)
    assert cut(disk, tmp_path, keep_unsynced=0.5) == {"f": b"synced|0123"}


def test_after_a_cut_every_call_fails_and_a_remount_shows_exactly_the_durable_state(
    disk: DurableMount, tmp_path: Path
) -> None:
    mnt = disk.mountpoint
    (mnt / "d").mkdir()
    write_file(mnt / "d" / "f", b"durable", sync=True)
    fsync_dir(mnt / "d")
    fsync_dir(mnt)
    write_file(mnt / "d" / "g", b"not durable", sync=True)
    image = tmp_path / "image"
    disk.cut(image)
    for call in (lambda: os.listdir(mnt / "d"), lambda: (mnt / "d" / "f").read_bytes(),
                 lambda: (mnt / "new").write_bytes(b"x")):
        with pytest.raises(OSError) as raised:
            call()
        assert raised.value.errno == errno.EIO
    disk.close()
    with DurableMount(mnt, tmp_path / "fs2", image=image) as again:
        assert tree(again.mountpoint) == {"d": None, "d/f": b"durable"}
        # Everything a remount starts from is durable already: a cut right away keeps it all.
        again.cut(tmp_path / "image2")
    assert tree(tmp_path / "image2") == tree(image)


def test_an_open_file_unlinked_stays_readable_and_is_not_durable(disk: DurableMount,
                                                                tmp_path: Path) -> None:
    mnt = disk.mountpoint
    (mnt / "d").mkdir()
    fsync_dir(mnt)
    with open(mnt / "d" / "f", "xb+", buffering=0) as f:
        f.write(b"written")
        fsync_dir(mnt / "d")
        os.unlink(mnt / "d" / "f")
        f.write(b" after the unlink")
        assert os.listdir(mnt / "d") == []
        assert os.fstat(f.fileno()).st_size == 24
        assert os.pread(f.fileno(), 100, 0) == b"written after the unlink"
        os.fsync(f.fileno())
        fsync_dir(mnt / "d")
    assert os.listdir(mnt / "d") == []  # libfuse's hidden name is gone with the last close
    assert cut(disk, tmp_path) == {"d": None}


def test_stat_and_statfs_look_like_a_filesystem(disk: DurableMount) -> None:
    mnt = disk.mountpoint
    write_file(mnt / "f", b"12345", sync=False)
    os.link(mnt / "f", mnt / "g")
    os.symlink("f", mnt / "link")
    st = (mnt / "f").stat()
    assert (st.st_size, st.st_nlink, st.st_ino) == (5, 2, (mnt / "g").stat().st_ino)
    assert os.readlink(mnt / "link") == "f"
    assert (mnt / "link").read_bytes() == b"12345"
    assert sorted(os.listdir(mnt)) == ["f", "g", "link"]
    with pytest.raises(FileExistsError):
        open(mnt / "f", "xb").close()
    with pytest.raises(OSError) as raised:
        os.rmdir(mnt / "f")
    assert raised.value.errno == errno.ENOTDIR
    vfs = os.statvfs(mnt)
    assert vfs.f_bavail * vfs.f_frsize > 1 << 30


def test_a_daemon_that_dies_leaves_no_stale_mount(tmp_path: Path) -> None:
    mount = DurableMount(tmp_path / "mnt", tmp_path / "fs")
    mount.start()
    try:
        assert is_mounted(mount.mountpoint)
        assert mount._proc is not None
        mount._proc.send_signal(signal.SIGKILL)  # our own daemon, by its pid
        mount._proc.wait(10)
        with pytest.raises(OSError) as raised:
            os.listdir(mount.mountpoint)
        assert raised.value.errno == errno.ENOTCONN
    finally:
        mount.close()
    assert not is_mounted(mount.mountpoint)
    assert os.listdir(mount.mountpoint) == []


# -- the live view behaves like a kernel filesystem --------------------------------------------

NAMES = ("a", "b", "d", "d/a", "e")  # few names, so that calls meet each other often
_op = st.sampled_from(NAMES)
OPERATIONS = st.one_of(
    st.tuples(st.just("create"), _op, st.binary(max_size=64)),
    st.tuples(st.just("append"), _op, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("truncate"), _op, st.integers(0, 80)),
    st.tuples(st.just("rename"), _op, _op),
    st.tuples(st.just("link"), _op, _op),
    st.tuples(st.just("unlink"), _op),
    st.tuples(st.just("mkdir"), _op),
    st.tuples(st.just("rmdir"), _op),
    st.tuples(st.just("fsync"), _op),
)


def apply(base: Path, operation: tuple[Any, ...]) -> tuple[str, object]:
    """Run one operation under `base`; ("ok", result) or ("error", errno)."""
    kind, path, *args = operation
    target = base / path
    try:
        if kind == "create":
            with open(target, "xb", buffering=0) as f:
                f.write(args[0])
        elif kind == "append":
            with open(target, "ab", buffering=0) as f:
                f.write(args[0])
        elif kind == "truncate":
            os.truncate(target, args[0])
        elif kind == "rename":
            os.rename(target, base / args[0])
        elif kind == "link":
            os.link(target, base / args[0])
        elif kind == "unlink":
            os.unlink(target)
        elif kind == "mkdir":
            os.mkdir(target)
        elif kind == "rmdir":
            os.rmdir(target)
        else:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as err:
        return ("error", errno.errorcode.get(err.errno or 0, err.errno))
    return ("ok", None)


def shape(base: Path) -> dict[str, tuple[object, ...]]:
    """Names, kinds, contents and link counts under `base`."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(base.rglob("*")):
        st_result = path.lstat()
        key = str(path.relative_to(base))
        if path.is_dir():
            out[key] = ("dir", sorted(os.listdir(path)))
        else:
            out[key] = ("file", path.read_bytes(), st_result.st_nlink, st_result.st_size)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATIONS, min_size=5, max_size=40))
@example(operations=[("mkdir", "d"), ("mkdir", "e"), ("create", "d/a", b"x"), ("rename", "e", "d"),
                     ("create", "a", b""), ("link", "a", "b"), ("unlink", "a"), ("rename", "d", "a")])
def test_the_live_view_answers_every_call_as_a_kernel_filesystem_does(
    disk: DurableMount, tmp_path: Path, operations: list[tuple[Any, ...]]
) -> None:
    # Each example gets fresh folders on the mount and on the real disk beside it.
    mine = Path(tempfile.mkdtemp(dir=disk.mountpoint))
    real = Path(tempfile.mkdtemp(dir=tmp_path))
    for operation in operations:
        assert apply(mine, operation) == apply(real, operation), operation
    assert shape(mine) == shape(real)
