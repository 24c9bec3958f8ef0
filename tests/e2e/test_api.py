"""The HTTP API over a real socket: uvicorn on a free loopback port in front of a real
Controller recording the synthetic camera, as an operator's curl or a player would use it."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import cli
from controller.config import ApiConfig
from controller.core.controller import Controller
from controller.surfaces.api import ApiServer, create_app, start_api
from hw import framecode
from hw.factory import Hardware
from tests.processes import free_port
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 160, 120, 30
TOKEN = "correct-horse-battery-staple"
VIEWER_TOKEN = "viewer-staple-battery-horse"
VIEW = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
SECRET = b"SECRET-OUTSIDE-THE-ROOT"
WAIT_SECONDS = 20.0


@dataclass
class Live:
    """A recording controller and an API server in front of it."""

    controller: Controller
    server: ApiServer
    root: Path
    token_file: Path
    outside: Path

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(server: ApiServer, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Reply:
    """One raw HTTP request: the path goes on the wire exactly as given (no normalising)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_until(predicate: Any, timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def closed_segments(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.mp4") if p.parent.parent.parent == root)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("api")
    root = base / "recordings"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(SECRET)
    token_file = base / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    viewer_file = base / "viewer-token"
    viewer_file.write_text(VIEWER_TOKEN + "\n")
    viewer_file.chmod(0o600)
    camera = camera_spec(backend="synthetic", width=WIDTH, height=HEIGHT, fps=FPS)
    recording = recording_spec(root=root, segment_seconds=1.0, fragment_seconds=0.5)
    controller = Controller(Hardware(camera, recording), autostart=True)
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    server = ApiServer(create_app(controller, token_file=token_file, root_provider=lambda: root,
                                  viewer_token_file=viewer_file),
                       "127.0.0.1", 0)
    try:
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        server.start()
        yield Live(controller, server, root, token_file, outside)
    finally:
        assert server.stop()
        controller.request_shutdown()
        loop.join(WAIT_SECONDS)
        assert not loop.is_alive(), "controller did not shut down"


@pytest.fixture
def recording(live: Live) -> Live:
    """The live server, with the controller recording (an earlier test may have stopped it)."""
    if live.controller.state == "idle":
        live.controller.post("start")
    assert live.controller.wait_for_state("recording", WAIT_SECONDS), live.controller.refusals
    return live


@pytest.fixture
def segment(recording: Live) -> Path:
    """A closed segment of the live recording."""
    wait_until(lambda: closed_segments(recording.root), what="a closed segment")
    return closed_segments(recording.root)[0]


# --- open, read-only views ---------------------------------------------------------------------


def test_health_answers_200_with_the_state_and_a_reason_while_recording(recording: Live) -> None:
    reply = request(recording.server, "GET", "/health")

    assert reply.status == 200
    body = reply.json()
    assert body["state"] == "recording"
    assert body["reason"].startswith("recording since ")
    assert "\n" not in body["reason"]


def test_status_carries_the_controller_status_and_the_last_alerts(recording: Live) -> None:
    body = request(recording.server, "GET", "/status").json()

    assert body["state"] == "recording"
    assert body["configured_fps"] == FPS
    assert body["root"] == str(recording.root)
    assert body["actions_enabled"] is True
    assert body["alerts"][-1]["kind"] == "state_change"
    assert body["alerts"][-1]["message"].endswith("-> recording on start")


def test_metrics_parse_as_prometheus_text_and_counters_grow(recording: Live) -> None:
    def scrape() -> dict[str, float]:
        reply = request(recording.server, "GET", "/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            assert family.name.startswith("vigil_")
            for sample in family.samples:
                key = sample.name + "".join(f"[{k}={v}]" for k, v in sorted(sample.labels.items()))
                samples[key] = sample.value
        return samples

    first = scrape()
    assert first["vigil_state[state=recording]"] == 1
    assert first["vigil_state[state=idle]"] == 0
    assert first["vigil_fps_configured"] == FPS
    assert "vigil_errors_total[category=camera_lost]" in first
    wait_until(lambda: recording.controller.snapshot.totals.frames_recorded
               > first["vigil_frames_recorded_total"] + FPS, what="a second of frames")
    # The achieved rate is measured over a window of at least a second of the sampler's own
    # clock, which a busy machine may start late: the gauge is there once it is measured.
    wait_until(lambda: recording.controller.snapshot.fps_achieved is not None, what="a measured frame rate")
    second = scrape()
    assert second["vigil_frames_recorded_total"] > first["vigil_frames_recorded_total"]
    assert second["vigil_frames_captured_total"] > first["vigil_frames_captured_total"]
    assert second["vigil_bytes_written_total"] >= first["vigil_bytes_written_total"]
    assert second["vigil_fps_achieved"] > 0
    assert second["vigil_disk_free_bytes[root=" + str(recording.root) + "]"] > 0


def test_recordings_lists_closed_segments_by_day_and_hour(segment: Path, live: Live) -> None:
    body = request(live.server, "GET", "/recordings?page=1&per_page=5", headers=VIEW).json()

    assert (body["page"], body["per_page"]) == (1, 5)
    assert body["total_hours"] >= 1
    listed = {f["path"]: f["size_bytes"] for h in body["hours"] for f in h["segments"]}
    relative = segment.relative_to(live.root).as_posix()
    assert relative in listed
    hour = next(h for h in body["hours"] if relative in {f["path"] for f in h["segments"]})
    assert (hour["day"], hour["hour"]) == (segment.parent.parent.name, segment.parent.name)
    assert not any(p.endswith(".partial") for p in listed)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("page=0", "greater than or equal to 1"),
        ("per_page=0", "greater than or equal to 1"),
        ("per_page=100000", "less than or equal to 200"),
        ("page=two", "valid integer"),
    ],
)
def test_recordings_with_bad_paging_answer_422_with_the_reason(live: Live, query: str, reason: str) -> None:
    reply = request(live.server, "GET", f"/recordings?{query}", headers=VIEW)

    assert reply.status == 422
    assert reason in json.dumps(reply.json()["detail"])


def test_a_segment_is_served_whole_and_by_byte_range(segment: Path, live: Live) -> None:
    data = segment.read_bytes()
    path = f"/recordings/{segment.relative_to(live.root).as_posix()}"

    whole = request(live.server, "GET", path, headers=VIEW)
    assert whole.status == 200
    assert whole.body == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"

    middle = request(live.server, "GET", path, headers={**VIEW, "Range": "bytes=100-1099"})
    assert middle.status == 206
    assert middle.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert middle.body == data[100:1100]

    tail = request(live.server, "GET", path, headers={**VIEW, "Range": "bytes=-64"})
    assert tail.status == 206
    assert tail.body == data[-64:]

    open_ended = request(live.server, "GET", path, headers={**VIEW, "Range": f"bytes={len(data) - 10}-"})
    assert open_ended.status == 206
    assert open_ended.body == data[-10:]

    past_end = request(live.server, "GET", path, headers={**VIEW, "Range": f"bytes={len(data)}-"})
    assert past_end.status == 416
    assert past_end.headers["content-range"] == f"bytes */{len(data)}"


def test_the_segment_being_written_is_never_served(recording: Live) -> None:
    wait_until(lambda: recording.controller.snapshot.current_segment, what="an open segment")
    partial = Path(recording.controller.snapshot.current_segment)
    relative = partial.relative_to(recording.root).as_posix()

    assert request(recording.server, "GET", f"/recordings/{relative}", headers=VIEW).status == 404
    assert request(recording.server, "GET", f"/recordings/{relative.removesuffix('.partial')}",
                   headers=VIEW).status \
        in (404, 200)  # 200 only if it closed meanwhile; then it is a closed segment


@pytest.mark.parametrize(
    "path",
    [
        "/recordings/../../etc/passwd",
        "/recordings/%2e%2e/%2e%2e/etc/passwd",
        "/recordings/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/recordings/..%2f..%2f..%2fetc%2fpasswd",
        "/recordings/%252e%252e/%252e%252e/etc/passwd",
        "/recordings//etc/passwd",
        "/recordings/%2Fetc%2Fpasswd",
        "/recordings/....//....//etc/passwd",
        "/recordings/x.mp4%00../../etc/passwd",
        "/recordings/..%00/secret.mp4",
        "/recordings/../outside/secret.mp4",
        "/recordings/%2e%2e/outside/secret.mp4",
        "/recordings/links/escape.mp4",
        "/recordings/links/passwd.mp4",
        "/recordings/outside-dir/secret.mp4",
        "/recordings/2000-01-01/00/secret.mp4",
    ],
)
def test_paths_that_leave_the_root_are_404_and_nothing_outside_is_served(live: Live, path: str) -> None:
    links = live.root / "links"
    links.mkdir(parents=True, exist_ok=True)
    for link, target in [(links / "escape.mp4", live.outside / "secret.mp4"),
                         (links / "passwd.mp4", Path("/etc/passwd")),
                         (live.root / "outside-dir", live.outside),
                         (live.root / "2000-01-01", live.outside)]:
        if not link.is_symlink():
            link.symlink_to(target)
    (live.outside / "00").mkdir(exist_ok=True)
    (live.outside / "00" / "secret.mp4").write_bytes(SECRET)

    reply = request(live.server, "GET", path, headers=VIEW)

    assert reply.status == 404, reply.body[:200]
    assert SECRET not in reply.body
    assert b"root:" not in reply.body


def test_symlinked_folders_out_of_the_root_are_not_listed(live: Live) -> None:
    (live.root / "2000-01-02").symlink_to(live.outside, target_is_directory=True)

    body = request(live.server, "GET", "/recordings?per_page=200", headers=VIEW).json()

    assert "2000-01-02" not in {h["day"] for h in body["hours"]}


def test_snapshot_is_a_jpeg_of_the_latest_frame(recording: Live) -> None:
    def snapshot_number() -> int:
        reply = request(recording.server, "GET", "/snapshot.jpg", headers=VIEW)
        assert reply.status == 200
        assert reply.headers["content-type"] == "image/jpeg"
        assert reply.body[:2] == b"\xff\xd8"
        with av.open(io.BytesIO(reply.body)) as container:
            frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        return framecode.read_video_frame(frame)

    # Right after a recovery (an earlier test's injected fault) no frame has passed validation
    # yet, and the answer is a 503 saying so: wait for the first one.
    wait_until(lambda: request(recording.server, "GET", "/snapshot.jpg", headers=VIEW).status == 200,
               what="a validated frame")
    first = snapshot_number()
    captured = recording.controller.snapshot.totals.frames_captured
    wait_until(lambda: recording.controller.snapshot.totals.frames_captured > captured + 3,
               what="more frames")
    assert snapshot_number() > first


def test_a_fault_and_its_recovery_show_as_alerts_and_in_the_metrics(recording: Live) -> None:
    def recoveries() -> float:
        text = request(recording.server, "GET", "/metrics").body.decode()
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "vigil_recoveries_total")

    before = recoveries()
    recording.controller.unit.hardware.faults.inject_disconnect(0.3)
    wait_until(lambda: recording.controller.alerts.counts["recovery"] > before, what="a recovery")

    alerts = request(recording.server, "GET", "/status").json()["alerts"]
    kinds = [(a["kind"], a["message"]) for a in alerts]
    fault = next(i for i, (kind, message) in enumerate(kinds)
                 if kind == "fault" and message.startswith("recording -> recovering on fault: camera_lost"))
    assert any(kind == "recovery" and message.startswith("recovering -> recording")
               for kind, message in kinds[fault:])
    assert recoveries() == before + 1
    assert recording.controller.wait_for_state("recording", WAIT_SECONDS)


