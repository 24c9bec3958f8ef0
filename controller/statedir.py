"""The daemon's state directory: where the signing key, the scrub's progress and the history live.

systemd's `StateDirectory=vigil` makes /var/lib/vigil and passes it as $STATE_DIRECTORY (the
first of a colon-separated list); run by hand, it is ~/.local/state/vigil.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def state_directory(env: Mapping[str, str] | None = None) -> Path:
    """$STATE_DIRECTORY (its first entry), else ~/.local/state/vigil."""
    environ = os.environ if env is None else env
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    return Path(environ.get("HOME", "~")).expanduser() / ".local" / "state" / "vigil"
