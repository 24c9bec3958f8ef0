"""The service manager's end of $NOTIFY_SOCKET, for tests of vigil's sd_notify messages.

systemd binds an AF_UNIX datagram socket and names it in $NOTIFY_SOCKET (a path, or "@name"
for the abstract namespace); each datagram is newline-separated VARIABLE=value assignments
(sd_notify(3)). This does the same and hands the assignments back as dicts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

Message = dict[str, str]


class ServiceManagerSocket:
    """systemd's end of $NOTIFY_SOCKET: a bound datagram socket whose messages are parsed."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float) -> list[Message]:
        """Every message up to and including the first that satisfies `predicate`."""
        seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is None:
                break
            seen.append(message)
            if predicate(message):
                return seen
        raise AssertionError(f"no matching notification within {timeout}s; got {seen}")

    def collect(self, seconds: float) -> list[Message]:
        """Every message that arrives in the next `seconds` (an observation window)."""
        seen: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                seen.append(message)
        return seen

    def close(self) -> None:
        self.sock.close()


def pings(messages: list[Message]) -> int:
    """How many of `messages` are watchdog pings."""
    return sum(1 for m in messages if m.get("WATCHDOG") == "1")
