"""A real S3 server for the upload tests (moto's server mode on a loopback port) and a TCP proxy
in front of it that counts part uploads, can refuse connections (a server that is down) and
can flip one byte of a request body (a part the server stores corrupted).

The proxy is our own: it parses just enough HTTP/1.1 (request line, headers, Content-Length)
to find a request's body; see Python's http.client for the framing it mirrors.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", "1024")  # tiny parts in tests (moto reads this at import)

BUCKET = "vigil-test"
ACCESS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in this process on 127.0.0.1; yields its URL with the test bucket made."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client(url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def client(url: str) -> object:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@dataclass
class Proxy:
    """Forwards 127.0.0.1:port to the server; one request per connection is inspected."""

    upstream: tuple[str, int]
    port: int = 0
    parts_received: int = 0
    puts_received: int = 0
    body_bytes: int = 0
    flip_next_part: bool = False
    flipped: int = 0
    is_down: bool = False
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(32)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self.is_down:
                conn.close()  # connection cut at once, as a dead endpoint does
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        try:
            reader = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                request_line = head.split(b"\r\n", 1)[0].decode()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if b"expect: 100-continue" in head.lower() and length:
                    # botocore waits up to a second for this before it sends a PUT body: say it
                    # at once, as a server does, or every part costs that second
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = reader.read(length) if length else b""
                # the body is read here: the server gets the request without the Expect
                head = b"\r\n".join(
                    line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:")
                )
                if self.is_down:
                    return
                is_part = request_line.startswith("PUT ") and "partNumber=" in request_line
                with self._lock:
                    if request_line.startswith("PUT "):
                        self.puts_received += 1
                        self.body_bytes += len(body)
                    if is_part:
                        self.parts_received += 1
                        if self.flip_next_part and body:
                            body = bytes([body[0] ^ 0xFF]) + body[1:]
                            self.flip_next_part = False
                            self.flipped += 1
                up.sendall(head + body)
                self._relay_response(up, conn, is_head=request_line.startswith("HEAD "))
        except OSError:
            return
        finally:
            up.close()
            conn.close()

    @staticmethod
    def _relay_response(up: socket.socket, conn: socket.socket, *, is_head: bool) -> None:
        reader = up.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                raise OSError("upstream closed")
            head += line
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        status_head = head.split(b"\r\n", 1)[0]
        if chunked:
            body = b""
            while True:
                size_line = reader.readline()
                size = int(size_line.strip().split(b";")[0], 16)
                chunk = reader.read(size + 2)
                body += size_line + chunk
                if size == 0:
                    break
        elif is_head or b" 204 " in status_head or b" 304 " in status_head:
            body = b""
        else:
            body = reader.read(length) if length else b""
        conn.sendall(head + body)
