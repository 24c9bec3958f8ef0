"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def vigil_cmd() -> list[str]:
    """The command that runs the installed CLI with this interpreter."""
    return [sys.executable, "-m", "controller.cli"]


@pytest.fixture(autouse=True, scope="session")
def _state_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The daemon's state directory (its signing key) inside the test's own temporary tree.

    Daemons started by the tests, in-process or as subprocesses (the environment is
    inherited), keep their key there, as systemd's StateDirectory= would give them one.
    """
    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("state"))
