"""Logging: loguru to stdout in a journald-friendly form, stdlib loggers routed into it."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from loguru import logger

# sd-daemon(3) priority prefixes: journald reads "<N>" off the start of each line of stdout
# and sets that line's priority. Each line is its own journal entry, so every line of a
# multi-line message or traceback carries the prefix, or `journalctl -p err` would show only
# the first line of an error.
JOURNAL_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4,
                    "ERROR": 3, "CRITICAL": 2}
DEFAULT_PRIORITY = 6  # a custom level journald does not know is logged as info
TERMINAL_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ!UTC} {level: <8} {name}: {message}"
JOURNAL_FORMAT = "{level}: {name}: {message}"


class JournalStream:
    """A loguru sink that writes each record with its priority prefix on every line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: Any) -> None:
        record = getattr(message, "record", None)
        level = record["level"].name if record is not None else "INFO"
        prefix = f"<{JOURNAL_PRIORITY.get(level, DEFAULT_PRIORITY)}>"
        lines = str(message).rstrip("\n").split("\n")
        self._stream.write("".join(f"{prefix}{line}\n" for line in lines))

    def flush(self) -> None:
        self._stream.flush()


class _InterceptHandler(logging.Handler):
    """Sends stdlib records (transitions, PyAV's libav logger) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(level: str = "INFO") -> None:
    """Route everything to stdout; under systemd (JOURNAL_STREAM set) drop our timestamps."""
    logger.remove()
    if os.environ.get("JOURNAL_STREAM"):
        logger.add(JournalStream(sys.stdout), level=level, format=JOURNAL_FORMAT, colorize=False,
                   backtrace=False, diagnose=False)
    else:
        logger.add(sys.stdout, level=level, format=TERMINAL_FORMAT, colorize=False,
                   backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    import av.logging

    av.logging.set_level(av.logging.WARNING)
