"""Upload to a real S3 server (moto's server mode on loopback, through a proxy of our own).

Footage is real H.264 in MP4 (PyAV) with the synthetic camera's frame-number code, written
under the disk layout the recorder uses; the uploader is the daemon's own, its queue on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Tiny parts in tests: moto reads its minimum part size from the environment when it is imported.
os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", "1024")
pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
pytest.importorskip("moto", reason="moto[server] is not installed (the dev extra)")

from controller import cli
from controller.config.schema import RecordingConfig
from controller.core.events import HourMerged, SegmentClosed
from controller.keys import signer_for
from controller.storage.merge import merge_hour
from controller.storage.retention import RetentionPolicy, enforce_retention
from controller.surfaces.fmp4 import scan_fragmented
from controller.surfaces.upload import Uploader, UploadSettings
from controller.surfaces.upload_queue import QUEUE_DIR_NAME
from controller.verify import verify
from hw import framecode
from hw.footage import PARTIAL_SUFFIX, hour_folder_for
from hw.synthetic import FrameCounter
from hw.writer import ClosedSegment
from tests.e2e.s3_server import ACCESS, BUCKET, Proxy, client, moto_server
from tests.helpers import frame_numbers, gaps, segments
from tests.pasthours import past_hour_start, record
from tests.tmpfs import mounted_tmpfs

PREFIX = "cam-1/"
# Hang guards: the uploader runs at nice 19, which a busy machine starves for long stretches.
WAIT = 300.0


def write_segment(root: Path, start: float, first: int, frames: int, *, noise: bool = True) -> Path:
    """A real MP4 segment at ROOT/YYYY-MM-DD/HH/NAME.mp4, frames numbered from `first`."""
    when = datetime.fromtimestamp(start, UTC)
    folder = root / when.strftime("%Y-%m-%d") / when.strftime("%H")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (when.strftime("%Y%m%dT%H%M%SZ") + ".mp4")
    rng = np.random.default_rng(first)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for n in range(first, first + frames):
            luma = (
                rng.integers(0, 256, (240, 320), dtype=np.uint8) if noise else np.zeros((240, 320), np.uint8)
            )
            framecode.draw(luma, n)
            yuv = np.concatenate([luma, np.full((120, 320), 128, np.uint8)])
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def settings(url: str, **kw: object) -> UploadSettings:
    base: dict[str, object] = {
        "bucket": BUCKET,
        "key_prefix": PREFIX,
        "endpoint_url": url,
        "region": "us-east-1",
        "part_bytes": 64 * 1024,
        "verify": "download",
        "retry_max_seconds": 2.0,
    }
    base.update(kw)
    return UploadSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Proxy]]:
    for name, value in ACCESS.items():
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        host, port = url.removeprefix("http://").split(":")
        proxy = Proxy((host, int(port)))
        proxy.start()
        try:
            yield url, proxy
        finally:
            proxy.close()


def bucket_bytes(url: str, key: str) -> bytes:
    return client(url).get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined,no-any-return]


def test_closed_segments_land_byte_identical_under_documented_keys(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    t0 = 1_700_000_000.0
    files = [write_segment(root, t0 + 60 * i, 10 * i, 10) for i in range(3)]
    uploader = Uploader(settings(proxy.url), roots=lambda: [root])
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    for path in files:
        key = PREFIX + path.relative_to(root).as_posix()
        assert key.startswith(PREFIX + "2023-11-14/22/20231114T22")  # <unit>/YYYY-MM-DD/HH/NAME.mp4
        assert bucket_bytes(url, key) == path.read_bytes()
        item = uploader.queue.get(path)
        assert item is not None and item.state == "done" and item.checksum
        record = json.loads(next((root / QUEUE_DIR_NAME).glob("*.json")).read_text())
        assert record["state"] == "done" and record["checksum"]
        assert uploader.queue.is_uploaded(path)
    # multipart with SHA-256 per part: the object's composite checksum is kept by the bucket
    attrs = client(url).get_object_attributes(  # type: ignore[attr-defined]
        Bucket=BUCKET, Key=PREFIX + files[0].relative_to(root).as_posix(), ObjectAttributes=["Checksum"]
    )
    stored = uploader.queue.get(files[0])
    assert stored is not None and stored.checksum is not None
    assert attrs["Checksum"]["ChecksumSHA256"] == stored.checksum.split("-")[0]
    assert proxy.parts_received >= 2


def test_flipped_byte_in_a_part_is_detected_and_uploaded_again(s3: tuple[str, Proxy], tmp_path: Path) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    path = write_segment(root, 1_700_000_000.0, 0, 20)
    proxy.flip_next_part = True
    uploader = Uploader(settings(proxy.url), roots=lambda: [root])
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    assert proxy.flipped == 1
    assert uploader.stats.mismatches == 1
    assert bucket_bytes(url, PREFIX + path.relative_to(root).as_posix()) == path.read_bytes()


def test_the_bandwidth_cap_is_never_exceeded_by_more_than_ten_percent(s3: tuple[str, Proxy],
                                                                     tmp_path: Path) -> None:
    _, proxy = s3
    root = tmp_path / "rec"
    write_segment(root, 1_700_000_000.0, 0, 40)
    size = sum(p.stat().st_size for p in root.rglob("*.mp4"))
    # What this machine manages without a cap (same server, same file), to cap well below it.
    free = Uploader(settings(proxy.url, verify="checksum", key_prefix="uncapped/"), roots=lambda: [root])
    started = time.monotonic()
    assert free.upload_all(deadline=started + WAIT)
    uncapped = size / (time.monotonic() - started)
    assert free.stop()  # lets go of the root's queue
    for path in list((root / QUEUE_DIR_NAME).iterdir()):
        path.unlink()  # the same file again, under the capped run's keys
    cap = min(uncapped / 4, size / 6.0)  # at least six seconds at the cap
    uploader = Uploader(
        settings(proxy.url, bandwidth_bytes_per_second=cap, verify="checksum"), roots=lambda: [root]
    )
    started = time.monotonic()
    assert uploader.upload_all(deadline=started + 4 * WAIT)
    elapsed = time.monotonic() - started
    rate = uploader.stats.sent_bytes / elapsed
    assert uploader.stats.sent_bytes == size
    # The cap holds: never faster (a busy machine may make it slower, which is no fault of the cap;
    # the rate it reaches is bench/upload.py's business).
    assert rate <= 1.1 * cap, f"rate {rate:.0f} B/s against a cap of {cap:.0f} B/s"


def test_kill_9_mid_multipart_resumes_from_stored_parts(s3: tuple[str, Proxy], tmp_path: Path) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    path = write_segment(root, 1_700_000_000.0, 0, 40)
    parts_total = -(-path.stat().st_size // (32 * 1024))
    assert parts_total >= 6
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from controller.surfaces.upload import Uploader, UploadSettings\n"
        "root = Path(sys.argv[1])\n"
        "s = UploadSettings(bucket=sys.argv[2], key_prefix='cam-1/', endpoint_url=sys.argv[3],\n"
        "    region='us-east-1', part_bytes=32 * 1024, verify='download',\n"
        "    bandwidth_bytes_per_second=float(sys.argv[4]))\n"
        "u = Uploader(s, roots=lambda: [root])\n"
        "sys.exit(0 if u.upload_all(deadline=time.monotonic() + 120) else 1)\n"
    )
    env = {**os.environ, **ACCESS}
    slow = subprocess.Popen([sys.executable, "-c", script, str(root), BUCKET, proxy.url, "40000"], env=env)
    record_dir = root / QUEUE_DIR_NAME
    deadline = time.monotonic() + WAIT
    while True:
        records = (
            [json.loads(p.read_text()) for p in record_dir.glob("*.json")] if record_dir.is_dir() else []
        )
        if records and len(records[0]["parts"]) >= 2:
            break
        assert slow.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait()
    stored = len(json.loads(next(record_dir.glob("*.json")).read_text())["parts"])
    sent_before = proxy.parts_received
    fast = subprocess.run(
        [sys.executable, "-c", script, str(root), BUCKET, proxy.url, "0"], env=env, timeout=WAIT
    )
    assert fast.returncode == 0
    resent = proxy.parts_received - sent_before
    assert resent == parts_total - stored, (resent, parts_total, stored)
    assert bucket_bytes(url, PREFIX + path.relative_to(root).as_posix()) == path.read_bytes()


def test_endpoint_down_then_back_everything_uploads_one_alert_each_way(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    alerts: list[tuple[bool, str]] = []
    uploader = Uploader(
        settings(proxy.url, retry_max_seconds=2.0),
        roots=lambda: [root],
        alert=lambda failing, message: alerts.append((failing, message)),
    )
    proxy.is_down = True
    uploader.start()
    try:
        files = []
        for i in range(5):  # footage keeps arriving while the endpoint is down
            files.append(write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10))
            from controller.core.events import SegmentClosed

            uploader.when_event(SegmentClosed(files[-1], 10, 0.0, 1.0, files[-1].stat().st_size))
        deadline = time.monotonic() + WAIT
        while not alerts:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert uploader.backlog().files == 5
        assert uploader.stats.failures >= 1
        proxy.is_down = False
        assert uploader.wait_idle(WAIT)
    finally:
        assert uploader.stop()
    assert [failing for failing, _ in alerts] == [True, False]
    numbers: list[int] = []
    for path in files:
        data = bucket_bytes(url, PREFIX + path.relative_to(root).as_posix())
        assert data == path.read_bytes()
        numbers.extend(frame_numbers(path))
    assert gaps(numbers) == [] and numbers[0] == 0


def test_retention_deletes_uploaded_first_and_alerts_on_unuploaded(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    _, proxy = s3
    with mounted_tmpfs(tmp_path / "card", "16m") as card:
        root = card / "rec"
        uploaded = [write_segment(root, 1_700_000_000.0 + 60 * (10 + i), 100 + 10 * i, 10) for i in range(3)]
        uploader = Uploader(settings(proxy.url), roots=lambda: [root])
        assert uploader.upload_all(deadline=time.monotonic() + WAIT)
        # older footage that is not in the bucket (the endpoint was away when it was recorded)
        backlog = [write_segment(root, 1_700_000_000.0 + 60 * i, 10 * i, 10) for i in range(3)]
        uploader.queue.scan([root])
        assert all(uploader.queue.is_uploaded(p) for p in uploaded)
        assert not any(uploader.queue.is_uploaded(p) for p in backlog)
        st = os.statvfs(card)
        filler = card / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 2 * 2**20))  # 2 MiB left free
        st = os.statvfs(card)
        free = st.f_bavail * st.f_frsize
        # a reserve that all the uploaded files and part of one more can make room for
        need = free + sum(p.stat().st_size for p in uploaded) + backlog[0].stat().st_size // 2
        assert need < st.f_blocks * st.f_frsize / 2
        policy = RetentionPolicy(retention_days=0, reserve_mb=need / 2**20, reserve_percent=0)
        report = enforce_retention([root], policy, now=time.time(), is_uploaded=uploader.queue.is_uploaded)
        deleted = [d.path for d in report.deletions]
        assert deleted == [*uploaded, backlog[0]]  # uploaded first, though newer; then the oldest
        assert [d.uploaded for d in report.deletions] == [True, True, True, False]
        assert backlog[1].exists() and backlog[2].exists()


def _one_segment_uploaded(root: Path, uploader: Uploader) -> tuple[float, Path]:
    """An hour of the past recorded in one piece (the default segment length), closed and
    uploaded: (the hour's start, the segment)."""
    start = past_hour_start(2)
    (closed,) = record(root, wallclock=start, frames=120, counter=FrameCounter(), fps=4.0,
                       segment_seconds=RecordingConfig().segment_seconds, fragment_seconds=1.0)
    uploader.when_event(SegmentClosed(closed.path, closed.frames, closed.started_wallclock,
                                      closed.duration_seconds, closed.path.stat().st_size))
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    return start, closed.path


def test_an_hour_adopted_from_an_uploaded_segment_is_copied_in_the_bucket_not_sent_again(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    uploader = Uploader(settings(proxy.url), roots=lambda: [root])
    start, segment = _one_segment_uploaded(root, uploader)
    sent = proxy.body_bytes
    assert sent >= segment.stat().st_size

    (result,) = merge_hour(hour_folder_for(root, start))  # write once: the segment renamed
    assert result.source_paths == (segment,)
    uploader.when_event(HourMerged(result.hour, result.path, result.source_paths))
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    assert proxy.body_bytes == sent  # not one more footage byte over the uplink
    assert uploader.stats.copied_files == 1
    hour_key = PREFIX + result.path.relative_to(root).as_posix()
    assert bucket_bytes(url, hour_key) == result.path.read_bytes()
    assert frame_numbers(result.path) == list(range(120))
    assert uploader.queue.is_uploaded(result.path)


def test_an_adopted_hour_whose_segment_left_the_bucket_is_sent_as_usual(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    uploader = Uploader(settings(proxy.url), roots=lambda: [root])
    start, segment = _one_segment_uploaded(root, uploader)
    client(url).delete_object(Bucket=BUCKET, Key=PREFIX + segment.relative_to(root).as_posix())  # type: ignore[attr-defined]
    sent = proxy.body_bytes

    (result,) = merge_hour(hour_folder_for(root, start))
    uploader.when_event(HourMerged(result.hour, result.path, result.source_paths))
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    assert uploader.stats.copied_files == 0
    assert proxy.body_bytes - sent >= result.path.stat().st_size  # sent again, in full
    assert bucket_bytes(url, PREFIX + result.path.relative_to(root).as_posix()) == result.path.read_bytes()


def _growing_from_a_recording(tmp_path: Path) -> tuple[bytes, Path, Path, list[ClosedSegment]]:
    """A real hour-long recording's bytes, and where its open segment would be under a new root:
    (bytes, the final path, its .partial, the recorded segments)."""
    source_root, root = tmp_path / "recorded", tmp_path / "rec"
    closed = record(source_root, wallclock=past_hour_start(2), frames=160, counter=FrameCounter(), fps=4.0,
                    segment_seconds=RecordingConfig().segment_seconds, fragment_seconds=1.0)
    final = root / closed[0].path.relative_to(source_root)
    final.parent.mkdir(parents=True)
    return closed[0].path.read_bytes(), final, final.with_name(final.name + PARTIAL_SUFFIX), closed


def test_an_open_segment_goes_up_part_by_part_while_it_grows_and_its_close_sends_only_the_rest(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    """The writer only appends to an open segment (fragments, fsynced), so its `.partial`
    at any moment is a prefix of the closed file: grown here stage by stage from a real
    recording's bytes, as the writer would."""
    url, proxy = s3
    whole, final, partial, closed = _growing_from_a_recording(tmp_path)
    root = tmp_path / "rec"
    part = 16 * 1024
    assert len(whole) > 4 * part
    uploader = Uploader(settings(proxy.url, part_bytes=part), roots=lambda: [root],
                        open_segments=lambda: [partial] if partial.exists() else [])
    sent_while_open = 0
    for grown in (part // 2, 2 * part + 100, 3 * part, len(whole) - 10):
        partial.write_bytes(whole[:grown])
        while uploader.upload_growing():
            sent_while_open += 1
        assert sent_while_open == grown // part  # every whole part, none beyond what is written
        assert not uploader.queue.pending()  # an open segment is no backlog
    item = uploader.queue.get(final)
    assert item is not None and item.state == "growing" and item.upload_id is not None
    listed = client(url).list_parts(Bucket=BUCKET, Key=item.key, UploadId=item.upload_id)  # type: ignore[attr-defined]
    assert len(listed["Parts"]) == sent_while_open  # in the bucket before the segment closed

    partial.write_bytes(whole)
    partial.rename(final)  # closed
    before = proxy.parts_received
    uploader.when_event(SegmentClosed(final, closed[0].frames, closed[0].started_wallclock,
                                      closed[0].duration_seconds, final.stat().st_size))
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    total_parts = -(-len(whole) // part)
    assert proxy.parts_received - before == total_parts - sent_while_open  # only the rest
    assert bucket_bytes(url, item.key) == whole
    assert uploader.queue.is_uploaded(final)


def test_salvage_completes_what_a_lost_unit_left_unfinished_as_playable_footage(
    s3: tuple[str, Proxy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, proxy = s3
    whole, final, partial, _ = _growing_from_a_recording(tmp_path)
    root = tmp_path / "rec"
    part = 16 * 1024
    partial.write_bytes(whole[: len(whole) * 2 // 3])
    uploader = Uploader(settings(proxy.url, part_bytes=part), roots=lambda: [root],
                        open_segments=lambda: [partial])
    while uploader.upload_growing():
        pass
    sent = len(uploader.queue.get(final).parts)  # type: ignore[union-attr]
    assert sent >= 2
    # The unit is gone. From another machine, with the unit's upload settings:
    config = tmp_path / "vigil.yaml"
    config.write_text(f"upload:\n  enabled: true\n  bucket: {BUCKET}\n  endpoint_url: {url}\n"
                      f"  region: us-east-1\n  prefix: {PREFIX}\n")
    assert cli.main(["upload", "salvage", "--config", str(config)]) == 0
    assert "completed s3://" in capsys.readouterr().out
    key = PREFIX + final.relative_to(root).as_posix()
    salvaged = bucket_bytes(url, key)
    assert salvaged == whole[: sent * part]
    out = tmp_path / "salvaged.mp4"
    out.write_bytes(salvaged)
    # Played as a player would: every whole fragment, until the part boundary cuts one.
    numbers: list[int] = []
    with av.open(str(out)) as container:
        try:
            for packet in container.demux(video=0):
                numbers += [framecode.read_video_frame(f) for f in packet.decode()]
        except av.error.InvalidDataError:
            pass  # the cut fragment's last packet
    fragments = scan_fragmented(out).fragments  # whole ones: what export and verify read
    assert fragments and len(numbers) >= sum(f.frames for f in fragments) >= 4
    assert numbers == list(range(len(numbers)))  # from the first frame, no hole
    assert cli.main(["upload", "salvage", "--config", str(config)]) == 0  # nothing left: says so
    assert "nothing unfinished" in capsys.readouterr().out


def test_uploaded_footage_carries_its_signed_manifest_and_verifies_from_the_bucket(
    s3: tuple[str, Proxy], tmp_path: Path
) -> None:
    url, proxy = s3
    root = tmp_path / "rec"
    signer = signer_for(Ed25519PrivateKey.generate(), "unit-a")
    start = past_hour_start(2)
    record(root, wallclock=start, frames=120, counter=FrameCounter(), fps=4.0, segment_seconds=10.0,
           fragment_seconds=1.0, signer=signer)
    own = "signed-unit/"  # moto keeps one store per process: this test's objects alone
    uploader = Uploader(settings(proxy.url, key_prefix=own), roots=lambda: [root])
    assert uploader.upload_all(deadline=time.monotonic() + WAIT)
    # Everything the bucket holds, downloaded into a folder of its own, as a recipient would.
    copy = tmp_path / "from-the-bucket"
    listed = client(url).list_objects_v2(Bucket=BUCKET, Prefix=own)["Contents"]  # type: ignore[attr-defined]
    keys = sorted(o["Key"] for o in listed)
    footage = [k for k in keys if k.endswith(".mp4")]
    assert len(footage) == len(segments(root)) >= 2, keys
    assert [k for k in keys if k not in footage] == [k + ".manifest.json" for k in footage]
    for key in keys:
        target = copy / key.removeprefix(own)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bucket_bytes(url, key))
    report = verify([copy], key=signer.public_key)
    assert report.is_ok, report.findings
    # A byte changed in the bucket's copy of the footage is found by the same check.
    victim = sorted(copy.rglob("*.mp4"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert not verify([copy], key=signer.public_key).is_ok
