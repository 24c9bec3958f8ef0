"""Logging: loguru to stdout in a journald-friendly form, stdlib loggers routed into it."""

from __future__ import annotations

import logging
import os
import sys

from loguru import logger

# sd-daemon(3) priority prefixes: journald reads them off stdout and sets the level.
JOURNAL_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4,
                    "ERROR": 3, "CRITICAL": 2}
TERMINAL_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ!UTC} {level: <8} {name}: {message}"
JOURNAL_FORMAT = "<{extra[priority]}>{level}: {name}: {message}"


class _InterceptHandler(logging.Handler):
    """Sends stdlib records (transitions, PyAV's libav logger) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _add_priority(record: dict) -> None:  # type: ignore[type-arg]
    record["extra"]["priority"] = JOURNAL_PRIORITY.get(record["level"].name, 6)


def setup_logging(level: str = "INFO") -> None:
    """Route everything to stdout; under systemd (JOURNAL_STREAM set) drop our timestamps."""
    logger.remove()
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    logger.configure(patcher=_add_priority)  # type: ignore[arg-type]
    logger.add(
        sys.stdout,
        level=level,
        format=JOURNAL_FORMAT if under_journald else TERMINAL_FORMAT,
        colorize=False,
        backtrace=False,
        diagnose=False,
    )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    import av.logging

    av.logging.set_level(av.logging.WARNING)