def test_unknown_paths_are_404(live: Live) -> None:
    assert request(live.server, "GET", "/nope").status == 404
    assert request(live.server, "GET", "/actions").status == 404


# --- actions and the token ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["start", "stop", "reset", "merge"])
def test_actions_without_the_token_are_401_and_change_nothing(recording: Live, action: str) -> None:
    before = recording.controller.transitions[-1]
    for headers in ({}, bearer("wrong-token"), {"Authorization": f"Basic {TOKEN}"},
                    bearer(TOKEN + "x")):
        reply = request(recording.server, "POST", f"/actions/{action}", headers=headers)
        assert reply.status == 401, (headers, reply.body)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "token" in reply.json()["detail"]
    assert recording.controller.transitions[-1] == before
    assert recording.controller.state == "recording"


def test_each_action_answers_with_what_the_machine_did(recording: Live) -> None:
    server, controller = recording.server, recording.controller

    stopped = request(server, "POST", "/actions/stop", headers=bearer())
    assert stopped.status == 200, stopped.body
    assert stopped.json() | {"detail": ""} == {
        "action": "stop", "done": True, "state": "idle", "before": "recording", "detail": "",
        "transitions": ["recording -> idle on stop"], "refused": None}
    assert controller.state == "idle"

    health = request(server, "GET", "/health")
    assert health.status == 503
    assert health.json()["state"] == "idle"
    assert request(server, "GET", "/snapshot.jpg", headers=VIEW).status == 503

    again = request(server, "POST", "/actions/stop", headers=bearer())
    assert again.status == 409
    assert again.json()["detail"] == (
        "stop does nothing in state idle (possible from: recording, recovering, critical)")

    started = request(server, "POST", "/actions/start", headers=bearer())
    assert started.status == 200, started.body
    assert (started.json()["state"], started.json()["transitions"]) == (
        "recording", ["idle -> recording on start"])

    reset = request(server, "POST", "/actions/reset", headers=bearer())
    assert reset.status == 200, reset.body
    assert reset.json()["transitions"] == [
        "recording -> reset on reset", "reset -> idle on reset_done", "idle -> recording on start"]
    assert reset.json()["state"] == "recording"
    assert request(server, "GET", "/health").status == 200


