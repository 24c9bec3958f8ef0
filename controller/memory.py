"""The allocator's side of the daemon's memory: freed frame buffers go back to the system,
and the threads share a few heaps instead of one each.

glibc serves an allocation from mmap only above a threshold that it raises, up to 32 MiB,
each time an mmapped block is freed. A video daemon frees frame-sized blocks (a 720p RGB
frame is 2.7 MB) all the time, so after the first few the threshold sits above a frame and
every later frame comes from the heap arenas, which keep the memory once it is freed, one
arena per thread that touched it. Measured (bench/api_memory.py, 1280x720): RSS from 120 MB
to 325 MB after five bursts of 600 API requests, still 324 MB at rest; with the threshold
pinned at 1 MiB, 109 MB before and 125 MB after each burst. Pinning it (mallopt
M_MMAP_THRESHOLD, which also turns the raising off) keeps frames on mmap, returned on free.

glibc also gives each thread that allocates its own arena, up to 8 per core, and an arena
keeps the high-water mark of what was freed in it. vigil runs 10 to 16 threads (capture,
encoder, housekeeping, the API's workers, the event subscribers, FFmpeg's and x264's own),
so most get one. At most ARENA_MAX arenas (mallopt M_ARENA_MAX, what MALLOC_ARENA_MAX=2
does) cut the 1080p30 daemon's RSS; see README "Performance" for the figures. The threads
that allocate much (x264, the decoder) work on frames, which the pinned threshold keeps on
mmap, outside the arenas, so sharing them costs little lock contention.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

from loguru import logger

MMAP_THRESHOLD_BYTES = 1024 * 1024
ARENA_MAX = 2
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_M_ARENA_MAX = -8
_ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_"  # glibc's own tunable; when set, it is left alone
_ARENA_ENVIRONMENT = "MALLOC_ARENA_MAX"


def _mallopt() -> tuple[Callable[[int, int], int] | None, str | None]:
    """(the C library's mallopt, the library's name); None for a C library without it (musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None, name
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt, name


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve blocks of `threshold` bytes and more from mmap, for good; False where it cannot.

    Logged either way once at start-up; a C library without mallopt (musl) is left as it is.
    """
    return _set_malloc(_M_MMAP_THRESHOLD, threshold, _ENVIRONMENT, "malloc mmap threshold",
                       f"pinned at {threshold} bytes", f"{threshold} bytes")


def _set_malloc(param: int, value: int, environment: str, what: str, done: str, asked: str) -> bool:
    """mallopt(param, value) unless `environment` is set (glibc read it at start); logged."""
    if environment in os.environ:
        logger.info("{} left to {}={}", what, environment, os.environ[environment])
        return False
    mallopt, name = _mallopt()
    if mallopt is None:
        logger.info("{} unchanged: no mallopt in the C library ({})", what, name)
        return False
    if mallopt(param, value) != 1:
        logger.info("{} unchanged: mallopt refused {}", what, asked)
        return False
    logger.debug("{} {}", what, done)
    return True


def limit_arenas(count: int = ARENA_MAX) -> bool:
    """Let all threads share at most `count` malloc arenas; False where it cannot.

    Call it before the threads start: a thread keeps the arena it first allocated from.
    MALLOC_ARENA_MAX in the environment wins (glibc read it at start); a C library without
    mallopt (musl) is left as it is.
    """
    return _set_malloc(_M_ARENA_MAX, count, _ARENA_ENVIRONMENT, "malloc arenas", f"limited to {count}",
                       str(count))
