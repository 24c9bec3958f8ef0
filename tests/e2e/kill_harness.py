"""A recording daemon for the kill -9 test: `vigil run`'s controller, plus a progress line.

It prints, every few milliseconds, how many frames the camera has delivered and how many the
writer has muxed (from the status snapshot), so the test knows what existed and what the
recorder had taken in when it sent SIGKILL. Not a test module: run as a script.
"""

from __future__ import annotations

import sys
import threading
import time

from controller.config import load_config
from controller.daemon import build_controller

PRINT_EVERY_SECONDS = 0.005


def main(config_path: str) -> int:
    controller = build_controller(load_config(config_path), config_path)

    def report() -> None:
        while True:
            totals = controller.snapshot.totals
            sys.stdout.write(f"captured {totals.frames_captured} recorded {totals.frames_recorded} "
                             f"dropped {totals.frames_dropped}\n")
            sys.stdout.flush()
            time.sleep(PRINT_EVERY_SECONDS)

    threading.Thread(target=report, name="harness-report", daemon=True).start()
    threading.current_thread().name = "vigil-controller"
    return controller.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
