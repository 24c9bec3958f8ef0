"""durablefs: a FUSE filesystem that keeps only what was made durable, for power-cut tests.

The process under test sees an ordinary filesystem. Behind it every inode has a live state
and a durable one (file bytes as of the file's last fsync/fdatasync, directory entries as
of the directory's last fsync; see model.py for exactly what is modelled and simplified).
`DurableMount.cut()` is the power cut: the filesystem freezes and its durable state is saved;
a new `DurableMount(image=...)` mounts that state, as the card looks when the power returns.

- model.py: DurableTree, the two-view inode tree (no FUSE; unit-testable on its own);
- daemon.py: the FUSE daemon (mfusepy over Debian's libfuse3), run in its own process;
- mount.py: DurableMount, the test-side handle that starts, cuts and unmounts it.
"""

from tests.fakes.durablefs.mount import DurableFSError, DurableMount, is_mounted

__all__ = ["DurableFSError", "DurableMount", "is_mounted"]
