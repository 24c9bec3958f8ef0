"""systemd service notifications (READY, WATCHDOG, STATUS, STOPPING) sent the way sd_notify(3) does.

The protocol, as systemd's sd_notify(3) man page describes it (section "Notes"): the service
manager puts a socket address in $NOTIFY_SOCKET; a service sends newline-separated
`VARIABLE=value` assignments as one datagram on an AF_UNIX SOCK_DGRAM socket to that address.
An address starting with "/" is a file-system socket, one starting with "@" a Linux
abstract-namespace socket (the "@" stands for the leading NUL byte). The kernel attaches the
sender's credentials, which is how systemd tells our main process (NotifyAccess=main) apart.
sd_watchdog_enabled(3) adds $WATCHDOG_USEC (the timeout, in microseconds) and $WATCHDOG_PID
(the only process expected to ping; unset means the main process); the man page recommends a
"WATCHDOG=1" every half of the timeout. Written by hand so vigil needs no libsystemd binding.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from controller.core.controller import Controller
    from controller.core.snapshot import StatusSnapshot

NOTIFY_SOCKET_VAR = "NOTIFY_SOCKET"
WATCHDOG_USEC_VAR = "WATCHDOG_USEC"
WATCHDOG_PID_VAR = "WATCHDOG_PID"
SEND_TIMEOUT_SECONDS = 1.0  # a full receive queue must not block the caller for ever
POLL_SECONDS = 0.1  # how often the watchdog thread looks at the controller
STATUS_EVERY_SECONDS = 10.0
JOIN_TIMEOUT_SECONDS = 2.0
# States that show the unit has got going (or is dealing with a fault): systemd may call it started.
SETTLED_STATES = frozenset({"recording", "recovering", "critical"})


def notify_address(value: str) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names, or None when it is not a unix socket address.

    A path is returned as given; an abstract name ("@name") as bytes with the leading NUL.
    Other forms (systemd 254's "vsock:CID:PORT", relative paths) are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def watchdog_timeout_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """systemd's watchdog timeout for process `pid`, in seconds; None when no pings are expected.

    Follows sd_watchdog_enabled(3): pings are expected when $WATCHDOG_USEC holds a positive
    number and $WATCHDOG_PID is unset or equal to `pid`.
    """
    try:
        usec = int(env.get(WATCHDOG_USEC_VAR, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    expected_pid = env.get(WATCHDOG_PID_VAR, "")
    if expected_pid:
        try:
            if int(expected_pid) != pid:
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def describe(snap: StatusSnapshot) -> str:
    """The one-line STATUS= text for a status snapshot: state, health, why idle."""
    parts = [snap.state]
    if snap.health_score is not None:
        parts.append(f"health {snap.health_score:.0f}")
    if snap.state == "idle" and snap.last_refusal is not None:
        parts.append(f"last refusal: {snap.last_refusal.reason}")
    return "; ".join(parts)


class NotifySocket:
    """Sends notification datagrams to the service manager; does nothing without $NOTIFY_SOCKET."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self.name = environ.get(NOTIFY_SOCKET_VAR, "")
        self.address = notify_address(self.name) if self.name else None
        if self.name and self.address is None:
            logger.warning("NOTIFY_SOCKET={!r} is not a unix socket path or @abstract name; "
                           "not sending systemd notifications", self.name)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    def __repr__(self) -> str:
        return f"<NotifySocket {self.name or 'off'}>"

    @property
    def is_enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `assignments` ("READY=1", "STATUS=...") as one datagram; True when it went out."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(SEND_TIMEOUT_SECONDS)
                self._sock.sendto(message, self.address)
            except OSError as err:
                if not self._failing:
                    logger.warning("systemd notification to {} failed: {}; will keep trying",
                                   self.name, err)
                self._failing = True
                return False
            if self._failing:
                logger.info("systemd notifications to {} work again", self.name)
                self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class ServiceNotifier:
    """Keeps systemd told how the controller is doing, from a thread named `vigil-watchdog`.

    - READY=1 once the unit has settled: recording (or handling a fault), or idle when the
      config does not autostart, or idle because the first start was refused (the unit is
      up and says why in STATUS; holding READY back would only get it killed at
      TimeoutStartSec and restarted into the same refusal).
    - WATCHDOG=1 every half of $WATCHDOG_USEC, but only while the controller loop's
      heartbeat is younger than that half: a wedged loop stops the pings, so systemd kills
      and restarts the process.
    - STATUS= with the state and health on every state change and every STATUS_EVERY_SECONDS.
    - STOPPING=1 when shutdown begins (`stopping()`) or at the latest on `close()`.

    Without $NOTIFY_SOCKET every method is a no-op and no thread is started.
    """

    def __init__(
        self, controller: Controller, *, env: Mapping[str, str] | None = None, pid: int | None = None
    ) -> None:
        environ = os.environ if env is None else env
        self.controller = controller
        self.socket = NotifySocket(environ)
        self.watchdog_seconds = watchdog_timeout_seconds(environ, os.getpid() if pid is None else pid)
        self.ping_seconds = self.watchdog_seconds / 2 if self.watchdog_seconds else None
        self.is_ready = False
        self.pings_sent = 0
        self._stop = threading.Event()
        self._stopping_sent = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"<ServiceNotifier {self.socket.name or 'off'} ready={self.is_ready} "
                f"ping_seconds={self.ping_seconds}>")

    def __enter__(self) -> ServiceNotifier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the `vigil-watchdog` thread (only when $NOTIFY_SOCKET is set)."""
        if not self.socket.is_enabled or self._thread is not None:
            return
        logger.info("systemd notifications on socket={} watchdog_ping_seconds={}",
                    self.socket.name, self.ping_seconds)
        self._thread = threading.Thread(target=self._run, name="vigil-watchdog", daemon=True)
        self._thread.start()

    def stopping(self) -> None:
        """Tell systemd the service is shutting down (sent once)."""
        if self._stopping_sent or not self.socket.is_enabled:
            return
        self._stopping_sent = True
        self.socket.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        """Send STOPPING=1 if not yet sent, end the thread and close the socket; idempotent."""
        self.stopping()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_SECONDS)
            self._thread = None
        self.socket.close()

    # -- the vigil-watchdog thread ---------------------------------------------------

    def _run(self) -> None:
        next_ping = time.monotonic()
        next_status = 0.0
        last_state = ""
        wedged = False
        while not self._stop.is_set():
            now = time.monotonic()
            snap = self.controller.snapshot
            state = snap.state
            if not self.is_ready:
                if self._is_settled(snap):
                    self.is_ready = True
                    last_state, next_status = state, now + STATUS_EVERY_SECONDS
                    self.socket.send("READY=1", f"STATUS={describe(snap)}")
                    logger.info("told systemd vigil is ready state={}", state)
            elif state != last_state or now >= next_status:
                last_state, next_status = state, now + STATUS_EVERY_SECONDS
                self.socket.send(f"STATUS={describe(snap)}")
            # The watchdog only runs once start-up is complete (systemd.service(5), WatchdogSec=).
            if self.is_ready and self.ping_seconds is not None and now >= next_ping:
                next_ping = now + self.ping_seconds
                wedged = self._ping_if_alive(now, wedged)
            self._stop.wait(POLL_SECONDS)

    def _ping_if_alive(self, now: float, wedged: bool) -> bool:
        """Ping when the controller loop's heartbeat is fresh; returns whether it is wedged."""
        assert self.ping_seconds is not None
        heartbeat = self.controller.snapshot.heartbeat
        silent = now - heartbeat if heartbeat is not None else float("inf")
        if silent > self.ping_seconds:
            if not wedged:
                logger.error("controller loop silent for {:.1f}s: withholding watchdog pings so "
                             "systemd restarts vigil", silent)
            return True
        if wedged:
            logger.warning("controller loop alive again after a stall; watchdog pings resume")
        if self.socket.send("WATCHDOG=1"):
            self.pings_sent += 1
        return False

    def _is_settled(self, snap: StatusSnapshot) -> bool:
        if snap.heartbeat is None:  # the loop has not taken an event yet
            return False
        if snap.state in SETTLED_STATES:
            return True
        if snap.state != "idle":
            return False
        if not snap.autostart:
            return True
        return snap.last_refusal is not None and snap.last_refusal.trigger == "start"
