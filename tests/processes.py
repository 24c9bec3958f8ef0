"""Helpers for tests that drive a real `vigil run` process and its HTTP API on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import segments


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_action(url: str, token: str, *, timeout: float = 30.0) -> int:
    """POST `url` with `token` as the bearer credential; the HTTP status it answered."""
    request = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def wait_for_segments(proc: subprocess.Popen[str], root: Path, count: int, timeout: float) -> None:
    """Until `count` segments are closed under `root`; fails if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while len(segments(root)) < count:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"no {count} closed segments within {timeout:g} s"
        time.sleep(0.1)


def stop_vigil(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """SIGTERM, as systemd stops the unit; the process's output. Killed if it does not end."""
    try:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=timeout)
        return output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
