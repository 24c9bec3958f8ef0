"""The upload backlog in the health score and the status snapshot, and which S3 errors are
permanent (botocore's own exception classes, as boto3 raises them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.core.health import (
    UPLOAD_BEHIND_FROM_SECONDS,
    UPLOAD_BEHIND_FULL_SECONDS,
    UPLOAD_WEIGHT,
    HealthInputs,
    score,
)
from controller.core.snapshot import UploadBacklog
from controller.surfaces.upload import PermanentUploadError, UploadSettings, classify
from controller.surfaces.upload_queue import UploadQueue


def inputs(**changes: object) -> HealthInputs:
    base: dict[str, object] = {
        "state": "recording", "configured_fps": 30.0, "achieved_fps": 30.0, "drop_fraction": 0.0,
        "errors_per_minute": 0.0, "disk_free_fraction": 0.5, "memory_fraction": 0.05,
        "temperature_c": None,
    }
    base.update(changes)
    return HealthInputs(**base)  # type: ignore[arg-type]


def test_upload_off_or_caught_up_costs_nothing() -> None:
    assert score(inputs()).score == 100
    assert "upload" not in score(inputs()).penalties
    assert score(inputs(upload_behind_seconds=0.0)).score == 100
    assert score(inputs(upload_behind_seconds=UPLOAD_BEHIND_FROM_SECONDS)).score == 100


def test_a_growing_backlog_lowers_the_score_up_to_its_weight() -> None:
    halfway = (UPLOAD_BEHIND_FROM_SECONDS + UPLOAD_BEHIND_FULL_SECONDS) / 2
    half = score(inputs(upload_behind_seconds=halfway))
    assert half.penalties["upload"] == pytest.approx(UPLOAD_WEIGHT / 2)
    assert half.score == 95
    full = score(inputs(upload_behind_seconds=10 * UPLOAD_BEHIND_FULL_SECONDS))
    assert full.score == 100 - UPLOAD_WEIGHT
    assert full.reason == f"upload {10 * UPLOAD_BEHIND_FULL_SECONDS / 60:.0f} min behind"


def test_a_permanent_error_costs_the_whole_weight_at_once_and_is_named() -> None:
    health = score(inputs(upload_behind_seconds=5.0, upload_stopped_by="NoSuchBucket"))
    assert health.score == 100 - UPLOAD_WEIGHT
    assert health.reason == "upload stopped by NoSuchBucket"


def test_the_snapshot_shape_carries_the_backlog() -> None:
    backlog = UploadBacklog(files=3, bytes=1234, oldest_pending_seconds=61.5, endpoint="stopped",
                            stopped_by="AccessDenied", fix="grant ...")
    assert backlog.as_dict()["files"] == 3
    assert backlog.as_dict()["stopped_by"] == "AccessDenied"


def test_queue_backlog_follows_saves_and_forgets(tmp_path: Path) -> None:
    clock = [1000.0]
    queue = UploadQueue(key_prefix="u/", clock=lambda: clock[0])
    root = tmp_path / "rec"
    folder = root / "2026-01-02" / "03"
    folder.mkdir(parents=True)
    paths = []
    for i in range(3):
        path = folder / f"20260102T0300{i:02d}Z.mp4"
        path.write_bytes(b"x" * (100 + i))
        paths.append(path)
        queue.add(root, path)
        clock[0] += 10
    backlog = queue.backlog()
    assert (backlog.files, backlog.bytes, backlog.oldest_age_seconds) == (3, 303, 30.0)
    item = queue.get(paths[0])
    assert item is not None
    item.state = "done"
    queue.save(item)
    item = queue.get(paths[1])
    assert item is not None
    item.last_error = "EndpointConnectionError: down"
    queue.save(item)
    backlog = queue.backlog()
    assert (backlog.files, backlog.bytes, backlog.oldest_age_seconds, backlog.failed) == (2, 203, 20.0, 1)
    assert queue.done_count() == 1
    reread = UploadQueue(key_prefix="u/")
    reread.load(root, read_only=True)
    again = reread.get(paths[1])
    assert again is not None and again.last_error == "EndpointConnectionError: down"


SETTINGS = UploadSettings(bucket="footage", key_prefix="cam/", endpoint_url="http://s3.example:9000")


def exceptions() -> Any:
    return pytest.importorskip("botocore.exceptions", reason="botocore is not installed (pip install boto3)")


def client_error(code: str, status: int, operation: str = "PutObject") -> Exception:
    error: Exception = exceptions().ClientError(
        {"Error": {"Code": code, "Message": f"{code} said the server"},
         "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
    return error


@pytest.mark.parametrize(("code", "status", "fix_names"), [
    ("NoSuchBucket", 404, "create it, or fix upload.bucket"),
    ("AccessDenied", 403, "s3:PutObject"),
    ("InvalidAccessKeyId", 403, "fix the credentials"),
    ("SignatureDoesNotMatch", 403, "AWS_SECRET_ACCESS_KEY"),
    ("403", 403, "403"),
    ("AuthorizationHeaderMalformed", 400, "upload.region"),
])
def test_errors_retrying_cannot_fix_are_permanent_and_say_what_to_fix(code: str, status: int,
                                                                      fix_names: str) -> None:
    before = time.time()
    stoppage = classify(client_error(code, status), SETTINGS)
    assert stoppage is not None
    assert stoppage.code == code
    assert fix_names in stoppage.fix
    assert code in stoppage.error
    assert stoppage.since >= before
    if code == "NoSuchBucket":
        assert "footage" in stoppage.fix and "http://s3.example:9000" in stoppage.fix


@pytest.mark.parametrize("make", [
    lambda: client_error("InternalError", 500),
    lambda: client_error("SlowDown", 503),
    lambda: client_error("RequestTimeout", 400),
    lambda: client_error("ExpiredToken", 400),  # the credential chain renews it
    lambda: exceptions().EndpointConnectionError(endpoint_url="http://s3.example:9000"),
    lambda: exceptions().ConnectTimeoutError(endpoint_url="http://s3.example:9000"),
    lambda: OSError("connection reset"),
], ids=["500", "SlowDown", "RequestTimeout", "ExpiredToken", "refused", "connect-timeout", "reset"])
def test_network_and_server_trouble_is_transient(make: Callable[[], Exception]) -> None:
    assert classify(make(), SETTINGS) is None


def test_missing_credentials_and_a_server_without_checksums_are_permanent() -> None:
    stoppage = classify(exceptions().NoCredentialsError(), SETTINGS)
    assert stoppage is not None and stoppage.code == "NoCredentials"
    assert "upload.credentials_file" in stoppage.fix
    stoppage = classify(PermanentUploadError("the endpoint keeps no SHA-256"), SETTINGS)
    assert stoppage is not None and "upload.verify: download" in stoppage.fix
