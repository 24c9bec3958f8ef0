"""Under systemd every line vigil logs, tracebacks included, starts with its journald priority."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

PREFIXED = re.compile(r"<[0-7]>")

LOGGING_PROGRAM = r'''
import logging
from loguru import logger
from controller.logs import setup_logging

setup_logging("DEBUG")
logger.info("segment closed path={}", "a.mp4")
logger.warning("first line\nsecond line of the same warning")
try:
    {}["camera"]
except KeyError:
    logger.exception("the camera failed:\nwhile opening /dev/video0")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("some.library").error("a library's error", exc_info=True)
'''


def run_logging(**env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOGGING_PROGRAM], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_every_line_carries_its_priority_under_journald() -> None:
    lines = run_logging(JOURNAL_STREAM="8:12345")
    assert lines[0] == "<6>INFO: __main__: segment closed path=a.mp4"
    assert lines[1:3] == ["<4>WARNING: __main__: first line", "<4>second line of the same warning"]
    error = [line for line in lines if line.startswith("<3>")]
    # The message's two lines, then the whole traceback, each an error line of its own.
    assert error[:3] == ["<3>ERROR: __main__: the camera failed:", "<3>while opening /dev/video0",
                         "<3>Traceback (most recent call last):"]
    assert "<3>KeyError: 'camera'" in error
    assert "<3>ZeroDivisionError: division by zero" in error
    assert [line for line in lines if not PREFIXED.match(line)] == []


def test_on_a_terminal_lines_carry_timestamps_and_no_prefix() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run([sys.executable, "-c", LOGGING_PROGRAM], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)
    lines = done.stdout.splitlines()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\S* INFO     __main__: segment closed", lines[0])
    assert not any(PREFIXED.match(line) for line in lines)
