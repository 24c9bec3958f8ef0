"""Headless Chromium driven over the DevTools protocol, for the web page's tests.

Debian's `chromium` (tools/system-deps.sh installs it) is started with a fresh profile and
the flags that keep it off the network; one page target is attached over a websocket
(websocket-client). The client keeps every console message, uncaught exception and network
request the page made, so a test can assert there were none it did not expect.

The protocol is the one documented at chromedevtools.github.io/devtools-protocol (domains
Page, Runtime, Network, Log, Input, Fetch, Browser, Emulation); nothing here is a fake.
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket

CHROMIUM = "/usr/bin/chromium"
START_SECONDS = 30.0
CALL_SECONDS = 30.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
         "--remote-allow-origins=*")


def chromium_missing() -> str | None:
    """Why Chromium cannot run here (for a skip that names what is missing), or None."""
    if shutil.which(CHROMIUM) is None and shutil.which("chromium") is None:
        return "Debian's chromium is not installed (tools/system-deps.sh test installs it)"
    return None


class BrowserError(AssertionError):
    """Chromium did not start, or a DevTools call failed (the message says which and why)."""


class Browser:
    """One headless Chromium with one page, driven over DevTools. A context manager."""

    def __init__(self, profile: Path, downloads: Path) -> None:
        self.profile = profile
        self.downloads = downloads
        self.console: list[str] = []  # "level: text" of every console message and log entry
        self.exceptions: list[str] = []  # uncaught exceptions in page scripts
        self.requests: list[str] = []  # the URL of every request the page sent
        self.downloaded: list[dict[str, Any]] = []  # Browser.downloadProgress events, completed
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.proc = subprocess.Popen(
            [shutil.which("chromium") or CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        endpoint = self._devtools_port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/json/list",
                                                    timeout=START_SECONDS).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=None,
                                              suppress_origin=True, enable_multithread=True)
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads),
                  eventsEnabled=True)

    def _devtools_port(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_SECONDS
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "DevTools listening on ws://" in line:
                threading.Thread(target=self._drain_stderr, daemon=True).start()
                return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.proc.kill()
        raise BrowserError(f"chromium printed no DevTools address: {''.join(seen)[-2000:]}")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def _read(self) -> None:
        while True:
            try:
                message = json.loads(self.ws.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                return
            if "id" in message:
                waiting = self._pending.pop(message["id"], None)
                if waiting is not None:
                    waiting.put(message)
                continue
            self._event(message["method"], message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        with self._changed:
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                self.console.append(f"{params['type']}: {text}")
            elif method == "Log.entryAdded":
                entry = params["entry"]
                self.console.append(f"{entry['level']}: {entry.get('url', '')} {entry['text']}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description", details["text"]))
            elif method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])
            elif method == "Browser.downloadProgress" and params["state"] == "completed":
                self.downloaded.append(params)
            self._changed.notify_all()
        handler = self.handlers.get(method)
        if handler is not None:
            handler(params)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """The result of one DevTools command; BrowserError with the protocol's message if it failed."""
        ident = next(self._ids)
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        self._pending[ident] = answer
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        try:
            message = answer.get(timeout=CALL_SECONDS)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer within {CALL_SECONDS:g} s") from None
        if "error" in message:
            raise BrowserError(f"{method}: {message['error']}")
        result: dict[str, Any] = message["result"]
        return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"page script failed: "
                               f"{details.get('exception', {}).get('description', details['text'])}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """The first truthy value of `expression`, polled in the page; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.evaluate(expression)
            if last:
                return last
            time.sleep(0.1)  # polling the page under a deadline
        raise BrowserError(f"{what}: not within {timeout:g} s (last value {last!r})")

    def wait_for_download(self, count: int, timeout: float = 60.0) -> dict[str, Any]:
        """The `count`-th completed download's event (its filePath names the file)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.downloaded) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no download {count} within {timeout:g} s")
                self._changed.wait(left)
            return self.downloaded[count - 1]

    def open(self, url: str) -> None:
        """Navigate to `url` and wait until its load event."""
        loaded = threading.Event()
        self.handlers["Page.loadEventFired"] = lambda _: loaded.set()
        self.call("Page.navigate", url=url)
        if not loaded.wait(START_SECONDS):
            raise BrowserError(f"{url} did not load within {START_SECONDS:g} s")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at page coordinates (x, y)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screen_size(self, width: int, height: int, *, mobile: bool = False) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
