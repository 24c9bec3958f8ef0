"""Operating the upload: permanent errors, `vigil upload status` / `vigil upload now` (on a card
and through a running daemon), and a live recorder whose endpoint is down.

A real S3 server (moto's server mode on loopback) behind the proxy of tests/e2e/s3_server.py,
which can refuse every connection (an endpoint that is down). Footage is real H.264 from the
synthetic camera; its frame numbers prove that recording lost nothing while upload failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", "1024")
pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
pytest.importorskip("moto", reason="moto[server] is not installed (the dev extra)")

from controller.surfaces.upload import PERMANENT_RETRY_SECONDS, Uploader, UploadSettings
from controller.surfaces.upload_queue import UploadQueue
from tests.e2e.s3_server import ACCESS, BUCKET, Proxy, client, moto_server
from tests.e2e.test_upload import write_segment
from tests.helpers import gaps, recorded_numbers, segments
from tests.processes import free_port, post_action, stop_vigil

REPO = Path(__file__).resolve().parents[2]
# Hang guards: the uploader runs at nice 19, which a busy machine starves for long stretches.
WAIT = 300.0
TOKEN = "upload-test-token-0123456789"
MISSING = "vigil-no-such-bucket"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Proxy]]:
    for name, value in ACCESS.items():
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        # moto keeps its buckets per process, across servers: start from an empty one
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10)
        client(url).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        host, port = url.removeprefix("http://").split(":")
        proxy = Proxy((host, int(port)))
        proxy.start()
        try:
            yield url, proxy
        finally:
            proxy.close()


def settings(url: str, **kw: Any) -> UploadSettings:
    base: dict[str, Any] = {"bucket": BUCKET, "key_prefix": "cam-1/", "endpoint_url": url,
                            "region": "us-east-1", "part_bytes": 64 * 1024, "verify": "download",
                            "retry_max_seconds": 2.0}
    base.update(kw)
    return UploadSettings(**base)


def object_bytes(url: str, key: str) -> bytes:
    return client(url).get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined,no-any-return]


def keys_in_bucket(url: str, bucket: str = BUCKET) -> set[str]:
    reply = client(url).list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    return {entry["Key"] for entry in reply.get("Contents", [])}


def sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_no_such_bucket_stops_at_once_with_one_alert_keeps_footage_and_goes_on_once_fixed(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    files = [write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10) for i in range(3)]
    alerts: list[tuple[bool, str]] = []
    uploader = Uploader(settings(proxy.url, bucket=MISSING), roots=lambda: [root],
                        alert=lambda failing, message: alerts.append((failing, message)))
    # A deadline far away: a permanent error must end it at once, not be retried until then.
    assert not uploader.upload_all(deadline=time.monotonic() + 3600)
    stoppage = uploader.stoppage
    assert stoppage is not None and stoppage.code == "NoSuchBucket"
    assert uploader.stats.failures == 1 and uploader.stats.permanent_failures == 1
    assert len(alerts) == 1 and alerts[0][0] is True
    assert "NoSuchBucket" in alerts[0][1] and "create it, or fix upload.bucket" in alerts[0][1]
    assert MISSING in alerts[0][1]
    # held: the next try is an hour off, not a backoff step
    assert uploader.retry_at - time.monotonic() > PERMANENT_RETRY_SECONDS - 60
    assert uploader.summary().endpoint == "stopped" and uploader.summary().stopped_by == "NoSuchBucket"
    status = uploader.status()
    assert status["stopped"]["code"] == "NoSuchBucket" and status["failed"] == 1
    assert "NoSuchBucket" in status["failed_items"][0]["error"]
    # the footage stays, and so does its record, pending
    assert all(path.exists() for path in files)
    assert all((item := uploader.queue.get(p)) is not None and item.state == "pending" for p in files)
    reread = UploadQueue(key_prefix="cam-1/")
    reread.load(root, read_only=True)
    assert reread.backlog().files == 3 and reread.backlog().failed == 1
    # fixed outside vigil (the bucket made): `upload now` lifts the hold and everything goes up
    client(url).create_bucket(Bucket=MISSING)  # type: ignore[attr-defined]
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    assert uploader.stoppage is None and uploader.summary().endpoint == "ok"
    assert [failing for failing, _ in alerts] == [True, False]
    for path in files:
        key = "cam-1/" + path.relative_to(root).as_posix()
        data = client(url).get_object(Bucket=MISSING, Key=key)["Body"].read()  # type: ignore[attr-defined]
        assert data == path.read_bytes()


def test_a_transient_failure_that_turns_permanent_swaps_the_alert(s3: tuple[str, Proxy],
                                                                  tmp_path: Path) -> None:
    _, proxy = s3
    root = tmp_path / "rec"
    write_segment(root, 1_700_000_000.0, 0, 10)
    alerts: list[tuple[bool, str]] = []
    uploader = Uploader(settings(proxy.url, bucket=MISSING), roots=lambda: [root],
                        alert=lambda failing, message: alerts.append((failing, message)))
    proxy.is_down = True
    uploader.request_now()
    assert not uploader.run_once()
    assert uploader.stoppage is None and uploader.summary().endpoint == "failing"
    proxy.is_down = False
    uploader.retry_now()
    assert not uploader.run_once()
    assert uploader.stoppage is not None and uploader.stoppage.code == "NoSuchBucket"
    assert [failing for failing, _ in alerts] == [True, False, True]
    assert "failing" in alerts[0][1] and "stopped by NoSuchBucket" in alerts[2][1]


def vigil(*args: str, env: dict[str, str] | None = None,
          timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **ACCESS, **(env or {})})


def upload_config(path: Path, endpoint: str, bucket: str, *, root: Path, api_port: int | None = None,
                  token_file: Path | None = None) -> Path:
    lines = [
        "unit:\n  id: cam-live",
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 15",
        f"recording:\n  root: {root}\n  segment_seconds: 2\n  fragment_seconds: 0.5\n  merge: 'off'",
        "storage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0",
        "gpio:\n  enabled: false",
        (f"api:\n  listen: 127.0.0.1:{api_port}\n  token_file: {token_file}" if api_port is not None
         else "api:\n  enabled: false"),
        f"upload:\n  enabled: true\n  endpoint_url: {endpoint}\n  bucket: {bucket}\n  region: us-east-1\n"
        "  verify: download\n  retry_max_seconds: 2\n  timeout_seconds: 5",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_upload_status_and_now_on_a_card_offline(s3: tuple[str, Proxy], tmp_path: Path) -> None:
    url, proxy = s3
    root = tmp_path / "card"
    files = [write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10) for i in range(3)]
    # nothing queued yet: status counts the closed files and writes nothing
    status = vigil("upload", "status", "--root", str(root), "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert (body["pending"], body["unqueued"], body["done"]) == (3, 3, 0)
    assert body["pending_bytes"] == sum(p.stat().st_size for p in files)
    assert not (root / ".vigil-upload").exists()
    # the wrong bucket: a clear error naming what to fix, exit 1, nothing lost
    wrong = upload_config(tmp_path / "wrong.yaml", proxy.url, MISSING, root=root)
    now = vigil("upload", "now", "--root", str(root), "--config", str(wrong))
    assert now.returncode == 1, now.stderr
    assert "stopped by NoSuchBucket" in now.stderr and f"bucket {MISSING} does not exist" in now.stderr
    assert all(p.exists() for p in files)
    status = vigil("upload", "status", "--root", str(root))
    assert status.returncode == 0, status.stderr
    assert "pending 3 file(s)" in status.stdout and "failed 1" in status.stdout
    assert "NoSuchBucket" in status.stdout
    # the right bucket: everything up, verified, exit 0
    right = upload_config(tmp_path / "right.yaml", proxy.url, BUCKET, root=root)
    now = vigil("upload", "now", "--root", str(root), "--config", str(right))
    assert now.returncode == 0, now.stderr
    assert "3 file(s) uploaded and verified" in now.stdout
    assert "uploaded 3 of 3 file(s), 0 left" in now.stderr
    for path in files:
        assert object_bytes(url, "cam-live/" + path.relative_to(root).as_posix()) == path.read_bytes()
    body = json.loads(vigil("upload", "status", "--root", str(root), "--json").stdout)
    assert (body["pending"], body["done"], body["failed"]) == (0, 3, 0)


def test_upload_now_on_a_card_another_uploader_holds_is_refused_until_it_lets_go(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "card"
    files = [write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10) for i in range(2)]
    config = upload_config(tmp_path / "vigil.yaml", proxy.url, BUCKET, root=root)
    proxy.is_down = True  # the holder (as a daemon would be) is stuck retrying a dead endpoint
    holder = Uploader(settings(proxy.url, key_prefix="cam-live/"), roots=lambda: [root])
    holder.request_now()
    assert not holder.run_once() and holder.queue.backlog().files == 2

    refused = vigil("upload", "now", "--root", str(root), "--config", str(config))
    assert refused.returncode == 1, refused.stderr
    assert f"another uploader (pid {os.getpid()}) holds the upload queue of {root}" in refused.stderr
    assert "vigil upload now` (no --root)" in refused.stderr
    assert keys_in_bucket(url) & {"cam-live/" + p.relative_to(root).as_posix() for p in files} == set()

    assert holder.stop()  # it lets go; the card's own `upload now` takes over
    proxy.is_down = False
    now = vigil("upload", "now", "--root", str(root), "--config", str(config))
    assert now.returncode == 0, now.stderr
    for path in files:
        assert object_bytes(url, "cam-live/" + path.relative_to(root).as_posix()) == path.read_bytes()


def test_upload_now_with_upload_off_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "card"
    root.mkdir()
    config = tmp_path / "vigil.yaml"
    config.write_text(f"recording:\n  root: {root}\n")
    now = vigil("upload", "now", "--root", str(root), "--config", str(config))
    assert now.returncode == 78
    assert "upload is off" in now.stderr and "upload.enabled: true" in now.stderr


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def wait_for(predicate: Any, what: str, proc: subprocess.Popen[str], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"vigil exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.2)


def test_live_recorder_with_the_endpoint_down_loses_no_frame_and_the_backlog_drains_verified(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    config = upload_config(tmp_path / "vigil.yaml", proxy.url, BUCKET, root=root, api_port=port,
                           token_file=token_file)
    proxy.is_down = True  # the endpoint is down from the start
    log_path = tmp_path / "vigil.log"
    log = log_path.open("wb")  # a file, not a pipe nobody reads: it cannot fill up
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ACCESS})
    log.close()
    try:
        def status() -> Any:
            try:
                return get_json(f"{api}/upload/status")
            except OSError:
                return None

        def backlog_while_down() -> bool:
            body = status()
            return body is not None and body["endpoint"] == "failing" and body["pending"] >= 3

        wait_for(backlog_while_down, "a backlog of 3 files with the endpoint down", proc)

        def in_snapshot() -> bool:  # rebuilt every loop iteration: it may be a tick behind
            upload = get_json(f"{api}/status")["upload"]
            return bool(upload["files"] >= 3 and upload["endpoint"] == "failing")

        wait_for(in_snapshot, "the backlog in GET /status", proc)
        snap = get_json(f"{api}/status")
        assert snap["state"] == "recording"
        assert snap["upload"]["oldest_pending_seconds"] > 0
        with urllib.request.urlopen(f"{api}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        backlog_line = next(line for line in metrics.splitlines()
                            if line.startswith("vigil_upload_backlog_files "))
        assert float(backlog_line.split()[1]) >= 3
        assert "vigil_upload_endpoint_up 0" in metrics
        cli = vigil("upload", "status", "--url", api)
        assert cli.returncode == 1, cli.stderr  # uploads fail: not 0
        assert "failing" in cli.stdout and "pending" in cli.stdout
        # `upload now` is an action: the token is needed
        assert post_action(f"{api}/actions/upload", "wrong-token") == 401
        assert keys_in_bucket(url) == set()
        # the endpoint comes back: the backlog drains by itself
        closed_while_down = [p for p in segments(root)]
        proxy.is_down = False

        def drained() -> bool:
            wanted = {f"cam-live/{p.relative_to(root).as_posix()}" for p in closed_while_down}
            return wanted <= keys_in_bucket(url)

        wait_for(drained, "the backlog uploaded after the endpoint returned", proc)
        # and `vigil upload now` over the API waits for everything pending, verified
        now = vigil("upload", "now", "--url", api, "--token-file", str(token_file))
        assert now.returncode == 0, now.stderr
        assert "uploaded and verified" in now.stdout
        body = status()
        assert body["now"]["finished"] and body["endpoint"] == "ok" and body["stopped"] is None
        assert get_json(f"{api}/status")["upload"]["endpoint"] == "ok"
        uploaded_keys = keys_in_bucket(url)
    finally:
        stop_vigil(proc)
    output = log_path.read_text()
    numbers = recorded_numbers(root)
    assert numbers and numbers[0] == 0
    assert gaps(numbers) == [], f"frames lost or repeated while upload failed: {gaps(numbers)}"
    assert "works again" in output
    checked = 0
    for path in segments(root):
        key = f"cam-live/{path.relative_to(root).as_posix()}"
        if key in uploaded_keys:
            assert sha256(object_bytes(url, key)) == sha256(path.read_bytes()), key
            checked += 1
    assert checked >= len(closed_while_down)


def test_a_reset_retries_a_stopped_upload_at_once_and_the_snapshot_shows_it(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    from controller.config import load_config
    from controller.daemon import Surfaces, build_controller
    from tests.e2e.conftest import RunningController

    url, proxy = s3
    root = tmp_path / "rec"
    bucket = "vigil-made-later"
    config = upload_config(tmp_path / "vigil.yaml", proxy.url, bucket, root=root)
    loaded = load_config(str(config))
    controller = build_controller(loaded, str(config))
    running = RunningController(controller)
    running.thread.start()
    surfaces = Surfaces(loaded.config, controller)
    surfaces.start()
    try:
        def stopped() -> bool:
            upload = controller.snapshot.upload
            return upload is not None and upload.stopped_by == "NoSuchBucket" and upload.files >= 1

        assert controller.wait_until(stopped, WAIT), controller.snapshot.upload
        upload = controller.snapshot.upload
        assert upload is not None and upload.fix is not None
        assert f"bucket {bucket} does not exist" in upload.fix
        assert controller.snapshot.state == "recording"
        assert controller.wait_until(lambda: controller.snapshot.health is not None
                                     and controller.snapshot.health.penalties.get("upload") == 10.0, WAIT)
        alerts = [a for a in controller.alerts.recent() if a.kind == "upload"]
        assert len(alerts) == 1 and "NoSuchBucket" in alerts[0].message
        uploader = surfaces.uploader
        assert uploader is not None and uploader.retry_at - time.monotonic() > 60  # held, not retried
        client(url).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        controller.post("reset")  # the same config reloaded: the held queue is tried at once

        def going() -> bool:
            upload = controller.snapshot.upload
            return upload is not None and upload.endpoint == "ok" and bool(
                client(url).list_objects_v2(Bucket=bucket).get("KeyCount"))  # type: ignore[attr-defined]

        assert controller.wait_until(going, WAIT), controller.snapshot.upload
        assert surfaces.uploader is uploader  # the same uploader: the settings did not change
        cleared = [a for a in controller.alerts.recent() if a.kind == "upload"]
        assert cleared[-1].message.startswith("cleared:")
    finally:
        surfaces.stop()
        running.stop()
        controller.bus.close()


def test_upload_now_goes_past_the_upload_hours(s3: tuple[str, Proxy], tmp_path: Path) -> None:
    from datetime import datetime

    from controller.surfaces.upload import in_window

    url, proxy = s3
    root = tmp_path / "rec"
    path = write_segment(root, 1_700_000_000.0, 0, 10)
    hour = datetime.now().hour
    hours = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"  # a window that is not now
    assert not in_window(hours, datetime.now())
    uploader = Uploader(settings(proxy.url, hours=hours), roots=lambda: [root])
    uploader.start()
    try:
        progress = uploader.request_now()
        assert progress["files"] == 1 and progress["left"] == 1
        assert uploader.wait_idle(WAIT)
        assert uploader.now_progress() == {**progress, "uploaded": 1, "left": 0, "left_bytes": 0,
                                           "finished": True}
    finally:
        assert uploader.stop()
    assert object_bytes(url, "cam-1/" + path.relative_to(root).as_posix()) == path.read_bytes()


def test_a_file_the_card_cannot_read_goes_last_and_holds_back_neither_the_rest_nor_the_endpoint(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    from tests.fakes.durablefs import DurableFSError, DurableMount

    url, proxy = s3
    try:
        disk = DurableMount(tmp_path / "card", tmp_path / "fs")
        disk.start()
    except DurableFSError as err:
        pytest.fail(f"the durablefs FUSE filesystem did not work on this machine: {err}")
    try:
        root = disk.mountpoint / "rec"
        files = [write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10) for i in range(3)]
        disk.fail_reads(files[0])  # the oldest, first in the upload order: a bad sector
        with pytest.raises(OSError):
            files[0].read_bytes()
        alerts: list[tuple[bool, str]] = []
        uploader = Uploader(settings(proxy.url, order="oldest-first"), roots=lambda: [root],
                            alert=lambda failing, message: alerts.append((failing, message)))
        uploader.request_now()
        outcomes = [uploader.run_once() for _ in range(4)]

        assert outcomes == [False, True, True, False]  # the damaged file, the two others, it again
        for path in files[1:]:
            assert object_bytes(url, "cam-1/" + path.relative_to(root).as_posix()) == path.read_bytes()
        bad = uploader.queue.get(files[0])
        assert bad is not None and bad.state == "pending" and bad.read_failures == 2
        assert bad.last_error is not None and "Input/output error" in bad.last_error
        assert "cam-1/" + files[0].relative_to(root).as_posix() not in keys_in_bucket(url)
        assert uploader.stats.unreadable == 2
        # The endpoint worked all along: no alert, no endpoint backoff while others waited;
        # with only the damaged file left, the next try waits instead of spinning on the card.
        assert alerts == [] and uploader.summary().endpoint == "ok"
        assert uploader.retry_at > time.monotonic()
        reread = UploadQueue(key_prefix="cam-1/")
        reread.load(root, read_only=True)
        assert reread.pending()[-1].path == files[0] and reread.pending()[-1].read_failures == 2
    finally:
        disk.close()
