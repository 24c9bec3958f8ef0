"""The durablefs FUSE daemon: serves a DurableTree at a mount point, cut on request.

Run as `python -m tests.fakes.durablefs MOUNTPOINT --control SOCKET [--image DIR]`; it stays
in the foreground until the mount point is unmounted. `--image` starts from a tree saved by
an earlier cut (the "remount after the power came back"); without it the tree is empty.

The control socket takes one JSON object per line and answers one per line:
- {"op": "cut", "image": DIR, "keep_unsynced": F}: the power cut. From this moment every
  filesystem call fails with EIO (the disk is gone); the durable state is saved under DIR.
- {"op": "stats"}: the counters (writes, file and directory syncs) and whether it was cut.

Built on mfusepy (ctypes bindings for libfuse 3's high-level API), written from its own
module (mfusepy.py: the `Operations` methods and signatures, and how `FUSE` wraps them,
including its notes on readdir): one Operations subclass, path-based calls, file handles for
open files. Single-threaded (`nothreads`) so that every call sees one consistent tree; a
lock also keeps the control thread's cut atomic with respect to them.

libfuse's high-level API shapes three choices here: an open file that is unlinked is
renamed by libfuse to `.fuse_hidden...` until its last close (taken as the unlink it is);
each hard link gets a kernel inode of its own (so the kernel caches no attributes); and
libfuse 3 folds ftruncate into truncate (the file handle is passed on by `_FUSE`).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import socketserver
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mfusepy

from tests.fakes.durablefs.model import DurableTree, Node, fs_error

F = TypeVar("F", bound=Callable[..., Any])
LIBFUSE_HIDDEN_PREFIX = ".fuse_hidden"


def _guarded(method: F) -> F:
    """Run a filesystem call under the tree's lock; after a cut, fail it with EIO."""

    @functools.wraps(method)
    def call(self: DurableOperations, *args: Any, **kwargs: Any) -> Any:
        with self.mutex:
            if self.is_cut:
                raise fs_error(errno.EIO)
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class DurableOperations(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE calls, mapped onto a DurableTree."""

    use_ns = True

    def __init__(self, tree: DurableTree) -> None:
        self.tree = tree
        self.mutex = threading.Lock()  # not `lock`: that name is FUSE's lock operation
        self.is_cut = False
        self._handles: dict[int, int] = {}  # file handle -> inode
        self._next_handle = 1
        self.unreadable: set[int] = set()  # inodes whose reads fail (fail_reads)

    def _open_handle(self, node: Node) -> int:
        fh = self._next_handle
        self._next_handle += 1
        self._handles[fh] = node.ino
        return fh

    def _node(self, path: str | None, fh: int | None = None) -> Node:
        # The handle names the file even when its path has changed since it was opened.
        if fh is not None and fh in self._handles:
            return self.tree.nodes[self._handles[fh]]
        if path is None:
            raise fs_error(errno.EBADF)
        return self.tree.lookup(path)

    # -- the cut (from the control thread) ------------------------------------------------

    def cut(self, image: Path, keep_unsynced: float) -> dict[str, Any]:
        with self.mutex:
            self.is_cut = True
            survivor = self.tree.durable_copy(keep_unsynced=keep_unsynced)
        survivor.save(image)
        listing = survivor.listing()
        files = [v for v in listing.values() if v is not None]
        return {"paths": len(listing), "files": len(files), "bytes": sum(len(v) for v in files)}

    def stats(self) -> dict[str, Any]:
        with self.mutex:
            c = self.tree.counters
            return {"writes": c.writes, "bytes_written": c.bytes_written,
                    "file_syncs": c.file_syncs, "dir_syncs": c.dir_syncs, "is_cut": self.is_cut}

    # -- attributes and directories ---------------------------------------------------------

    @_guarded
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        return self.tree.attributes(self._node(path, fh))

    @_guarded
    def opendir(self, path: str) -> int:
        node = self.tree.lookup(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        return self._open_handle(node)

    @_guarded
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino the inode number given here is the one readdir(3) sees, and glibc skips
        # entries whose d_ino is 0: every entry carries its own.
        directory = self._node(path, fh)
        entries = [(".", directory.ino), ("..", directory.ino), *directory.entries.items()]
        return [(name, {"st_ino": ino, "st_mode": self.tree.nodes[ino].mode}, 0)
                for name, ino in entries]

    @_guarded
    def releasedir(self, path: str | None, fh: int) -> int:
        self._handles.pop(fh, None)
        return 0

    @_guarded
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.tree.fsync(self._node(path, fh))
        return 0

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        self.tree.mkdir(path, mode)
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        self.tree.rmdir(path)
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        self.tree.unlink(path)
        return 0

    @_guarded
    def rename(self, old: str, new: str) -> int:
        if new.rsplit("/", 1)[-1].startswith(LIBFUSE_HIDDEN_PREFIX):
            # libfuse's stand-in for unlinking a file that is still open (no hard_remove, so
            # that fstat and reads of the open file keep working as on a kernel filesystem).
            self.tree.unlink_open(old, new)
        else:
            self.tree.rename(old, new)
        return 0

    @_guarded
    def symlink(self, path: str, target: str) -> int:
        self.tree.symlink(path, target)
        return 0

    @_guarded
    def readlink(self, path: str) -> str:
        node = self.tree.lookup(path)
        if not node.is_symlink:
            raise fs_error(errno.EINVAL, path)
        return node.target

    @_guarded
    def link(self, new: str, existing: str) -> int:
        self.tree.link(existing, new)
        return 0

    @_guarded
    def chmod(self, path: str | None, mode: int) -> int:
        node = self._node(path)
        node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        return 0

    @_guarded
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self._node(path)  # ownership is not modelled; the call still needs an existing file
        return 0

    @_guarded
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        node = self._node(path)
        if times is None:
            node.touch()
            node.atime_ns = node.mtime_ns
        else:
            node.atime_ns, node.mtime_ns = int(times[0]), int(times[1])
        return 0

    @_guarded
    def statfs(self, path: str) -> dict[str, int]:
        return self.tree.statfs()

    # -- files ------------------------------------------------------------------------------

    @_guarded
    def create(self, path: str, mode: int, flags: int) -> int:
        try:
            node = self.tree.create(path, mode)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            node = self.tree.lookup(path)
            if flags & os.O_TRUNC:
                self.tree.truncate(node, 0)
        return self._open_handle(node)

    @_guarded
    def open(self, path: str, flags: int) -> int:
        node = self.tree.lookup(path)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self.tree.truncate(node, 0)
        return self._open_handle(node)

    def fail_reads(self, path: str) -> dict[str, Any]:
        """From now on every read of the file at `path` fails with EIO, as a card's bad sector
        does; the file is still listed and its size still reads."""
        with self.mutex:
            self.unreadable.add(self.tree.lookup(path).ino)
        return {}

    @_guarded
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path, fh)
        if node.ino in self.unreadable:
            raise fs_error(errno.EIO, "a bad sector (durablefs fail_reads)")
        return self.tree.read(node, size, offset)

    @_guarded
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.tree.write(self._node(path, fh), data, offset)

    @_guarded
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self.tree.truncate(self._node(path, fh), length)
        return 0

    @_guarded
    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) makes nothing durable

    @_guarded
    def release(self, path: str | None, fh: int) -> int:
        self._handles.pop(fh, None)
        return 0

    @_guarded
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        # fdatasync (datasync=1) makes the data and the size durable, which is all we model.
        self.tree.fsync(self._node(path, fh))
        return 0


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, with ftruncate's file handle passed on (libfuse 3 folds it into truncate)."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return int(self.ftruncate(path, length, fip))


class _ControlHandler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                request = json.loads(line)
                if request["op"] == "cut":
                    reply = self.server.operations.cut(Path(request["image"]),
                                                       float(request.get("keep_unsynced", 0.0)))
                elif request["op"] == "fail_reads":
                    reply = self.server.operations.fail_reads(str(request["path"]))
                elif request["op"] == "stats":
                    reply = self.server.operations.stats()
                else:
                    raise ValueError(f"unknown op {request['op']!r}")
                reply["ok"] = True
            except Exception as err:  # the answer says what went wrong; the daemon stays up
                reply = {"ok": False, "error": repr(err)}
            self.wfile.write((json.dumps(reply) + "\n").encode())
            self.wfile.flush()


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, operations: DurableOperations) -> None:
        self.operations = operations
        super().__init__(path, _ControlHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="durablefs", description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="Unix socket for cut and stats")
    parser.add_argument("--image", help="start from a tree saved by a cut")
    parser.add_argument("--debug", action="store_true", help="libfuse's request trace on stderr")
    args = parser.parse_args(argv)
    if mfusepy.fuse_version_major != 3:
        parser.error(f"durablefs needs libfuse 3 (Debian package fuse3); mfusepy loaded "
                     f"{mfusepy._libfuse_path}, version {mfusepy.fuse_version_major}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="durablefs %(levelname)s %(message)s")

    tree = DurableTree.load(Path(args.image)) if args.image else DurableTree()
    operations = DurableOperations(tree)
    control = _ControlServer(args.control, operations)
    threading.Thread(target=control.serve_forever, name="durablefs-control", daemon=True).start()
    try:
        _FUSE(operations, args.mountpoint, foreground=True, nothreads=True, debug=args.debug,
              fsname="durablefs", subtype="durablefs", use_ino=True,
              # No kernel caching of names or attributes: libfuse's high-level API gives each
              # hard link a kernel inode of its own, whose cached link count would go stale.
              attr_timeout=0, entry_timeout=0, negative_timeout=0)
    finally:
        control.shutdown()
        control.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