def test_a_refused_start_reports_the_guard_and_its_reason(recording: Live) -> None:
    server, controller = recording.server, recording.controller
    assert request(server, "POST", "/actions/stop", headers=bearer()).status == 200
    controller.unit.config_error = "injected for the test"
    try:
        reply = request(server, "POST", "/actions/start", headers=bearer())
    finally:
        controller.unit.config_error = None
    assert reply.status == 409, reply.body
    body = reply.json()
    assert (body["done"], body["state"]) == (False, "idle")
    assert body["refused"] == "config invalid: injected for the test"
    assert request(server, "GET", "/health").json()["reason"].endswith(
        "start refused: config invalid: injected for the test")


@pytest.mark.parametrize(
    ("query", "body"),
    [("?hour=2024-13-01T00", None), ("?hour=yesterday", None), ("", b'{"hour": "2024-01-01T24"}'),
     ("?hour=2024-01-01T01", b'{"hour": "2024-01-01T02"}')],
)
def test_merge_with_a_bad_hour_is_422(live: Live, query: str, body: bytes | None) -> None:
    headers = {**bearer(), "Content-Type": "application/json"}

    reply = request(live.server, "POST", f"/actions/merge{query}", headers=headers, body=body)

    assert reply.status == 422, reply.body
    assert "hour" in json.dumps(reply.json()["detail"])


