"""The allocator's side of the daemon's memory: freed frame buffers go back to the system.

glibc serves an allocation from mmap only above a threshold that it raises, up to 32 MiB,
each time an mmapped block is freed. A video daemon frees frame-sized blocks (a 720p RGB
frame is 2.7 MB) all the time, so after the first few the threshold sits above a frame and
every later frame comes from the heap arenas, which keep the memory once it is freed, one
arena per thread that touched it. Measured (bench/api_memory.py, 1280x720): RSS from 120 MB
to 325 MB after five bursts of 600 API requests, still 324 MB at rest; with the threshold
pinned at 1 MiB, 109 MB before and 125 MB after each burst. Pinning it (mallopt
M_MMAP_THRESHOLD, which also turns the raising off) keeps frames on mmap, returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from loguru import logger

MMAP_THRESHOLD_BYTES = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_"  # glibc's own tunable; when set, it is left alone


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve blocks of `threshold` bytes and more from mmap, for good; False where it cannot.

    Logged either way once at start-up; a C library without mallopt (musl) is left as it is.
    """
    if _ENVIRONMENT in os.environ:
        logger.info("malloc mmap threshold left to {}={}", _ENVIRONMENT, os.environ[_ENVIRONMENT])
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("malloc mmap threshold unchanged: no mallopt in the C library ({})", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        logger.info("malloc mmap threshold unchanged: mallopt refused {} bytes", threshold)
        return False
    logger.debug("malloc mmap threshold pinned at {} bytes", threshold)
    return True
