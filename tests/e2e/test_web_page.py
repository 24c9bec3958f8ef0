"""The unit's web page in a real headless Chromium against a real `vigil run` process.

One vigil (synthetic camera, 160x120) and one browser serve the whole module; the tests run
in file order, each leaving the recorder as the next expects it (recording, then a span, a
gap and a second span, then a reset). Frame numbers are read back with the synthetic camera's
code: in the page (the video drawn to a canvas) and with PyAV from the files on disk.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import pytest

from hw.framecode import read_video_frame
from tests.browser import Browser, chromium_missing
from tests.helpers import frame_numbers, segments
from tests.processes import free_port, post_action, stop_vigil, wait_for_segments

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

OPERATOR = "operator-token-for-the-page"
VIEWER = "viewer-token-for-the-page"
JSON = {"Content-Type": "application/json"}
SCREENSHOTS = "VIGIL_SCREENSHOTS"  # a directory to copy the screenshots to, when set

# The synthetic camera's frame-number code (ARCHITECTURE.md, hw/framecode.py) read in the page:
# the video's top 16 rows drawn to a canvas, each of the 32 cells averaged away from its edges
# over rows 2..13 and thresholded at mid grey, as hw.framecode.read does.
READ_FRAME_NUMBER = """((id) => {
  const video = document.getElementById(id);
  const w = video.videoWidth;
  if (!w || video.readyState < 2) return null;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = 16;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(video, 0, 0, w, 16, 0, 0, w, 16);
  const d = g.getImageData(0, 0, w, 16).data;
  let n = 0;
  for (let i = 0; i < 32; i++) {
    const start = Math.floor(i * w / 32), stop = Math.floor((i + 1) * w / 32);
    const m = Math.floor((stop - start) / 4);
    let sum = 0, count = 0;
    for (let y = 2; y < 14; y++) for (let x = start + m; x < stop - m; x++) {
      const k = (y * w + x) * 4; sum += (d[k] + d[k + 1] + d[k + 2]) / 3; count++;
    }
    n = n * 2 + (sum / count > 127 ? 1 : 0);
  }
  return n;
})"""


@dataclass
class Unit:
    proc: subprocess.Popen[str]
    url: str
    root: Path
    browser: Browser
    downloads: Path
    artifacts: Path
    stopped_at: float | None = None  # when recording was stopped for the gap (ensure_gap)
    before_gap: list[int] = field(default_factory=list)  # the frames recorded before it

    def frame_number(self, video: str) -> int | None:
        value = self.browser.evaluate(f"{READ_FRAME_NUMBER}({json.dumps(video)})")
        return int(value) if value is not None else None

    def text(self, element: str) -> str:
        return str(self.browser.evaluate(f"document.getElementById({json.dumps(element)}).textContent"))

    def log_in(self, token: str, role: str) -> None:
        self.browser.evaluate(f"document.getElementById('token').value = {json.dumps(token)}; "
                              "document.getElementById('login').click(); true")
        self.browser.wait_for(f"document.getElementById('role').textContent.includes({json.dumps(role)})",
                              f"logged in as {role}")

    def open_page(self, role: str | None) -> None:
        """The page freshly loaded and logged in as `role` (None: logged out), whatever the
        tests before this one (in whatever order, on whichever worker) left behind."""
        browser = self.browser
        browser.open(f"{self.url}/")
        browser.wait_for("window.vigil && window.vigil.session !== null", "the page's session")
        now = browser.evaluate("window.vigil.session.role")
        if now == role:
            return
        if now is not None:
            browser.evaluate("document.getElementById('logout').click(); true")
            browser.wait_for("window.vigil.session && window.vigil.session.role === null "
                             "&& !document.getElementById('login-form').hidden", "logged out")
        if role is not None:
            self.log_in(OPERATOR if role == "operator" else VIEWER, role)


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    base = tmp_path_factory.mktemp("web")
    for name, token in (("operator-token", OPERATOR), ("viewer-token", VIEWER)):
        (base / name).write_text(token + "\n")
        (base / name).chmod(0o600)
    port = free_port()
    root = base / "rec"
    config = base / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 15\n"
        f"recording:\n  root: {root}\n  segment_seconds: 3\n  fragment_seconds: 1\n  merge: 'off'\n"
        "storage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0\n"
        "gpio:\n  enabled: false\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  token_file: {base / 'operator-token'}\n"
        f"  viewer_token_file: {base / 'viewer-token'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "STATE_DIRECTORY": str(base / "state")})
    downloads = base / "downloads"
    profile = base / "chromium-profile"
    artifacts = base / "screenshots"
    for folder in (downloads, profile, artifacts):
        folder.mkdir()
    try:
        wait_for_segments(proc, root, 2, timeout=60)
        with Browser(profile, downloads) as browser:
            yield Unit(proc, f"http://127.0.0.1:{port}", root, browser, downloads, artifacts)
    finally:
        output = stop_vigil(proc)
        if proc.returncode != 0:
            print(output[-5000:])


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling files and the API under a deadline
    raise AssertionError(f"{what}: not within {timeout:g} s")


def status(unit: Unit) -> dict[str, Any]:
    code, _, body = request(f"{unit.url}/status")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def test_the_page_loads_from_loopback_only_without_console_errors_and_shows_the_recorder(unit: Unit) -> None:
    browser = unit.browser
    # What this test's loads of the page produced (another test's may have logged a refusal).
    console_from, requests_from = len(browser.console), len(browser.requests)
    unit.open_page(None)
    browser.wait_for("document.getElementById('state').textContent === 'recording'", "state shown")
    assert "not logged in" in unit.text("role")
    # Without a login the page shows the state but no footage and no actions.
    assert browser.evaluate("document.getElementById('actions-section').hidden") is True
    unit.log_in(OPERATOR, "operator")
    browser.wait_for("document.getElementById('health').textContent.includes('/ 100')", "health shown")
    assert unit.text("fps").endswith("of 15 fps"), unit.text("fps")
    assert "GiB" in unit.text("disk") or "MiB" in unit.text("disk"), unit.text("disk")
    snap = status(unit)
    browser.wait_for(f"document.getElementById('segment').textContent.startsWith({json.dumps(str(unit.root))})",
                     "current segment shown")
    assert snap["state"] == "recording"
    assert "for " in unit.text("state-for")
    assert unit.text("health-reason")
    browser.wait_for("document.querySelectorAll('#timeline .span').length >= 1", "timeline drawn")
    assert browser.evaluate("document.getElementById('actions-section').hidden") is False
    assert browser.evaluate("document.getElementById('login-form').offsetParent") is None  # not shown

    history_code, _, _ = request(f"{unit.url}/history")
    if history_code == 404:  # this build keeps no history: the page says so
        browser.wait_for("document.getElementById('history-note').textContent.includes('no history yet')",
                         "no-history note")
    else:
        assert history_code == 200
        browser.wait_for("/sampled|no samples/.test(document.getElementById('history-note').textContent)",
                         "history drawn")
    # With history or without, the five charts hold their place: what is below them (the
    # timeline a user is about to click) does not move when /history answers.
    assert browser.evaluate("document.querySelectorAll('#charts svg').length") == 5

    console, requests = browser.console[console_from:], browser.requests[requests_from:]
    assert browser.exceptions == []
    # The only error the console may hold is the browser's own report of /history's 404,
    # and only when this daemon has no /history.
    errors = [line for line in console if line.startswith(("error", "assert"))]
    expected_404 = [e for e in errors if "/history" in e and "404" in e] if history_code == 404 else []
    assert [e for e in errors if e not in expected_404] == []
    outside = [url for url in requests
               if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != "127.0.0.1"]
    assert requests and outside == []


def test_the_live_view_plays_and_its_decoded_frame_number_increases(unit: Unit) -> None:
    browser = unit.browser
    playlist_headers: list[dict[str, str]] = []

    def note(params: dict[str, Any]) -> None:
        if params["request"]["url"].endswith("/live.m3u8"):
            playlist_headers.append(params["request"]["headers"])

    browser.handlers["Network.requestWillBeSent"] = note
    try:
        unit.open_page("operator")  # the screenshots show the actions too
        browser.wait_for("document.getElementById('live').currentTime > 0", "live view playing")
    finally:
        del browser.handlers["Network.requestWillBeSent"]
    # The page marks its player's requests, so a 401 there (a token changed by a reset) pops
    # no Basic login dialog over the page.
    assert playlist_headers and all(h.get("X-Requested-With") == "XMLHttpRequest" for h in playlist_headers)
    first = wait_until(lambda: unit.frame_number("live"), "a frame number read from the live view")
    t_first = browser.evaluate("document.getElementById('live').currentTime")
    later = wait_until(lambda: (n := unit.frame_number("live")) is not None and n > first + 15 and n,
                       "the live view's frame number increasing by a second's frames")
    t_later = browser.evaluate("document.getElementById('live').currentTime")
    assert t_later > t_first, (t_first, t_later, first, later, browser.evaluate("window.vigil.errors"))
    # The numbers on screen are frames the camera recorded: each lands in a closed segment.
    wait_until(lambda: {first, later} <= {n for path in segments(unit.root) for n in frame_numbers(path)},
               "the frames seen live in the segments on disk")

    # The unit's page is opened at 3 a.m.: screenshots in the dark scheme.
    browser.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
    assert browser.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(16, 20, 24)"
    for name, width, height, mobile in (("desktop", 1280, 1000, False), ("phone", 390, 844, True)):
        browser.screen_size(width, height, mobile=mobile)
        browser.wait_for("document.getElementById('live').currentTime > 0", "still playing")
        shot = browser.screenshot(unit.artifacts / f"web-page-{name}.png")
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOTS):
            Path(os.environ[SCREENSHOTS]).mkdir(parents=True, exist_ok=True)
            (Path(os.environ[SCREENSHOTS]) / shot.name).write_bytes(shot.read_bytes())
    # At phone width nothing is wider than the screen.
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.call("Emulation.clearDeviceMetricsOverride")


def span_rects(unit: Unit) -> list[dict[str, float]]:
    return list(unit.browser.evaluate("""[...document.querySelectorAll('#timeline .span')].map((r) => {
        const b = r.getBoundingClientRect();
        return {start: +r.dataset.start, end: +r.dataset.end, x: b.x, y: b.y, w: b.width, h: b.height};
    })"""))


def ensure_gap(unit: Unit) -> float:
    """When recording was stopped for four seconds (once per unit, by the first test to ask)."""
    if unit.stopped_at is None:
        assert post_action(f"{unit.url}/actions/stop", OPERATOR) == 200
        stopped_at = time.time()
        unit.before_gap = [n for path in segments(unit.root) for n in frame_numbers(path)]
        wait_until(lambda: time.time() > stopped_at + 4, "a gap of four seconds")
        assert post_action(f"{unit.url}/actions/start", OPERATOR) == 200
        wait_for_segments(unit.proc, unit.root, len(segments(unit.root)) + 2, timeout=60)
        unit.stopped_at = stopped_at
    return unit.stopped_at


def test_the_timeline_shows_the_gap_and_a_click_after_it_plays_the_second_span(unit: Unit) -> None:
    stopped_at = ensure_gap(unit)
    unit.open_page("viewer")
    browser = unit.browser
    browser.wait_for("document.querySelectorAll('#timeline .span').length >= 2", "two spans drawn")
    gaps = browser.evaluate("""[...document.querySelectorAll('#timeline .gap')].map((g) =>
        ({start: +g.dataset.start, end: +g.dataset.end, w: g.getBoundingClientRect().width}))""")
    # The gap of the stop (a reset, if one came first, makes another).
    gap = next((g for g in gaps if g["start"] <= stopped_at + 1 and g["end"] >= stopped_at + 3), None)
    assert gap is not None, (gaps, stopped_at)
    assert gap["w"] > 5, "the gap is too narrow to see"

    browser.evaluate("document.getElementById('timeline').scrollIntoView({block: 'center'}); true")
    second = next(s for s in span_rects(unit) if s["start"] >= gap["end"])
    # A real click a third of the way into the second span, at a point the browser says is on
    # that span now: the span still recording grows at each refresh of the timeline.
    point = browser.evaluate(f"""(() => {{
        const r = [...document.querySelectorAll('#timeline .span')]
            .find((e) => +e.dataset.start === {second["start"]});
        const b = r.getBoundingClientRect();
        const x = b.x + b.width / 3, y = b.y + b.height / 2;
        return document.elementFromPoint(x, y) === r ? {{x, y, end: +r.dataset.end}} : null;
    }})()""")
    assert point is not None, ("the second span is not where it was drawn", second, span_rects(unit))
    second["end"] = point["end"]
    browser.click(point["x"], point["y"])
    browser.wait_for("document.getElementById('playback').currentTime > 0",
                     f"playback from the click ({unit.text('playback-note')})")
    number = wait_until(lambda: unit.frame_number("playback"), "a frame number read from the playback")
    assert number > max(unit.before_gap), (number, max(unit.before_gap))
    clicked_at = float(browser.evaluate("+document.getElementById('playback').dataset.start"))
    assert second["start"] < clicked_at < second["end"]


def test_a_selected_span_downloads_as_an_mp4_of_exactly_its_frames(unit: Unit) -> None:
    ensure_gap(unit)  # so the first span is closed
    unit.open_page("viewer")
    browser = unit.browser
    browser.wait_for("document.querySelectorAll('#spans li').length >= 2", "the spans listed")
    code, _, body = request(f"{unit.url}/recordings/spans", headers={"Authorization": f"Bearer {VIEWER}"})
    assert code == 200, body
    first = json.loads(body)["spans"][0]
    expected = [n for name in first["files"] for n in frame_numbers(unit.root / name)]
    assert expected == list(range(expected[0], expected[0] + len(expected)))
    browser.evaluate("document.querySelector('#spans li button[aria-label^=\"Select\"]').click(); true")
    href = browser.wait_for("document.getElementById('download').getAttribute('aria-disabled') === 'false' "
                            "&& document.getElementById('download').href", "a download link")
    assert "/export?start=" in href
    browser.evaluate("document.getElementById('download').scrollIntoView(); true")
    box = browser.evaluate("(() => { const b = document.getElementById('download').getBoundingClientRect(); "
                           "return {x: b.x + b.width / 2, y: b.y + b.height / 2}; })()")
    browser.click(box["x"], box["y"])
    clip = wait_until(lambda: [p for p in unit.downloads.iterdir() if p.suffix == ".mp4"],
                      "the clip downloaded")[0]
    with av.open(str(clip)) as container:
        numbers = [read_video_frame(frame) for frame in container.decode(video=0)]
    assert numbers == expected


def test_reset_from_the_page_asks_first_and_passes_through_reset(unit: Unit) -> None:
    browser = unit.browser
    unit.open_page("operator")
    wait_until(lambda: status(unit)["state"] == "recording", "recording")
    since = status(unit)["since"]
    browser.evaluate("document.getElementById('action-reset').click(); true")
    assert browser.wait_for("document.getElementById('confirm-reset').open", "the confirmation")
    # Cancel first: nothing happens.
    browser.evaluate("document.getElementById('confirm-reset-no').click(); true")
    browser.wait_for("!document.getElementById('confirm-reset').open", "the confirmation closed")
    assert unit.text("action-result") == "" and status(unit)["since"] == since
    browser.evaluate("document.getElementById('action-reset').click(); true")
    browser.wait_for("document.getElementById('confirm-reset').open", "the confirmation again")
    browser.evaluate("document.getElementById('confirm-reset-yes').click(); true")
    result = browser.wait_for("document.getElementById('action-result').dataset.status",
                              "the reset's answer", timeout=60)
    assert result == "200", unit.text("action-result")
    transitions = unit.browser.evaluate("document.getElementById('action-result').dataset.transitions")
    assert "recording -> reset on reset" in transitions, transitions
    assert "reset -> idle" in transitions, transitions
    wait_until(lambda: status(unit)["state"] == "recording" and status(unit)["since"] > since,
               "recording again after the reset")


@contextmanager
def attacker_site(html: str) -> Iterator[str]:
    """Another site on loopback serving `html` at /, for the duration."""
    body = html.encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, name="attacker-site", daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def cookies_of(reply_headers: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for name, value in reply_headers:
        if name.lower() == "set-cookie":
            key, _, rest = value.partition("=")
            found[key] = rest.split(";", 1)[0]
    return found


def test_cookie_actions_need_the_pages_header_and_origin_so_a_forged_post_is_403(unit: Unit) -> None:
    req = urllib.request.Request(f"{unit.url}/login", method="POST", headers=JSON,
                                 data=json.dumps({"token": OPERATOR}).encode())
    with urllib.request.urlopen(req, timeout=30) as reply:
        assert reply.status == 204
        set_cookies = [v for k, v in reply.headers.items() if k.lower() == "set-cookie"]
        jar = cookies_of(list(reply.headers.items()))
    operator_cookie = next(c for c in set_cookies if c.startswith("vigil_operator="))
    assert "HttpOnly" in operator_cookie and "samesite=strict" in operator_cookie.lower()
    assert OPERATOR not in operator_cookie  # a MAC of the token, not the token
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    since = status(unit)["since"]
    # A forged POST carries the cookie (were SameSite not to hold) but not the page's header.
    code, _, body = request(f"{unit.url}/actions/stop", method="POST", headers={"Cookie": cookie})
    assert code == 403 and b"X-Vigil-Action" in body, body
    code, _, body = request(f"{unit.url}/actions/stop", method="POST",
                            headers={"Cookie": cookie, "X-Vigil-Action": "1", "Origin": "http://evil.example"})
    assert code == 403 and b"cross-site" in body, body
    assert status(unit)["state"] == "recording" and status(unit)["since"] == since
    # The viewer's cookie never acts, with or without the header.
    req = urllib.request.Request(f"{unit.url}/login", method="POST", headers=JSON,
                                 data=json.dumps({"token": VIEWER}).encode())
    with urllib.request.urlopen(req, timeout=30) as reply:
        viewer_jar = cookies_of(list(reply.headers.items()))
    assert "vigil_operator" not in viewer_jar or viewer_jar["vigil_operator"] in ('""', "")
    code, _, body = request(f"{unit.url}/actions/stop", method="POST", headers={
        "Cookie": f"vigil_viewer={viewer_jar['vigil_viewer']}", "X-Vigil-Action": "1"})
    assert code == 403 and b"footage only" in body, body
    # A real cross-site form in the browser: another site's page (localhost, not 127.0.0.1)
    # posting to the unit on its own.
    with attacker_site(f"""<!doctype html><form method="POST" action="{unit.url}/actions/stop"></form>
                           <script>document.forms[0].submit()</script>""") as attacker:
        unit.browser.open(attacker)
        unit.browser.wait_for("location.href.endsWith('/actions/stop') && document.readyState === 'complete'",
                              "the forged form posted")
    browser = unit.browser
    answer = json.loads(browser.evaluate("document.body.innerText"))
    # SameSite=Strict kept the cookies off the other site's POST: refused, with the reason.
    assert answer["detail"].startswith("missing bearer token"), answer
    assert status(unit)["state"] == "recording" and status(unit)["since"] == since


def test_the_viewer_sees_the_page_but_is_offered_no_actions_and_cannot_act(unit: Unit) -> None:
    browser = unit.browser
    unit.open_page("operator")
    unit.open_page("viewer")  # logs out, then in with the viewer token
    browser.wait_for("document.getElementById('live').currentTime > 0", "the viewer sees the live view")
    assert browser.evaluate("document.getElementById('actions-section').hidden") is True
    shown = browser.evaluate("[...document.querySelectorAll('button')].filter((b) => b.offsetParent !== null)"
                             ".map((b) => b.textContent)")
    assert [label for label in shown if label.lower().startswith(("start", "stop", "reset", "merge"))] == []
    since = status(unit)["since"]
    code = browser.evaluate("fetch('/actions/reset', {method: 'POST', credentials: 'same-origin', "
                            "headers: {'X-Vigil-Action': '1'}}).then((r) => r.status)")
    assert code == 403
    assert status(unit)["since"] == since


def contract_history(now: float) -> dict[str, Any]:
    """A night in /history's shape (/work/notes' contract, README "Web page"): recording at 15 fps,
    a camera fault at minute 30 with recovery at minute 33, and the daemon down for minutes 60-69."""
    start = now - 2 * 3600 - (now % 60)
    samples = []
    for minute in range(120):
        if 60 <= minute < 70:
            continue  # the daemon was not running: no sample
        faulty = 30 <= minute < 33
        samples.append({"t": start + 60 * minute, "state": "recovering" if faulty else "recording",
                        "health": 40.0 if faulty else 97.0, "fps": 2.0 if faulty else 15.0,
                        "fps_configured": 15.0, "frames": 120 if faulty else 900,
                        "frames_dropped": 7 if faulty else 0,
                        "errors": {"camera_timeout": 3} if faulty else {},
                        "disk_free_bytes": 8_000_000_000 - minute * 1_000_000})
    alerts = [{"t": start + 60 * 30 + 5, "name": "camera_timeout", "severity": "warning",
               "message": "camera stalled"},
              {"t": start + 60 * 33 + 2, "name": "recovered", "severity": "info",
               "message": "recording again"}]
    return {"interval_seconds": 60, "now": now, "samples": samples, "alerts": alerts}


def test_the_history_charts_draw_the_contracts_shape_with_the_alerts_and_the_gap(unit: Unit) -> None:
    browser = unit.browser
    history = contract_history(time.time())
    body = base64.b64encode(json.dumps(history).encode()).decode()

    def fulfil(params: dict[str, Any]) -> None:
        # Answered from another thread: the reader thread is the one that delivers replies.
        threading.Thread(target=browser.call, args=("Fetch.fulfillRequest",), kwargs={
            "requestId": params["requestId"], "responseCode": 200, "body": body,
            "responseHeaders": [{"name": "Content-Type", "value": "application/json"}]}).start()

    browser.handlers["Fetch.requestPaused"] = fulfil
    browser.call("Fetch.enable", patterns=[{"urlPattern": "*/history*", "requestStage": "Request"}])
    try:
        browser.open(f"{unit.url}/")
        # The five frames are there from the start (empty): wait for the answer to be drawn.
        browser.wait_for("document.querySelectorAll('#charts svg').length === 5 && document"
                         ".getElementById('history-note').textContent.includes('minute(s) sampled')",
                         "five charts of the answer")
    finally:
        browser.call("Fetch.disable")
        del browser.handlers["Fetch.requestPaused"]
    charts = browser.evaluate("""[...document.querySelectorAll('#charts svg')].map((svg) => ({
        label: svg.getAttribute('aria-label'),
        alerts: [...svg.querySelectorAll('.alert')].map((a) => +a.dataset.t),
        bars: [...svg.querySelectorAll('.bar')].map((b) => [+b.dataset.t, +b.dataset.value]),
        moves: [...svg.querySelectorAll('path.line:not(.second)')].map((p) => (p.getAttribute('d').match(/M/g)
                                                                           || []).length)}))""")
    assert charts[0]["label"].startswith("Health")
    samples, alerts = history["samples"], history["alerts"]
    for chart in charts:  # every chart marks both alerts at their times
        assert chart["alerts"] == [a["t"] for a in alerts], chart
    fault_minutes = [s["t"] for s in samples if s["frames_dropped"]]
    dropped = next(c for c in charts if c["label"].startswith("Dropped"))
    errors = next(c for c in charts if c["label"].startswith("Errors"))
    assert dropped["bars"] == [[t, 7] for t in fault_minutes]
    assert errors["bars"] == [[t, 3] for t in fault_minutes]
    health = charts[0]
    assert health["moves"] == [2]  # one line before the daemon's down time, one after
    assert f"{len(samples)} minute(s) sampled; 2 alert(s)" in unit.text("history-note")
