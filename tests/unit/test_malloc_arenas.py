"""controller.memory.limit_arenas: the daemon's threads share at most two glibc malloc arenas.

Each check runs in a fresh interpreter (a process keeps its arenas, and the test process has
threads of its own already): eight threads allocate, then glibc's own malloc_info report
is read back and its heaps counted.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="needs glibc (mallopt M_ARENA_MAX and malloc_info)")

CHILD = """
import ctypes, ctypes.util, sys, threading
from controller.memory import limit_arenas
done = limit_arenas(2) if sys.argv[1] == "limit" else None
start = threading.Barrier(8)
def work():
    start.wait()  # all eight alive at once, so none can inherit a finished thread's arena
    blocks = [bytearray(4096) for _ in range(200)]  # malloc, not pymalloc (over 512 bytes)
    start.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
print(done)
"""


def heaps_after_eight_threads(tmp_path: Path, how: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(arenas glibc reports, what limit_arenas returned) in a child whose threads allocated."""
    report = tmp_path / f"malloc-{how}.xml"
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    done = subprocess.run([sys.executable, "-c", CHILD, how, str(report)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return report.read_text().count("<heap nr="), done.stdout.strip()


def test_threads_share_at_most_two_arenas_once_limited(tmp_path: Path) -> None:
    unlimited, _ = heaps_after_eight_threads(tmp_path, "free")
    limited, answered = heaps_after_eight_threads(tmp_path, "limit")
    assert unlimited > 2  # glibc's default really gives threads arenas of their own here
    assert answered == "True" and limited <= 2, (limited, answered)


def test_the_environment_variable_wins(tmp_path: Path) -> None:
    heaps, answered = heaps_after_eight_threads(tmp_path, "limit", {"MALLOC_ARENA_MAX": "3"})
    assert answered == "False"  # left to glibc, which read MALLOC_ARENA_MAX=3 at start
    assert heaps <= 3
