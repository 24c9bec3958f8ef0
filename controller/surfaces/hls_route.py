"""The live view's two hot paths, `GET /live.m3u8` and `GET /hls/...`, answered below FastAPI.

Every live viewer reloads the playlist about twice a fragment and fetches each fragment
once; through FastAPI each of those requests costs routing, dependency injection (the
viewer credential), a worker-thread hop and a Response object: about 1.5 ms of a core,
which made 10 viewers cost 5 % of a core. `HlsFastPath` is an ASGI app wrapped around the
API that answers the common case of those two requests itself, with the same credential
check and the same bytes (hw.footage's refusals, the fragments' wall-clock tfdt):

- `/live.m3u8`: hls.LivePlaylist, reused until the footage it lists changes (checked with a
  few stats on the event loop; made again on a worker thread);
- `/hls/PATH` with no range or one plain `bytes=A-B` range inside the servable part of the
  file and at most WHOLE_BODY_BYTES long (what a player asks for: an init section or a
  fragment): read on a worker thread and sent in one body. A range's bytes never change
  once they are there (whole fragments, fsynced; the URI names the segment by its closed
  name, so the rename at close keeps them), so the latest are kept (at most
  CACHED_BODY_BYTES, each for at most CACHED_BODY_SECONDS): the other viewers asking for the
  same new fragment get it from memory, on the event loop.

Anything else (another method, no or a wrong credential, a range it does not take, a file
it cannot serve, an error) goes on to the FastAPI app unchanged, which answers as it always
has: 401/403 with the reason, 404, 416, 503. So the fast path never has an answer of its
own to get wrong, only a shortcut for requests that would have been a 200 or 206.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread

from controller.surfaces.hls import CONTENT_TYPE, HLS_PREFIX, LivePlaylist, media_file
from controller.surfaces.recordings import WHOLE_BODY_BYTES, _patched, open_regular

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]



@dataclass(frozen=True, slots=True)
class SignedMedia:
    """A `/hls/` request's path (below /hls/) and the signature its query carries, if any."""

    path: str
    exp: str | None
    sig: str | None

    @property
    def is_signed(self) -> bool:
        return self.exp is not None or self.sig is not None


# (Authorization header, Cookie header, the media request's signature) -> a viewer?
Admits = Callable[[str | None, str | None, SignedMedia | None], bool]

LIVE_PATH = "/live.m3u8"
MEDIA_PREFIX = "/" + HLS_PREFIX
_PLAIN_RANGE = re.compile(r"bytes=(\d{1,18})-(\d{1,18})")
CACHED_BODY_BYTES = 4 * 1024 * 1024
CACHED_BODY_SECONDS = 30.0
Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]  # status, body, headers


class _Bodies:
    """The latest ranges sent, by (root, path, range): bounded in bytes and in age."""

    def __init__(self, capacity: int = CACHED_BODY_BYTES, seconds: float = CACHED_BODY_SECONDS) -> None:
        self._items: OrderedDict[tuple[str, str, str], tuple[float, Answer]] = OrderedDict()
        self._bytes = 0
        self._capacity = capacity
        self._seconds = seconds
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> Answer | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > self._seconds:
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: tuple[str, str, str], answer: Answer) -> None:
        size = len(answer[1])
        if size > self._capacity:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (time.monotonic(), answer)
            self._bytes += size
            while self._bytes > self._capacity:
                self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[str, str, str]) -> None:
        _, answer = self._items.pop(key)
        self._bytes -= len(answer[1])


class _NotMine(Exception):
    """This request is left to the FastAPI app."""


