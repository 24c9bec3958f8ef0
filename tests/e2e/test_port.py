"""The network port cannot stop recording (issue 19, class 1).

A real `vigil run` records the synthetic camera with its descriptor limit set low
(RLIMIT_NOFILE 256), and hostile clients on 127.0.0.1 do what a hostile network does: more
idle connections than the process has descriptors, half-sent request heads, a Range of
thousands of digits, a FIFO or a directory named like footage. Recording must go on with
every frame (decoded from the footage), the API must answer again afterwards, and the
daemon must hold no descriptor a client left behind. Every connection is bounded in count
and every wait by a deadline or a socket timeout; no test asserts how long anything took.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.core.controller import Controller
from controller.surfaces.api import ApiServer, ServerLimits, create_app
from hw.factory import Hardware
from tests.helpers import gaps, recorded_numbers, segments
from tests.specs import camera_spec, recording_spec

DAEMON_NOFILE = 256
FLOOD_CONNECTIONS = 600  # open at once: more than the daemon has descriptors
FLOOD_TOTAL = 3000  # connections made in all: a closed one is replaced, as a reconnecting client would
FLOOD_DEADLINE_SECONDS = 90.0
WAIT_SECONDS = 30.0
SOCKET_TIMEOUT_SECONDS = 60.0  # no single request may hang a test for longer than this
HUGE = "9" * 5000


def _own_descriptor_room(needed: int) -> None:
    """Raise this test process's soft RLIMIT_NOFILE so it can hold `needed` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this machine's hard RLIMIT_NOFILE is {hard}; the flood needs {needed} sockets")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Daemon:
    """`vigil run` in a subprocess with a low descriptor limit, its API on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SOCKET_TIMEOUT_SECONDS)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def health(self) -> int | None:
        try:
            return self.get("/health")[0]
        except OSError:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)
            raise AssertionError("vigil did not stop on SIGTERM") from None


def _limit_descriptors() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))


def start_daemon(base: Path) -> Daemon:
    root = base / "recordings"
    port = _free_port()
    config = base / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 30\n"
        f"recording:\n  root: {root}\n  segment_seconds: 2\n  fragment_seconds: 0.5\n  merge: 'off'\n"
        "storage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  token_file: {base / 'no-token'}\n"
        "  public_footage: true\n"  # these tests are about connections, not the viewer token
        "gpio:\n  enabled: false\n"
    )
    log = base / "vigil.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limit_descriptors,
        )
    daemon = Daemon(process, port, root, log)
    try:
        wait_until(lambda: not daemon.alive() or daemon.health() == 200, "vigil to record")
        assert daemon.alive(), daemon.output()
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_daemon(tmp_path_factory.mktemp("port"))
    try:
        yield running
    finally:
        running.stop()


def closed_segment(daemon: Daemon) -> str:
    """The /recordings/ path of a closed segment, once there is one."""
    found: list[str] = []

    def listed() -> bool:
        status, _, body = daemon.get("/recordings")
        assert status == 200
        found.extend(s["path"] for h in json.loads(body)["hours"] for s in h["segments"])
        return bool(found)

    wait_until(listed, "a closed segment")
    return found[0]


# --- more connections than descriptors ---------------------------------------------------------


class Flood:
    """Up to FLOOD_CONNECTIONS idle connections to `port` at once, replaced as the server
    closes them, FLOOD_TOTAL in all; runs on its own thread until `stop()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: Counter[str] = Counter()  # status lines the server sent before closing
        self.made = 0
        self.closed_by_server = 0
        self.peak_open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-flood", daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive()

    def _connect(self, selector: selectors.BaseSelector) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        selector.register(sock, selectors.EVENT_READ)
        self.made += 1

    def _run(self) -> None:
        deadline = time.monotonic() + FLOOD_DEADLINE_SECONDS
        with selectors.DefaultSelector() as selector:
            try:
                while self.made < FLOOD_CONNECTIONS:
                    self._connect(selector)
                self.peak_open = len(selector.get_map())
                while not self._stop.is_set() and time.monotonic() < deadline:
                    for key, _ in selector.select(0.1):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        try:
                            data = sock.recv(4096)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        self.closed_by_server += 1
                        if data:
                            self.answers[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
                        selector.unregister(sock)
                        sock.close()
                        if self.made < FLOOD_TOTAL:
                            self._connect(selector)
            finally:
                for key in list(selector.get_map().values()):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]


def test_more_connections_than_descriptors_do_not_stop_recording(tmp_path: Path) -> None:
    _own_descriptor_room(FLOOD_CONNECTIONS + 200)
    daemon = start_daemon(tmp_path)
    try:
        wait_until(lambda: len(segments(daemon.root)) >= 1, "a first closed segment")
        baseline_fds = daemon.fds()
        fds_seen: list[int] = []
        with Flood(daemon.port) as flood:
            before = len(segments(daemon.root))

            def recorded_on() -> bool:
                assert daemon.alive(), daemon.output()[-4000:]
                fds_seen.append(daemon.fds())
                return len(segments(daemon.root)) >= before + 3

            # Recording goes on under the flood: three more segments close.
            wait_until(recorded_on, "segments to close during the flood", FLOOD_DEADLINE_SECONDS)
            # An operator gets through: the server drops the oldest idle connection for a new one.
            wait_until(lambda: daemon.health() == 200, "/health during the flood")
        assert flood.peak_open == FLOOD_CONNECTIONS
        wait_until(lambda: daemon.health() == 200, "/health after the flood")
        assert daemon.alive()
        # The clients' descriptors are all given back (a segment file or two may be open).
        wait_until(lambda: daemon.fds() <= baseline_fds + 3, "the daemon's descriptors to return")
    finally:
        code = daemon.stop()
    output = daemon.output()
    assert code == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    # The API held no more than its limits allow (the recorder's own few files aside).
    allowed = baseline_fds + ServerLimits.for_descriptor_limit(DAEMON_NOFILE).max_descriptors + 8
    assert max(fds_seen) <= allowed, (max(fds_seen), allowed)
    assert not list(daemon.root.rglob("*.partial")), "a .partial was left behind"
    numbers = recorded_numbers(daemon.root)
    assert numbers[0] == 0
    assert gaps(numbers) == []
    # The server closed flood connections itself (dropped idle ones, refused or timed out),
    # rather than leaving them all queued in the kernel.
    assert flood.closed_by_server > 0
    assert set(flood.answers) <= {"HTTP/1.1 503 Service Unavailable", "HTTP/1.1 408 Request Timeout"}, (
        flood.answers)


# --- slow clients ------------------------------------------------------------------------------


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def _read_one_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, from a connection kept open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, received
        body += chunk
    return head + b"\r\n\r\n" + body


def test_slow_clients_are_timed_out(daemon: Daemon) -> None:
    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=SOCKET_TIMEOUT_SECONDS)
        return sock

    silent = connect()
    partial = connect()
    partial.sendall(b"GET /health HTTP/1.1\r\nHost: vigil\r\n")
    keep_alive = connect()
    keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: vigil\r\n\r\n")
    first = _read_one_response(keep_alive)
    assert first.startswith(b"HTTP/1.1 200"), first
    keep_alive.sendall(b"GET /health HTTP/1.1\r\n")  # the next request, never finished
    trickle = connect()
    trickle.sendall(b"GET /health HTTP/1.1\r\nHost: vigil\r\nX-Slow: ")
    try:
        # One byte every half second: progress, but never a whole head. Bounded in count.
        trickle.setblocking(False)
        closed_by_server = False
        with selectors.DefaultSelector() as selector:
            selector.register(trickle, selectors.EVENT_READ)
            for _ in range(int(SOCKET_TIMEOUT_SECONDS * 2)):
                if selector.select(0.5):
                    closed_by_server = True
                    break
                try:
                    trickle.send(b"a")
                except OSError:
                    closed_by_server = True
                    break
        assert closed_by_server, "a client trickling a header was never timed out"
        trickle.settimeout(SOCKET_TIMEOUT_SECONDS)
        for sock in (silent, partial, keep_alive, trickle):
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer
    finally:
        for sock in (silent, partial, keep_alive, trickle):
            sock.close()
    assert daemon.health() == 200


# --- headers parsed with bounds -----------------------------------------------------------------


@pytest.mark.parametrize("header", [
    f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={HUGE}-{HUGE}",
    "bytes=99999999999999999999-", "bytes=9223372036854775808-",
])
def test_range_with_huge_numbers_is_416(daemon: Daemon, header: str) -> None:
    status, headers, _ = daemon.get(f"/recordings/{closed_segment(daemon)}", {"Range": header})
    assert status == 416
    assert headers["content-range"].startswith("bytes */")


def test_range_with_many_leading_zeros_is_still_a_position(daemon: Daemon) -> None:
    status, headers, body = daemon.get(f"/recordings/{closed_segment(daemon)}",
                                       {"Range": f"bytes={'0' * 5000}1-{'0' * 5000}4"})
    assert status == 206, body
    assert headers["content-range"].startswith("bytes 1-4/")
    assert len(body) == 4


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer " + "x" * 12000},
    {"Authorization": f"Bearer {HUGE}"},
    {"Authorization": "Basic " + "y" * 100},
    {"Authorization": "Bearer"},
])
def test_odd_authorization_headers_are_4xx(daemon: Daemon, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=SOCKET_TIMEOUT_SECONDS)
    try:
        conn.request("POST", "/actions/stop", headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    assert 400 <= status < 500
    assert daemon.health() == 200  # nothing was stopped


@pytest.mark.parametrize("raw", [
    b"Authorization: Bearer \xff\xfe\x80\r\n",
    b"If-Range: " + HUGE.encode() + b"\r\nRange: bytes=0-1\r\n",
    b"If-Range: \xff\xff\r\nRange: bytes=" + HUGE.encode() + b"-\r\n",
    b"X-Big: " + b"z" * 20000 + b"\r\n",  # a head over the bound (MAX_HEAD_BYTES)
])
def test_raw_header_bytes_never_give_a_server_error(daemon: Daemon, raw: bytes) -> None:
    path = f"/recordings/{closed_segment(daemon)}".encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n" + raw + b"\r\n")
        answer = _read_until_closed(sock)
    status = int(answer.split(b" ", 2)[1])
    assert status < 500, answer[:300]


# --- not-regular files named like footage ------------------------------------------------------


def test_directory_and_fifo_named_like_footage_are_404_without_leaking(daemon: Daemon) -> None:
    closed_segment(daemon)  # the root and a day exist
    day = next(p for p in daemon.root.iterdir() if p.is_dir())
    (daemon.root / "x.mp4").mkdir(exist_ok=True)
    fifo = daemon.root / "y.mp4"
    if not fifo.exists():
        os.mkfifo(fifo)
    merged_fifo = day / "00.mp4"  # where a merged hour would be
    if not merged_fifo.exists():
        os.mkfifo(merged_fifo)
    paths = ["/recordings/x.mp4", "/recordings/y.mp4", f"/recordings/{day.name}/00.mp4"]
    rounds = 30
    before = daemon.fds()
    for _ in range(rounds):
        for path in paths:
            status, _, body = daemon.get(path)
            assert status == 404, (path, body)
    # Many at once (more than the API's worker threads): none hangs, the API still answers.
    results: list[int] = []

    def fetch() -> None:
        results.append(daemon.get("/recordings/y.mp4")[0])

    threads = [threading.Thread(target=fetch) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SOCKET_TIMEOUT_SECONDS)
    assert results == [404] * 60
    status, _, body = daemon.get("/recordings")  # the listing skips them
    assert status == 200, body
    assert daemon.health() == 200
    # 150 requests: a leak of one descriptor each could not come back under before + 3.
    wait_until(lambda: daemon.fds() <= before + 3, f"descriptors back to {before} (+3)")


# --- a client that stops reading, and one that goes away mid-file (in-process server) ---------


ServerFactory = Callable[..., tuple[ApiServer, Path]]


BIG = "2026-01-01/00/20260101T000000Z.mp4"  # a segment name: only vigil's own names are served


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """An in-process API with short deadlines, serving a root with one large (sparse) file."""
    servers: list[ApiServer] = []

    def start(**limits: Any) -> tuple[ApiServer, Path]:
        root = tmp_path / "recordings"
        root.mkdir(exist_ok=True)
        (root / BIG).parent.mkdir(parents=True, exist_ok=True)
        with open(root / BIG, "wb") as big:
            big.truncate(64 * 1024 * 1024)  # 64 MiB to send, nothing on the disk
        camera = camera_spec(backend="synthetic", width=160, height=120, fps=15)
        controller = Controller(Hardware(camera, recording_spec(root=root)), autostart=False)
        chosen = ServerLimits(**{"request_seconds": 2.0, "send_stall_seconds": 1.0, **limits})
        server = ApiServer(create_app(controller, token_file=None, root_provider=lambda: root,
                                      public_footage=True),
                           "127.0.0.1", 0, limits=chosen)
        server.start()
        servers.append(server)
        return server, root

    yield start
    for server in servers:
        assert server.stop()


def _own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_that_stops_reading_is_dropped_and_the_file_closed(file_server: ServerFactory) -> None:
    server, _ = file_server()
    before = _own_fds()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(SOCKET_TIMEOUT_SECONDS)
    try:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /recordings/" + BIG.encode() + b" HTTP/1.1\r\nHost: vigil\r\n\r\n")
        wait_until(lambda: server.connections.send_stalled >= 1, "the stalled reader to be dropped")
    finally:
        sock.close()
    wait_until(lambda: _own_fds() <= before, "the served file's descriptor to be closed")


def test_clients_that_leave_mid_file_leave_no_descriptor(file_server: ServerFactory) -> None:
    server, _ = file_server()
    before = _own_fds()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
            sock.sendall(b"GET /recordings/" + BIG.encode()
                         + b" HTTP/1.1\r\nHost: vigil\r\nRange: bytes=5-\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 206")
    wait_until(lambda: _own_fds() <= before, f"descriptors back to {before}")


def test_at_the_connection_cap_the_oldest_idle_connection_makes_room(file_server: ServerFactory) -> None:
    server, _ = file_server(max_connections=8, request_seconds=30.0, drop_idle_after_seconds=0.0)
    idle: list[socket.socket] = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS))
        wait_until(lambda: server.connections.accepted >= 8, "the idle connections to be accepted")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SOCKET_TIMEOUT_SECONDS)
        try:
            conn.request("GET", "/recordings")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        assert server.connections.dropped_idle == 1
        assert _read_until_closed(idle[0]) == b""  # the oldest went
    finally:
        for sock in idle:
            sock.close()


def test_over_the_cap_with_nothing_idle_a_client_gets_503(file_server: ServerFactory) -> None:
    server, _ = file_server(max_connections=4, request_seconds=30.0)
    busy: list[socket.socket] = []
    try:
        for _ in range(4):
            # A request whose body never comes: in progress, so not idle and not dropped.
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS)
            sock.sendall(b"POST /actions/start HTTP/1.1\r\nHost: vigil\r\nContent-Length: 100\r\n\r\n")
            busy.append(sock)
        wait_until(lambda: server.connections.accepted >= 4 and not server.connections.waiting,
                   "four requests in progress")
        with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS) as extra:
            answer = _read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"too many connections" in answer
        assert server.connections.refused == 1
    finally:
        for sock in busy:
            sock.close()


def test_a_request_head_over_the_bound_is_431_in_one_piece_or_many(file_server: ServerFactory) -> None:
    # llhttp takes a head of any length: the API counts a head's bytes itself, whether they come
    # at once or trickle in (each piece well inside the request deadline).
    server, _ = file_server(max_head_bytes=4096, request_seconds=30.0)
    start = b"GET /recordings HTTP/1.1\r\nHost: vigil\r\n"
    for pieces, whole in ((1, True), (1, False), (8, False)):
        # Whole: the head ends (a blank line), all of it in one send; else it never ends.
        filler = b"X-Big: " + b"z" * 6000 + b"\r\n" + (b"\r\n" if whole else b"")
        with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
            step = len(filler) // pieces + 1
            try:
                if whole:
                    sock.sendall(start + filler)
                else:
                    sock.sendall(start)
                    for at in range(0, len(filler), step):
                        sock.sendall(filler[at:at + step])
            except OSError:
                pass  # closed by the server once it saw too much
            answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 431"), (pieces, whole, answer[:200])
        assert b"request head over 4096 bytes" in answer
    assert server.connections.head_too_large == 3
    # A head inside the bound, on a connection that already had a request, is answered.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SOCKET_TIMEOUT_SECONDS)
    try:
        for _ in range(2):
            conn.request("GET", "/recordings", headers={"X-Big": "z" * 3000})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    assert server.connections.head_too_large == 3


def test_a_431_reaches_a_client_that_goes_on_sending_after_it(file_server: ServerFactory) -> None:
    # Closed at once with the client's bytes still arriving, the socket answers them with a
    # reset, and a reset makes the client's kernel drop the 431 it had not read yet. The API
    # ends its side after the answer and reads what still comes for a moment before closing.
    server, _ = file_server(max_head_bytes=4096, request_seconds=30.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"GET /recordings HTTP/1.1\r\nHost: vigil\r\nX-Big: ")
        for _ in range(64):  # 256 KiB of a header that never ends, well past the bound
            sock.sendall(b"z" * 4096)
            time.sleep(0.002)
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert server.connections.head_too_large == 1
