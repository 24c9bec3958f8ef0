"""A durablefs mount for a test: start the daemon, cut the power, unmount; never left stale."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[3]
MOUNT_TIMEOUT_SECONDS = 15.0
CONTROL_TIMEOUT_SECONDS = 30.0
UNMOUNT_TIMEOUT_SECONDS = 10.0
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes a space as \040


class DurableFSError(RuntimeError):
    """The daemon did not mount, answer or unmount; the message carries its log."""


def is_mounted(path: Path) -> bool:
    """Whether `path` is a mount point now (from /proc/self/mountinfo)."""
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        points = [_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), line.split()[4])
                  for line in f]
    return target in points


class DurableMount:
    """One run of the durablefs daemon on `mountpoint`, starting from `image` if given.

    `cut()` is the power cut: the filesystem freezes (every call fails with EIO from then
    on) and its durable state is saved to a directory, from which a new DurableMount
    starts: the remount after the power came back. `close()` unmounts, with bounded waits,
    and kills only its own daemon if it will not go.
    """

    def __init__(self, mountpoint: Path, workdir: Path, *, image: Path | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.workdir = Path(workdir)
        self.image = image
        self.control_path = self.workdir / "control.sock"
        self.log_path = self.workdir / "durablefs.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "mounted" if self._proc is not None and self._proc.poll() is None else "not running"
        return f"<DurableMount {self.mountpoint} {state}>"

    def __enter__(self) -> DurableMount:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_path.unlink(missing_ok=True)
        command = [sys.executable, "-m", "tests.fakes.durablefs", str(self.mountpoint),
                   "--control", str(self.control_path)]
        if self.image is not None:
            command += ["--image", str(self.image)]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + MOUNT_TIMEOUT_SECONDS
        while not (is_mounted(self.mountpoint) and self.control_path.exists()):
            if self._proc.poll() is not None:
                raise DurableFSError(f"durablefs exited with {self._proc.returncode} before mounting "
                                     f"{self.mountpoint}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.close()
                raise DurableFSError(f"durablefs did not mount {self.mountpoint} within "
                                     f"{MOUNT_TIMEOUT_SECONDS:.0f} s:\n{self.log()}")
            time.sleep(0.02)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CONTROL_TIMEOUT_SECONDS)
            s.connect(str(self.control_path))
            s.sendall((json.dumps(request) + "\n").encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        if not reply:
            raise DurableFSError(f"durablefs gave no answer to {request}:\n{self.log()}")
        answer: dict[str, Any] = json.loads(reply)
        if not answer.pop("ok"):
            raise DurableFSError(f"durablefs refused {request}: {answer['error']}")
        return answer

    def cut(self, image: Path, *, keep_unsynced: float = 0.0) -> dict[str, Any]:
        """Cut the power now; the durable state is saved under `image` (must not exist)."""
        if image.exists():
            raise FileExistsError(image)
        return self._ask({"op": "cut", "image": str(image), "keep_unsynced": keep_unsynced})

    def fail_reads(self, path: Path) -> None:
        """Every read of the file at `path` (under the mount point) fails with EIO from now on:
        a bad sector on the card. It is still listed and stat still works."""
        self._ask({"op": "fail_reads", "path": "/" + path.relative_to(self.mountpoint).as_posix()})

    def stats(self) -> dict[str, Any]:
        return self._ask({"op": "stats"})

    def close(self) -> None:
        """Unmount (idempotent): fusermount -u, then a lazy umount, then kill our daemon."""
        proc = self._proc
        if proc is None:
            return
        for command in (["fusermount3", "-u", str(self.mountpoint)],
                        ["umount", "-l", str(self.mountpoint)]):
            if not is_mounted(self.mountpoint):
                break
            try:
                subprocess.run(command, capture_output=True, timeout=UNMOUNT_TIMEOUT_SECONDS,
                               check=False)
            except (FileNotFoundError, subprocess.TimeoutExpired):
                continue
        try:
            proc.wait(UNMOUNT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(UNMOUNT_TIMEOUT_SECONDS)
            if is_mounted(self.mountpoint):  # a killed daemon leaves "transport not connected"
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                               timeout=UNMOUNT_TIMEOUT_SECONDS, check=False)
        self._proc = None
        if is_mounted(self.mountpoint):
            raise DurableFSError(f"{self.mountpoint} is still mounted after close:\n{self.log()}")
