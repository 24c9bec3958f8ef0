"""The storage model behind durablefs: a live tree the process sees, and what is durable.

Every inode keeps two states. The live one is what reads, `stat` and `readdir` show. The
durable one is what a power cut leaves:
- a regular file's bytes (and so its size) as of its last fsync or fdatasync; a file never
  synced is empty after a cut;
- a directory's entries (names created, renamed in or out, unlinked) as of that directory's
  last fsync; a directory never synced is empty after a cut, even when its parent's entry for
  it survives;
- a symlink's target, from its creation (it is written with its entry).

`durable_copy()` is the power cut: a new tree whose live state is exactly the durable state
of this one, walked from the root through durable entries only. So a file created, written
and fsynced whose directory was never fsynced is gone; a file renamed into place whose
directory was not fsynced after the rename is back under its old name; an unlink not followed
by a directory fsync is undone; a truncate not followed by a file fsync is undone.

This is the minimum that POSIX (fsync(2): "Calling fsync() does not necessarily ensure that
the entry in the directory containing the file has also reached disk") and Linux promise, not
what ext4 usually does: ext4 with data=ordered commits its journal every few seconds, with
more than was synced, and a rename over an existing file is committed with the replaced
file's data. A writer that is correct here is correct on any such filesystem; a loss here may
be one that ext4 would usually hide.

What the model simplifies (said so that nobody reads more into a pass than it proves):
- Torn writes: `durable_copy(keep_unsynced=f)` may keep a prefix (the fraction f) of the
  bytes appended after a file's last fsync, as a journalling filesystem does when some pages
  were written back before the cut (ext4 data=ordered commits a size only with the data
  before it). Bytes overwritten in place after a fsync are never torn in: the durable copy
  keeps the synced bytes. Unsynced directory changes never survive, not even partly.
- Each directory is synced on its own. A rename across two directories, of which only one
  is then fsynced, can leave the file in both (a real filesystem journals a rename as one
  transaction): the copy then links one inode under both names; a directory reachable twice
  is kept at its first place only.
- Metadata other than a file's size (mode, times, owner) is taken as it is at the cut.
- Inodes are never freed, and no space accounting beyond what `statfs` reports as used.
- No hard-link counts in the durable view other than the links found in it.

Written for vigil's power-cut tests; the two-view design follows the single-file model that
tests/unit/test_power_cut.py used before (durable content per inode, entries per directory).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what or None)


@dataclass(eq=False)
class Node:
    """One inode: its live state and its durable state."""

    ino: int
    mode: int  # type and permission bits (stat.S_IFREG | 0o644, ...)
    data: bytearray = field(default_factory=bytearray)  # regular file, live
    entries: dict[str, int] = field(default_factory=dict)  # directory, live
    target: str = ""  # symlink
    synced_data: bytes = b""  # regular file, as of its last fsync
    synced_entries: dict[str, int] = field(default_factory=dict)  # directory, as of its last fsync
    nlink: int = 0  # live links from directories
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    atime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def touch(self) -> None:
        self.mtime_ns = self.ctime_ns = time.time_ns()


@dataclass
class Counters:
    """What the process asked of the filesystem, for tests that want to see the sync traffic."""

    writes: int = 0
    bytes_written: int = 0
    file_syncs: int = 0
    dir_syncs: int = 0


ROOT_INO = 1
CAPACITY_BYTES = 4 << 30
BLOCK_BYTES = 4096


class DurableTree:
    """An in-memory filesystem tree with a live and a durable state per inode.

    Paths are absolute, '/'-separated, as FUSE hands them over. Errors are OSError with the
    errno a kernel filesystem would return.
    """

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        # Open files unlinked by the process: libfuse renames them to a hidden name until the
        # last close. They are gone from their directory (also for its next fsync) but can
        # still be reached by that path, as an open file can be on a kernel filesystem.
        self.unlinked_open: dict[str, int] = {}
        self._next_ino = ROOT_INO
        root = self._new(stat.S_IFDIR | 0o755)
        root.nlink = 2
        self.counters = Counters()

    # -- inodes and paths -------------------------------------------------------------------

    def _new(self, mode: int) -> Node:
        node = Node(self._next_ino, mode)
        self.nodes[node.ino] = node
        self._next_ino += 1
        return node

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INO]

    def lookup(self, path: str) -> Node:
        if path in self.unlinked_open:
            return self.nodes[self.unlinked_open[path]]
        node = self.root
        for name in _parts(path):
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, path)
            ino = node.entries.get(name)
            if ino is None:
                raise fs_error(errno.ENOENT, path)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        parts = _parts(path)
        if not parts:
            raise fs_error(errno.EBUSY, path)  # the root has no parent entry
        parent = self.lookup("/" + "/".join(parts[:-1]))
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _link(self, parent: Node, name: str, node: Node) -> None:
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise fs_error(errno.ENAMETOOLONG, name)
        parent.entries[name] = node.ino
        node.nlink += 1
        if node.is_dir:
            parent.nlink += 1
        parent.touch()

    def _unlink_entry(self, parent: Node, name: str) -> Node:
        node = self.nodes[parent.entries.pop(name)]
        node.nlink -= 1
        if node.is_dir:
            parent.nlink -= 1
        parent.touch()
        node.ctime_ns = time.time_ns()
        return node

    # -- namespace operations -------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fs_error(errno.EEXIST, path)
        node = self._new(stat.S_IFDIR | (mode & 0o7777))
        node.nlink = 1  # its own "."; the parent's entry adds one
        self._link(parent, name, node)
        return node

    def create(self, path: str, mode: int) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fs_error(errno.EEXIST, path)
        node = self._new(stat.S_IFREG | (mode & 0o7777))
        self._link(parent, name, node)
        return node

    def symlink(self, path: str, target: str) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fs_error(errno.EEXIST, path)
        node = self._new(stat.S_IFLNK | 0o777)
        node.target = target
        self._link(parent, name, node)
        return node

    def link(self, existing: str, new: str) -> Node:
        node = self.lookup(existing)
        if node.is_dir:
            raise fs_error(errno.EPERM, existing)
        parent, name = self._parent(new)
        if name in parent.entries:
            raise fs_error(errno.EEXIST, new)
        self._link(parent, name, node)
        node.ctime_ns = time.time_ns()
        return node

    def unlink(self, path: str) -> None:
        if self.unlinked_open.pop(path, None) is not None:
            return  # the last close of a file unlinked while open
        parent, name = self._parent(path)
        node = self.lookup(path)
        if node.is_dir:
            raise fs_error(errno.EISDIR, path)
        self._unlink_entry(parent, name)

    def rmdir(self, path: str) -> None:
        parent, name = self._parent(path)
        node = self.lookup(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        if node.entries:
            raise fs_error(errno.ENOTEMPTY, path)
        self._unlink_entry(parent, name)
        node.nlink = 0

    def unlink_open(self, path: str, hidden_path: str) -> None:
        """unlink(2) of a file still open: it stays reachable as `hidden_path` until closed."""
        node = self.lookup(path)
        self.unlink(path)
        self.unlinked_open[hidden_path] = node.ino

    def rename(self, old: str, new: str) -> None:
        """rename(2): replaces `new` if it exists and is of a compatible kind."""
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        node = self.lookup(old)
        replaced_ino = new_parent.entries.get(new_name)
        if replaced_ino == node.ino:
            return  # the same name, or two links to one inode: rename(2) does nothing
        if node.is_dir and _is_within(new, old):
            raise fs_error(errno.EINVAL, new)
        if replaced_ino is not None:
            replaced = self.nodes[replaced_ino]
            if node.is_dir and not replaced.is_dir:
                raise fs_error(errno.ENOTDIR, new)
            if not node.is_dir and replaced.is_dir:
                raise fs_error(errno.EISDIR, new)
            if replaced.is_dir and replaced.entries:
                raise fs_error(errno.ENOTEMPTY, new)
            self._unlink_entry(new_parent, new_name)
            if replaced.is_dir:
                replaced.nlink = 0
        self._unlink_entry(old_parent, old_name)
        self._link(new_parent, new_name, node)
        if node.is_dir:  # open files unlinked inside it are now reached by its new path
            prefix = old.rstrip("/") + "/"
            for hidden in [p for p in self.unlinked_open if p.startswith(prefix)]:
                moved = new.rstrip("/") + "/" + hidden[len(prefix):]
                self.unlinked_open[moved] = self.unlinked_open.pop(hidden)

    # -- data and attributes ----------------------------------------------------------------

    def read(self, node: Node, size: int, offset: int) -> bytes:
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        node.atime_ns = time.time_ns()
        return bytes(node.data[offset:offset + size])

    def write(self, node: Node, data: bytes, offset: int) -> int:
        if not node.is_file:
            raise fs_error(errno.EINVAL)
        growth = max(0, offset + len(data) - len(node.data))
        if growth > CAPACITY_BYTES - self.bytes_used():
            raise fs_error(errno.ENOSPC)
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset:offset + len(data)] = data
        node.touch()
        self.counters.writes += 1
        self.counters.bytes_written += len(data)
        return len(data)

    def truncate(self, node: Node, length: int) -> None:
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        if not node.is_file:
            raise fs_error(errno.EINVAL)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(bytes(length - len(node.data)))
        node.touch()

    def fsync(self, node: Node) -> None:
        """fsync(2)/fdatasync(2) on a file or a directory: its live state becomes durable."""
        if node.is_dir:
            node.synced_entries = dict(node.entries)
            self.counters.dir_syncs += 1
        elif node.is_file:
            node.synced_data = bytes(node.data)
            self.counters.file_syncs += 1

    def bytes_used(self) -> int:
        return sum(len(n.data) for n in self.nodes.values() if n.is_file)

    def attributes(self, node: Node) -> dict[str, int]:
        size = len(node.data) if node.is_file else len(node.target) if node.is_symlink else BLOCK_BYTES
        return {
            "st_ino": node.ino, "st_mode": node.mode, "st_nlink": max(node.nlink, 0),
            "st_size": size, "st_uid": os.getuid(), "st_gid": os.getgid(),
            "st_blocks": (size + 511) // 512, "st_blksize": BLOCK_BYTES,
            "st_atime": node.atime_ns, "st_mtime": node.mtime_ns, "st_ctime": node.ctime_ns,
        }

    def statfs(self) -> dict[str, int]:
        blocks = CAPACITY_BYTES // BLOCK_BYTES
        free = blocks - (self.bytes_used() + BLOCK_BYTES - 1) // BLOCK_BYTES
        return {"f_bsize": BLOCK_BYTES, "f_frsize": BLOCK_BYTES, "f_blocks": blocks,
                "f_bfree": free, "f_bavail": free, "f_files": 1 << 20,
                "f_ffree": (1 << 20) - len(self.nodes), "f_favail": (1 << 20) - len(self.nodes),
                "f_namemax": 255}

    # -- the power cut ------------------------------------------------------------------------

    def durable_copy(self, *, keep_unsynced: float = 0.0) -> DurableTree:
        """The tree a power cut leaves: only durable state, walked through durable entries.

        `keep_unsynced` (0..1) keeps that fraction of the bytes appended to each file since its
        last fsync (a torn tail); 0 is the pessimistic minimum.
        """
        if not 0.0 <= keep_unsynced <= 1.0:
            raise ValueError(f"keep_unsynced must be within 0..1, not {keep_unsynced}")
        out = DurableTree()
        copied: dict[int, Node] = {ROOT_INO: out.root}

        def walk(source: Node, into: Node) -> None:
            for name, ino in sorted(source.synced_entries.items()):
                node = self.nodes[ino]
                if ino in copied:
                    if node.is_dir:
                        continue  # a directory reachable twice: kept at its first place
                    out._link(into, name, copied[ino])
                    continue
                new = out._new(node.mode)
                copied[ino] = new
                if node.is_dir:
                    new.nlink = 1
                    out._link(into, name, new)
                    walk(node, new)
                else:
                    if node.is_file:
                        new.data = bytearray(_surviving_bytes(node, keep_unsynced))
                    new.target = node.target
                    out._link(into, name, new)
                new.mtime_ns, new.ctime_ns, new.atime_ns = node.mtime_ns, node.ctime_ns, node.atime_ns

        walk(self.root, out.root)
        out.mark_all_durable()
        return out

    def mark_all_durable(self) -> None:
        """Make the live state durable everywhere (a tree freshly loaded from an image)."""
        for node in self.nodes.values():
            node.synced_data = bytes(node.data)
            node.synced_entries = dict(node.entries)

    # -- images on a real disk ----------------------------------------------------------------

    def save(self, dest: Path) -> None:
        """Write the live tree under `dest` (an empty or missing directory) on a real disk."""
        dest.mkdir(parents=True, exist_ok=True)
        written: dict[int, Path] = {}

        def walk(directory: Node, into: Path) -> None:
            for name, ino in sorted(directory.entries.items()):
                node, target = self.nodes[ino], into / name
                if ino in written and not node.is_dir:
                    os.link(written[ino], target)
                    continue
                written[ino] = target
                if node.is_dir:
                    target.mkdir(mode=0o700)
                    walk(node, target)
                    os.chmod(target, stat.S_IMODE(node.mode))
                elif node.is_symlink:
                    os.symlink(node.target, target)
                else:
                    target.write_bytes(bytes(node.data))
                    os.chmod(target, stat.S_IMODE(node.mode))

        walk(self.root, dest)

    @classmethod
    def load(cls, source: Path) -> DurableTree:
        """A tree holding what `save` wrote under `source`, all of it durable."""
        tree = cls()
        seen: dict[tuple[int, int], Node] = {}

        def walk(folder: Path, into: Node) -> None:
            for path in sorted(folder.iterdir()):
                st = path.lstat()
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    tree._link(into, path.name, seen[key])
                    continue
                node = tree._new(st.st_mode)
                seen[key] = node
                if stat.S_ISDIR(st.st_mode):
                    node.nlink = 1
                    tree._link(into, path.name, node)
                    walk(path, node)
                elif stat.S_ISLNK(st.st_mode):
                    node.target = os.readlink(path)
                    tree._link(into, path.name, node)
                elif stat.S_ISREG(st.st_mode):
                    node.data = bytearray(path.read_bytes())
                    tree._link(into, path.name, node)
                else:
                    raise ValueError(f"{path}: only files, directories and symlinks are imaged")
                node.mtime_ns = node.atime_ns = st.st_mtime_ns

        walk(source, tree.root)
        tree.mark_all_durable()
        return tree

    def listing(self) -> dict[str, bytes | None]:
        """{path: file bytes, or None for a directory, or b'->target' for a symlink}: for tests."""
        out: dict[str, bytes | None] = {}

        def walk(directory: Node, prefix: str) -> None:
            for name, ino in sorted(directory.entries.items()):
                node, path = self.nodes[ino], f"{prefix}/{name}"
                if node.is_dir:
                    out[path] = None
                    walk(node, path)
                else:
                    out[path] = bytes(node.data) if node.is_file else b"->" + node.target.encode()

        walk(self.root, "")
        return out


def _surviving_bytes(node: Node, keep_unsynced: float) -> bytes:
    synced, live = node.synced_data, bytes(node.data)
    if keep_unsynced == 0.0 or len(live) <= len(synced) or live[:len(synced)] != synced:
        return synced
    tail = live[len(synced):]
    return synced + tail[:int(len(tail) * keep_unsynced)]


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _is_within(path: str, ancestor: str) -> bool:
    a, p = _parts(ancestor), _parts(path)
    return p[:len(a)] == a
