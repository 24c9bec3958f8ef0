"""Writes deploy/vigil.example.yaml: every key at its default (describe_defaults), set up for a Pi.

Run `python deploy/example_config.py` after adding or changing a config key; a test
(tests/e2e/test_systemd.py) fails while the example is stale. install.sh copies the example
to /boot/firmware/vigil.yaml when a unit has no config yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "vigil.example.yaml"

HEADER = """\
# vigil on a Raspberry Pi: this file lives on the SD card's boot partition
# (/boot/firmware/vigil.yaml), so it can be edited from any computer. After editing, check it
# with `/opt/vigil/venv/bin/vigil check-config`, then `sudo systemctl restart vigil` (or hold
# the reset button, which reloads it). If you change recording.root or
# recording.fallback_roots, run deploy/install.sh again: the service may only write there.
#
# GPIO wiring (BCM numbers; the physical header pin in brackets), for example:
#   button: GPIO17 [pin 11] to GND [pin 9]      -> gpio.reset_button: 17
#   LED:    GPIO27 [pin 13] -> 330 ohm -> LED -> GND [pin 14]   -> gpio.status_led: 27
#
"""

# (section, key) -> (value as YAML, a comment for the Pi placed above the key)
PI_SETTINGS: dict[tuple[str, str], tuple[str, str]] = {
    ("recording", "root"): (
        "/var/lib/vigil/recordings",
        "On the Pi: the service's own state directory, created by install.sh.",
    ),
    ("gpio", "reset_button"): ("null", "On the Pi, for example: 17"),
    ("gpio", "status_led"): ("null", "On the Pi, for example: 27"),
}


def example_text() -> str:
    """The example config: the defaults as describe_defaults() writes them, with PI_SETTINGS."""
    sys.path.insert(0, str(REPO))
    from controller.config import describe_defaults

    lines: list[str] = []
    section = ""
    for line in describe_defaults().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.rstrip(":")
        key = line.strip().split(":", 1)[0] if line.startswith("  ") and not line.startswith("  #") else ""
        setting = PI_SETTINGS.get((section, key))
        if setting is not None:
            value, comment = setting
            lines.append(f"  # {comment}")
            line = f"  {key}: {value}"
        lines.append(line)
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    EXAMPLE.write_text(example_text(), encoding="utf-8")
    print(f"wrote {EXAMPLE}")
