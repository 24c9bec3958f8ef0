"""A real mosquitto (Debian's package) on a loopback port, and a client that watches it.

The broker runs as a child process with a config written for the test: anonymous or with a
password file made by mosquitto_passwd, plain or TLS with a CA and server certificate that
openssl makes on the spot. `stop()` and `start()` take it away and bring it back on the same
port, as a broker restart does. `Watcher` is a paho client subscribed to `#` that records
every message and lets a test wait, with a deadline, for the one it expects.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
READY_SECONDS = 15.0


def find_tool(name: str) -> str:
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed on this machine (tools/system-deps.sh test installs "
                    "Debian's mosquitto package)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    certfile: Path
    keyfile: Path


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA certificate and its key, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def make_server_tls(directory: Path) -> Tls:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost."""
    ca_cert, ca_key = make_ca(directory, "test-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert)],
                   check=True, capture_output=True)
    return Tls(ca_cert, cert, key)


class Broker:
    """mosquitto on 127.0.0.1:`port`, configured for one test."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None,
                 tls: Tls | None = None, persistent: bool = False) -> None:
        self.binary = find_tool("mosquitto")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.users = users
        self.log = directory / "mosquitto.log"
        # persistent: sessions and their queued messages survive a stop (SIGTERM) and start.
        persistence = (["persistence true", f"persistence_location {directory}/"] if persistent
                       else ["persistence false"])
        lines = [f"listener {self.port} 127.0.0.1", *persistence, "log_dest stdout",
                 "log_type all", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot read tmp_path
        if users:
            passwd = directory / "passwd"
            tool = find_tool("mosquitto_passwd")
            for index, (user, password) in enumerate(users.items()):
                flags = ["-c"] if index == 0 else []
                subprocess.run([tool, *flags, "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls.ca_file}", f"certfile {tls.certfile}", f"keyfile {tls.keyfile}"]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mosquitto exited: {self.log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float  # monotonic


class Watcher:
    """A client subscribed to `#` that keeps every message it gets."""

    def __init__(self, broker: Broker, *, user: tuple[str, str] | None = None, subscribe: str = "#",
                 session: str | None = None) -> None:
        """`session` names a persistent session: the broker keeps QoS 1 messages for it while
        the watcher is away (with a persistent broker, across the broker's restart too)."""
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._connected = threading.Event()
        client_id = session or f"test-watcher-{id(self)}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=session is None)
        if user is not None:
            self.client.username_pw_set(*user)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca_file))
        # Back after a broker restart within a second or two: paho's default backoff doubles
        # up to 120 s, and a watcher that was away while the broker was down longer than its
        # waits (a loaded machine) came back after the test had stopped waiting for it.
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = lambda client, *_: client.subscribe(subscribe, qos=1)
        self.client.on_subscribe = lambda *_: self._connected.set()  # subscribed: nothing missed
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(10), "the watcher could not connect"

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Message(message.topic, bytes(message.payload), bool(message.retain),
                                         time.monotonic()))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float, *,
                 since: int = 0) -> Message | None:
        """The first message from index `since` on that satisfies `predicate`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages[since:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def on(self, topic: str, timeout: float, *, payload: bytes | None = None,
           since: int = 0) -> Message | None:
        return self.wait_for(lambda m: m.topic == topic and (payload is None or m.payload == payload),
                             timeout, since=since)

    def latest(self) -> dict[str, Message]:
        """The newest message on each topic."""
        with self._changed:
            return {m.topic: m for m in self.messages}

    def mark(self) -> int:
        with self._changed:
            return len(self.messages)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
