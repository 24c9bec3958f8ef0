"""Talking to a running daemon's HTTP API from the command line, with the stdlib only.

`vigil status` and `vigil reset` use this; urllib keeps the CLI quick to start and free of
the server's dependencies.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.config import parse_listen
from controller.config.files import read_regular_file
from hw.errors import VigilError

REQUEST_TIMEOUT_SECONDS = 10.0  # above the API's own 5 s wait for an action to settle
ALERTS_SHOWN = 10
TOKEN_MAX_BYTES = 4096
REPLY_MAX_BYTES = 4 * 1024 * 1024  # a /status answer is a few KiB
URL_MAX_CHARS = 2048


class DaemonUnreachable(VigilError, ConnectionError):
    """No answer from the daemon's API at that address."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status code and the JSON body (or the text, when it is not JSON)."""

    status: int
    body: Any

    @property
    def detail(self) -> str:
        """The one-line reason an error answer gives."""
        body = self.body
        if isinstance(body, dict):
            detail = body.get("detail")
            if isinstance(detail, list):  # FastAPI's validation errors
                return "; ".join(str(item.get("msg", item)) for item in detail)
            if detail is not None:
                return str(detail)
        return str(body)


def base_url(listen: str) -> str:
    """The URL to reach an API listening on `listen` from this machine."""
    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_url(text: str) -> str:
    """`text`, when it is an http:// or https:// URL a daemon's API can have; else ValueError
    saying what is wrong with it."""
    if len(text) > URL_MAX_CHARS:
        raise ValueError(f"is longer than {URL_MAX_CHARS} characters")
    if not text.isascii() or any(not char.isprintable() or char.isspace() for char in text):
        raise ValueError("may hold only printable ASCII characters, without spaces "
                         "(write an international host name in its xn-- form)")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"is not a URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("names no host")
    if port == 0:
        raise ValueError("port 0 is not a port a daemon listens on")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query (?...) or fragment (#...)")
    return text


def read_token(path: Path) -> str:
    """The bearer token in `path`; OSError or ValueError say why there is none.

    Only a regular file of at most TOKEN_MAX_BYTES is read: a FIFO or a device named by
    mistake is refused at once instead of blocking or being read without end.
    """
    token = read_regular_file(path, max_bytes=TOKEN_MAX_BYTES).decode("utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


class DaemonClient:
    """Requests to one daemon's API."""

    def __init__(self, url: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<DaemonClient {self.url}>"

    def request(self, method: str, path: str, *, token: str | None = None) -> Reply:
        """The reply to one request; DaemonUnreachable when nothing answered."""
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Reply(response.status, _decode(self._bounded_body(response)))
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, _decode(self._bounded_body(err)))
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or err.reason
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: {reason}") from err
        except (TimeoutError, ConnectionError) as err:
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: {err}") from err
        except (http.client.HTTPException, ValueError) as err:
            # An answer that is not HTTP (another service on the port), or a URL urllib refuses.
            raise DaemonUnreachable(f"no valid HTTP answer from {self.url}: {err!r}") from err

    def _bounded_body(self, response: Any) -> bytes:
        body = bytes(response.read(REPLY_MAX_BYTES + 1))
        if len(body) > REPLY_MAX_BYTES:
            raise DaemonUnreachable(f"{self.url} answered more than {REPLY_MAX_BYTES} bytes; "
                                    "is it a vigil daemon?")
        return body

    def status(self) -> Reply:
        return self.request("GET", "/status")

    def action(self, name: str, token: str) -> Reply:
        return self.request("POST", f"/actions/{name}", token=token)


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def _counts(values: object) -> str:
    if not isinstance(values, dict) or not any(values.values()):
        return "none"
    return ", ".join(f"{key} {value}" for key, value in sorted(values.items()) if value)


def format_status(status: dict[str, Any], *, now: float | None = None) -> str:
    """The /status answer as aligned lines for a terminal."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    rows: list[tuple[str, str]] = []
    since = status.get("since")
    state = str(status.get("state", "unknown"))
    if isinstance(since, int | float):
        state += f" since {_iso(since)} ({_duration(now - since)})"
    rows.append(("state", state))
    health = status.get("health")
    why = ""
    if isinstance(health, dict):
        why = f" ({health['reason']})" if health.get("reason") else ""
        health = health.get("score")
    if health is not None:
        rows.append(("health", (f"{health:g}" if isinstance(health, int | float) else str(health)) + why))
    rows.append(("camera", str(status.get("backend", "?"))))
    fps = status.get("fps_achieved")
    configured = status.get("configured_fps")
    rows.append(("fps", (f"{fps:.1f}" if isinstance(fps, int | float) else "-")
                 + (f" of {configured:g} configured" if isinstance(configured, int | float) else "")))
    totals = status.get("totals") or status
    rows.append(("frames", ", ".join(f"{key.removeprefix('frames_')} {totals.get(key, 0)}" for key in
                                     ("frames_captured", "frames_recorded", "frames_dropped",
                                      "frames_invalid", "frames_decimated"))))
    quality = status.get("quality")
    if isinstance(quality, dict):
        lowest = int(quality.get("levels", 1)) - 1
        text = f"level {quality.get('level')} of {lowest}: {quality.get('describe')}"
        if quality.get("last_change"):
            text += f" (last step: {quality['last_change']})"
        rows.append(("quality", text))
    rows.append(("errors", _counts(status.get("errors"))))
    rows.append(("faults", _counts(status.get("faults"))))
    rows.append(("recovery", f"attempt {status.get('recovery_attempts', 0)} now, "
                             f"{status.get('recoveries_attempted', 0)} since start"))
    rows.append(("root", str(status.get("root") or "-")))
    rows.append(("segment", str(status.get("current_segment") or "-")))
    rows.append(("written", f"{totals.get('segments_closed', 0)} segments, "
                            f"{_size(float(totals.get('bytes_written', 0)))}"))
    disk = status.get("disk")
    if isinstance(disk, dict) and isinstance(disk.get("free_bytes"), int | float):
        text = f"{_size(disk['free_bytes'])} free"
        if isinstance(disk.get("total_bytes"), int | float):
            text += f" of {_size(disk['total_bytes'])}"
        rows.append(("disk", text))
    if status.get("last_refusal"):
        rows.append(("last refusal", str(status["last_refusal"])))
    if "actions_enabled" in status:
        rows.append(("actions", "enabled" if status["actions_enabled"] else
                     "disabled (no api.token_file)"))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label:<{width}}{value}" for label, value in rows]
    alerts = status.get("alerts") or []
    if alerts:
        lines.append("alerts (newest last):")
        for alert in alerts[-ALERTS_SHOWN:]:
            lines.append(f"  {_iso(alert.get('time', 0))}  {alert.get('kind', '?'):<12}  "
                         f"{alert.get('message', '')}")
    return "\n".join(lines) + "\n"