class HlsFastPath:
    """An ASGI app: GET /live.m3u8 and GET /hls/... for an admitted viewer, answered here;
    everything else handed to `app` (see the module)."""

    def __init__(self, app: AsgiApp, *, root: Callable[[], Path], playlist: LivePlaylist,
                 admits: Admits, present: Callable[[str], str] = lambda text: text) -> None:
        self.app = app
        self.playlist = playlist
        self._root = root
        self._admits = admits
        self._present = present  # the live playlist as a viewer gets it (its URIs signed)
        self._bodies = _Bodies()
        self.answered = 0  # requests answered here, not by `app`: for tests and the bench

    def __repr__(self) -> str:
        return f"<HlsFastPath answered={self.answered} {self.playlist!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            try:
                if path == LIVE_PATH:
                    await self._live(scope, send)
                    return
                if path.startswith(MEDIA_PREFIX):
                    await self._media(scope, path[len(MEDIA_PREFIX):], send)
                    return
            except _NotMine:
                pass
        await self.app(scope, receive, send)

    def _check_viewer(self, headers: dict[bytes, bytes], media: SignedMedia | None = None) -> None:
        authorization = headers.get(b"authorization")
        cookie = headers.get(b"cookie")
        if not self._admits(authorization.decode("latin-1") if authorization is not None else None,
                            cookie.decode("latin-1") if cookie is not None else None, media):
            raise _NotMine

    async def _live(self, scope: Scope, send: Send) -> None:
        self._check_viewer(_headers(scope))
        root = self._root()
        hit, text = self.playlist.cached(root)
        if not hit:
            text = await anyio.to_thread.run_sync(self.playlist.text, root)
        if text is None:
            raise _NotMine  # nothing recorded yet: the API's 404 says so
        text = self._present(text)
        self.answered += 1  # before the answer: whoever reads the count after it sees it
        await _respond(send, 200, text.encode(), [
            (b"content-type", CONTENT_TYPE.encode()), (b"cache-control", b"no-cache")])

    async def _media(self, scope: Scope, relative: str, send: Send) -> None:
        headers = _headers(scope)
        self._check_viewer(headers, _signed_media(relative, scope.get("query_string", b"")))
        if b"if-range" in headers or b"if-none-match" in headers:
            raise _NotMine  # conditional requests: the API's route answers them
        wanted = headers.get(b"range")
        root = self._root()
        key = (str(root), relative, wanted.decode("latin-1")) if wanted is not None else None
        answer = self._bodies.get(key) if key is not None else None
        if answer is None:
            answer = await anyio.to_thread.run_sync(
                _read_media, root, relative, key[2] if key is not None else None)
            if key is not None:
                self._bodies.put(key, answer)  # a range of whole fragments: it never changes
        status, body, extra = answer
        self.answered += 1
        await _respond(send, status, body, [(b"content-type", b"video/mp4"), *extra])


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _signed_media(relative: str, query: bytes) -> SignedMedia:
    """`relative` and the exp and sig of `query`, read as the API's route reads them (the
    last of a repeated name)."""
    if not query:
        return SignedMedia(relative, None, None)
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    return SignedMedia(relative, params.get("exp"), params.get("sig"))


def _read_media(root: Path, relative: str, wanted: str | None) -> Answer:
    """(status, body, headers) of the fragment or init section asked for; _NotMine for any
    request the API answers otherwise (a refusal, a range past the end, a long body)."""
    found = media_file(root, relative)
    if found is None:
        raise _NotMine
    try:
        fd, info = open_regular(found.path)
    except Exception as err:  # the API's HTTPException: 404 or 503, answered by the API
        raise _NotMine from err
    try:
        size = info.st_size if found.limit is None else min(info.st_size, found.limit)
        if wanted is None:
            first, last, status = 0, size - 1, 200
        else:
            match = _PLAIN_RANGE.fullmatch(wanted.strip())
            if match is None:
                raise _NotMine
            first, last, status = int(match[1]), int(match[2]), 206
            if last < first or last >= size:
                raise _NotMine
        length = last - first + 1
        if length <= 0 or length > WHOLE_BODY_BYTES:
            raise _NotMine
        body = os.pread(fd, length, first)
    except OSError as err:
        raise _NotMine from err
    finally:
        os.close(fd)
    if len(body) != length:
        raise _NotMine  # the file shrank meanwhile: the API says how
    if found.patches:
        body = _patched(body, first, found.patches)
    etag = f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{size:x}"'
    headers = [(b"accept-ranges", b"bytes"), (b"etag", etag.encode()),
               (b"last-modified", formatdate(info.st_mtime, usegmt=True).encode())]
    if status == 206:
        headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
    return status, body, headers


async def _respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
