"""A recording daemon that runs out of file descriptors for a while: `vigil run`'s controller,
plus a thread that takes every free descriptor of the process (as a flood of clients would)
for HOLD_SECONDS once the first segment has closed, keeps taking any that come free, then
gives them all back. Not a test module: run as a script; it prints what it did.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

from controller.config import load_config
from controller.daemon import build_controller
from states.guards import FD_LISTING

HOLD_SECONDS = 4.0
GRAB_EVERY_SECONDS = 0.02
WAIT_SECONDS = 20.0


def _grab(held: list[int]) -> None:
    """Open /dev/null until the process has no descriptor left."""
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):
                return
            raise


def main(config_path: str) -> int:
    controller = build_controller(load_config(config_path), config_path)
    root = controller.unit.hardware.recording.root

    def exhaust() -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not list(root.rglob("*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.05)
        held: list[int] = []
        _grab(held)
        print(f"exhausted after {len(held)} descriptors", flush=True)
        until = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < until:
            _grab(held)
            time.sleep(GRAB_EVERY_SECONDS)
        for fd in held:
            os.close(fd)
        print("released", flush=True)
        captured = controller.snapshot.totals.frames_captured
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            snap = controller.snapshot
            if snap.state == "recording" and snap.totals.frames_captured > captured + 30:
                print("recording again", flush=True)
                break
            time.sleep(0.05)
        sampler = controller._health_sampler
        print(f"health read failures {sampler.read_failures}", flush=True)
        print(f"fd listing failures {FD_LISTING.failures}", flush=True)
        controller.request_shutdown()

    threading.Thread(target=exhaust, name="harness-exhaust", daemon=True).start()
    threading.current_thread().name = "vigil-controller"
    return controller.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