def test_merge_of_an_hour_without_footage_says_why_nothing_was_merged(live: Live) -> None:
    reply = request(live.server, "POST", "/actions/merge?hour=2001-01-01T00", headers=bearer())

    assert reply.status == 409, reply.body
    body = reply.json()
    assert (body["hour"], body["done"]) == ("2001-01-01T00", False)
    assert body["detail"].startswith("nothing merged: NothingToMerge: no footage of hour 2001-01-01T00")


class ProxyController:
    """The live controller seen through another object, to add or hide request_merge."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        if name == "request_merge":
            raise AttributeError(name)  # a build without the storage lifecycle
        return getattr(self._controller, name)


class MergingController(ProxyController):
    """A request_merge that answers at once, as the storage lifecycle's Future does."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(controller)
        self.asked: list[str | None] = []

    def request_merge(self, hour: str | None) -> Future[list[str]]:
        self.asked.append(hour)
        done: Future[list[str]] = Future()
        done.set_result([f"{hour}.mp4"])
        return done


def serve(controller: object, live: Live, token_file: Path | None = None) -> ApiServer:
    server = ApiServer(create_app(controller, token_file=token_file or live.token_file,  # type: ignore[arg-type]
                                  root_provider=lambda: live.root), "127.0.0.1", 0)
    server.start()
    return server


def test_merge_without_a_storage_lifecycle_is_503_with_the_reason(live: Live) -> None:
    server = serve(ProxyController(live.controller), live)
    try:
        reply = request(server, "POST", "/actions/merge", headers=bearer())
    finally:
        assert server.stop()

    assert reply.status == 503
    assert "merging is not available" in reply.json()["detail"]


def test_merge_passes_the_hour_on_and_reports_the_result(live: Live) -> None:
    merging = MergingController(live.controller)
    server = serve(merging, live)
    try:
        by_query = request(server, "POST", "/actions/merge?hour=2024-05-01T13", headers=bearer())
        by_body = request(server, "POST", "/actions/merge",
                          headers={**bearer(), "Content-Type": "application/json"},
                          body=b'{"hour": "2024-05-01T14"}')
        every = request(server, "POST", "/actions/merge", headers=bearer())
    finally:
        assert server.stop()
    assert merging.asked == ["2024-05-01T13", "2024-05-01T14", None]
    assert by_query.status == 200, by_query.body
    assert by_query.json()["result"] == ["2024-05-01T13.mp4"]
    assert by_body.json()["hour"] == "2024-05-01T14"
    assert every.json()["done"] is True


