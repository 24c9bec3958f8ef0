"""Regenerate the README's generated blocks: the state diagram and the config reference.

Run by `make docs`. Tests fail when the README and the code disagree, and say to run this.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from controller.config import reference_table
from states.machine import mermaid

README = Path(__file__).resolve().parent.parent / "README.md"
CONFIG_START = "<!-- config-reference:start -->\n"
CONFIG_END = "<!-- config-reference:end -->"


def render(text: str) -> str:
    text = re.sub(r"```mermaid\n.*?```", lambda _: f"```mermaid\n{mermaid()}```", text, count=1, flags=re.S)
    pattern = re.escape(CONFIG_START) + r".*?" + re.escape(CONFIG_END)
    return re.sub(pattern, lambda _: CONFIG_START + reference_table() + CONFIG_END, text, count=1,
                  flags=re.S)


def main() -> int:
    before = README.read_text()
    after = render(before)
    if after != before:
        README.write_text(after)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
