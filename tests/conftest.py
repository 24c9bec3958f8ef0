"""Fixtures shared by every suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def vigil_cmd() -> list[str]:
    """The command that runs the installed CLI with this interpreter."""
    return [sys.executable, "-m", "controller.cli"]