def test_without_a_token_file_actions_are_disabled_with_403(live: Live, tmp_path: Path) -> None:
    for token_file in (tmp_path / "missing", None, tmp_path / "empty"):
        if token_file is not None and token_file.name == "empty":
            token_file.write_text("\n")
        server = ApiServer(create_app(live.controller, token_file=token_file,
                                      root_provider=lambda: live.root), "127.0.0.1", 0)
        server.start()  # not serve(): it would fall back to the live token file
        try:
            reply = request(server, "POST", "/actions/stop", headers=bearer())
            status = request(server, "GET", "/status").json()
        finally:
            assert server.stop()
        assert reply.status == 403
        assert "actions are disabled" in reply.json()["detail"]
        assert status["actions_enabled"] is False
    assert live.controller.state in ("recording", "idle")


# --- the server runner -------------------------------------------------------------------------


def test_a_port_in_use_is_reported_and_no_api_started(live: Live) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_api(ApiConfig(listen=f"127.0.0.1:{port}", token_file=live.token_file),
                           live.controller)
    assert server is None


def test_disabled_api_starts_nothing(live: Live) -> None:
    assert start_api(ApiConfig(enabled=False), live.controller) is None


# --- the CLI against the live server -----------------------------------------------------------


def test_vigil_status_prints_the_status_and_exits_0_while_recording(
    recording: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["status", "--url", recording.url])

    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("state ")
    assert "recording since" in out
    assert "-> recording on start" in out


def test_vigil_status_json_is_the_status_document(
    recording: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--url", recording.url, "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["state"] == "recording"


def test_vigil_status_exits_1_when_not_recording(recording: Live, capsys: pytest.CaptureFixture[str]) -> None:
    recording.controller.post("stop")
    assert recording.controller.wait_for_state("idle", WAIT_SECONDS)

    code = cli.main(["status", "--url", recording.url])

    assert code == 1
    assert capsys.readouterr().out.startswith("state ")


def test_vigil_status_exits_3_when_the_daemon_is_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    code = cli.main(["status", "--url", f"http://127.0.0.1:{port}"])

    assert code == 3  # LSB: program is not running
    err = capsys.readouterr().err
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in err


def test_vigil_status_with_a_bad_config_exits_78_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text("api:\n  listen: nowhere\n")

    assert cli.main(["status", "--config", str(config)]) == 78
    assert f"{config}:2: api.listen: 'nowhere' is not valid" in capsys.readouterr().err


def test_vigil_reset_resets_and_reports_the_new_state(
    recording: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    resets_before = sum(1 for t in recording.controller.transitions if t[3] == "reset")

    code = cli.main(["reset", "--url", recording.url, "--token-file", str(recording.token_file)])

    assert code == 0, capsys.readouterr()
    assert capsys.readouterr().out.startswith("reset done: state recording")
    assert sum(1 for t in recording.controller.transitions if t[3] == "reset") == resets_before + 1


def test_vigil_reset_with_a_wrong_or_missing_token_fails_clearly(
    recording: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("nope\n")

    assert cli.main(["reset", "--url", recording.url, "--token-file", str(wrong)]) == 1
    assert "answered 401: wrong bearer token" in capsys.readouterr().err
    assert cli.main(["reset", "--url", recording.url, "--token-file", str(tmp_path / "none")]) == 1
    assert "cannot read the API token from" in capsys.readouterr().err


# --- the daemon --------------------------------------------------------------------------------



def daemon_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 30\n"
        f"recording:\n  root: {tmp_path / 'rec'}\n  segment_seconds: 1\n  fragment_seconds: 0.5\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  token_file: {tmp_path / 'token'}\n"
    )
    return config


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return output


def test_vigil_run_serves_the_api_that_vigil_status_reads(tmp_path: Path) -> None:
    port = free_port()
    config = daemon_config(tmp_path, port)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "VIGIL_CONFIG": ""})
    try:
        status = [sys.executable, "-m", "controller.cli", "status", "--config", str(config)]
        deadline = time.monotonic() + WAIT_SECONDS
        while (result := subprocess.run(status, capture_output=True, text=True)).returncode != 0:
            assert proc.poll() is None, "vigil run exited"
            assert time.monotonic() < deadline, result
            time.sleep(0.1)
    finally:
        output = stop_daemon(proc)
    assert proc.returncode == 0, output
    assert "recording since" in result.stdout
    assert f"HTTP API listening on http://127.0.0.1:{port}" in output
    assert "actions are disabled: token file" in output


def test_vigil_run_keeps_recording_when_the_api_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = daemon_config(tmp_path, port)
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: closed_segments(tmp_path / "rec") or proc.poll() is not None,
                       what="a closed segment")
        finally:
            output = stop_daemon(proc)
    assert proc.returncode == 0, output
    assert closed_segments(tmp_path / "rec"), output
    assert f"HTTP API not started: 127.0.0.1:{port} is already in use" in output
    assert "recording goes on without the API" in output
