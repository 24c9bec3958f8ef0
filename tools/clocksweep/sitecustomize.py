"""Clock sweep, for tests only (never imported by vigil): shift `time.time` by VIGIL_SWEEP_OFFSET.

Put this folder first on PYTHONPATH and every Python process of a test run (pytest's workers,
and the `vigil run` children they start, which inherit the environment) reads a wall clock
VIGIL_SWEEP_OFFSET seconds off. sweep_plugin.py sets the offset so that each test (or each
module: SWEEP_PER=module) starts SWEEP_LEAD seconds (default 6) before a UTC midnight: a test
that assumes its footage stays in one clock hour or one day fails here, not in CI at 03:00.

Only time.time and time.time_ns move; datetime.now, file times and Chromium's clock do not,
so a test comparing those with footage times fails here without a bug (the web page tests do).
"""

import os
import time

_real_time, _real_time_ns = time.time, time.time_ns


def _offset() -> float:
    return float(os.environ.get("VIGIL_SWEEP_OFFSET", "0") or 0)


def _time() -> float:
    return _real_time() + _offset()


def _time_ns() -> int:
    return _real_time_ns() + int(_offset() * 1e9)


time.time = _time
time.time_ns = _time_ns
