"""The README's generated parts match the code (run `make docs` to regenerate them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from controller.config import reference_table

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_diagram_equals_vigil_diagram() -> None:
    blocks = re.findall(r"```mermaid\n(.*?)```", README, re.S)
    printed = subprocess.run([sys.executable, "-m", "controller.cli", "diagram"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert blocks, "README.md has no mermaid block"
    assert blocks[0] == printed, "README diagram is stale: run `make docs`"


def test_readme_config_reference_equals_the_config_models() -> None:
    match = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", README, re.S)
    assert match, "README.md has no config reference block"
    assert match.group(1) == reference_table(), "README config table is stale: run `make docs`"


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
