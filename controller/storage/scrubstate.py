"""Where the footage scrub stands, kept in the state directory so a restart resumes it.

A scrub walks the closed footage oldest first (the files' paths in order: the layout's date,
hour and segment names sort by time) and re-hashes each against its manifest. What a
restart needs is small: how far the scrub in progress got (the last path it checked; None
when none is in progress), when the next one is due (wall clock), and which files it has
already reported altered (each is alerted once, not once per process). The file is JSON,
written whole to a temporary name, fsynced and renamed over the old one: a power cut leaves
the old state or the new, never half of one. It is written once per scrub pass (a few
hundred MB of footage), not per file: the card is not worn for it.

A file that cannot be read or parsed is a fresh start (logged): the scrub's state is a
convenience, never a reason not to record.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

SCRUB_STATE_NAME = "scrub.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024
MAX_ALTERED_REMEMBERED = 1000


@dataclass
class ScrubState:
    """The scrub's progress: `position` (last path checked in the scrub in progress), when the
    next is due, and the files already reported altered."""

    position: str | None = None
    next_due: float | None = None  # UTC seconds
    altered: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ScrubState:
        """The state saved at `path`; a fresh state when there is none or it is unreadable."""
        try:
            with open(path, "rb") as file:
                data = json.loads(file.read(MAX_STATE_BYTES + 1)[:MAX_STATE_BYTES])
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            logger.warning("scrub state unreadable path={} error={}; the scrub starts afresh", path, err)
            return cls()
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            logger.warning("scrub state of another layout path={}; the scrub starts afresh", path)
            return cls()
        position, next_due, altered = data.get("position"), data.get("next_due"), data.get("altered")
        return cls(position if isinstance(position, str) else None,
                   float(next_due) if isinstance(next_due, (int, float)) else None,
                   [a for a in altered if isinstance(a, str)][-MAX_ALTERED_REMEMBERED:]
                   if isinstance(altered, list) else [])

    def save(self, path: Path) -> bool:
        """Write the state to `path` durably; False (logged) when it cannot be written."""
        text = json.dumps({"version": STATE_VERSION, "position": self.position, "next_due": self.next_due,
                           "altered": self.altered[-MAX_ALTERED_REMEMBERED:]}, indent=1)
        temp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            with contextlib.suppress(OSError):
                dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as err:
            logger.warning("scrub state not saved path={} error={}; a restart scrubs from the start",
                           path, err)
            return False
        return True


def scrub_order(path: Path) -> str:
    """The scrub's order of files: by path, which is by time within a root (see the module)."""
    return str(path)
