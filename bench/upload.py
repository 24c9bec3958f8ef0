"""Upload throughput and CPU: vigil's uploader next to boto3's `upload_file`, same files, same
S3 server, same run.

The server is moto's S3 in server mode on loopback, in a process of its own, so the CPU
figures are the client's alone (time.process_time of this process, every thread). The files
are segment-sized runs of random bytes (they do not compress; S3 does not care what they
hold) under the recording layout, ROOT/YYYY-MM-DD/HH/NAME.mp4.

vigil: controller.surfaces.upload.Uploader.upload_all, as `vigil upload now --root` runs it:
one request at a time, SHA-256 of every part and of the whole file, the queue record
fsynced after each part, then `verify: checksum` (the bucket's checksums read back).
Reference: boto3's `upload_file` with its default TransferConfig, what `aws s3 cp` does
(8 MiB parts, up to 10 at once, botocore's default CRC32 checksums, no read-back), and the
same with one thread (max_concurrency=1), which sends parts one at a time as vigil does.
Interleaved runs, so a busy moment of the shared machine hits both.

Lag behind recording: an open segment grown in real time at the default bitrate (appended
once a second, as the writer appends a fragment), the daemon's uploader running its worker
thread; for each part, how old its first byte was when the bucket held it. The worst of these
is how far footage in the bucket trails recording (target: 60 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Figure, table
from bench.rig import free_port, load_note, quiet_logs, workdir
from controller.surfaces.upload import Uploader, UploadSettings
from controller.surfaces.upload_queue import QUEUE_DIR_NAME

BUCKET = "vigil-bench"
ACCESS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1024 * 1024
SERVER_START_SECONDS = 60.0
# A 60 s segment at 1080p30 from the Pi's hardware encoder at its usual ~5 Mbit/s.
SEGMENT_BYTES_AT_DEFAULT_BITRATE = 60 * 5_000_000 // 8


@contextlib.contextmanager
def aws_environment() -> Iterator[None]:
    """The server's test credentials for boto3's standard chain, put back afterwards."""
    saved = {name: os.environ.get(name) for name in ACCESS}
    os.environ.update(ACCESS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """moto's S3 server in its own process on a loopback port; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from moto.server import main; main(sys.argv[1:])",
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def make_files(root: Path, count: int, size: int) -> list[Path]:
    start = datetime(2026, 1, 2, 3, 0, tzinfo=UTC).timestamp()
    files = []
    for i in range(count):
        when = datetime.fromtimestamp(start + 60 * i, UTC)
        folder = root / when.strftime("%Y-%m-%d") / when.strftime("%H")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / when.strftime("%Y%m%dT%H%M%SZ.mp4")
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def boto3_client(url: str) -> object:
    import boto3  # type: ignore[import-untyped]

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def run_vigil(url: str, root: Path, prefix: str, part_bytes: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes) of one `upload now` of every file under root."""
    shutil.rmtree(root / QUEUE_DIR_NAME, ignore_errors=True)
    settings = UploadSettings(bucket=BUCKET, key_prefix=prefix, endpoint_url=url, region="us-east-1",
                              part_bytes=part_bytes, verify="checksum")
    uploader = Uploader(settings, roots=lambda: [root])
    uploader.client()  # a client is made once per daemon: not part of the figure
    cpu, wall = time.process_time(), time.perf_counter()
    finished = uploader.upload_all(deadline=time.monotonic() + 600)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not finished:
        raise RuntimeError(f"vigil's upload did not finish: {uploader.last_error}")
    return wall, cpu, uploader.stats.uploaded_bytes


def run_boto3(url: str, files: list[Path], root: Path, prefix: str, *,
              concurrency: int = 10) -> tuple[float, float, int]:
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

    client = boto3_client(url)
    config = TransferConfig(max_concurrency=concurrency)  # 10: the default, as `aws s3 cp`
    cpu, wall = time.process_time(), time.perf_counter()
    for path in files:
        client.upload_file(str(path), BUCKET, prefix + path.relative_to(root).as_posix(),  # type: ignore[attr-defined]
                           Config=config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, sum(p.stat().st_size for p in files)


def run(*, files: int = 6, file_mb: float = 24.0, part_mb: float = 8.0, runs: int = 3) -> str:
    size = int(file_mb * MiB)
    part_bytes = int(part_mb * MiB)
    who_all = ("vigil", "boto3", "boto3-serial")
    speed: dict[str, list[float]] = {who: [] for who in who_all}
    cpu_per_mb: dict[str, list[float]] = {who: [] for who in who_all}
    with quiet_logs(), aws_environment(), workdir("vigil-bench-upload-") as work, moto_process() as url:
        boto3_client(url).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        root = work / "rec"
        made = make_files(root, files, size)
        total_mb = files * size / MiB
        run_boto3(url, made[:1], root, "warm-up/")  # moto's first requests are slow: not a figure
        for i in range(runs):
            order = who_all[i % len(who_all):] + who_all[:i % len(who_all)]  # each goes first in turn
            for who in order:
                prefix = f"{who}-{i}/"
                if who == "vigil":
                    wall, cpu, sent = run_vigil(url, root, prefix, part_bytes)
                else:
                    wall, cpu, sent = run_boto3(url, made, root, prefix,
                                                concurrency=1 if who == "boto3-serial" else 10)
                if sent != files * size:
                    raise RuntimeError(f"{who} uploaded {sent} of {files * size} bytes")
                speed[who].append(total_mb / wall)
                cpu_per_mb[who].append(cpu / total_mb * 1000)
    rows = [
        ("throughput vs upload_file", Figure(tuple(speed["vigil"])), Figure(tuple(speed["boto3"])),
         "(higher is better)"),
        ("throughput vs upload_file, 1 thread", Figure(tuple(speed["vigil"])),
         Figure(tuple(speed["boto3-serial"])), "(vigil sends one part at a time)"),
    ]
    cpu_rows = [
        ("client CPU/MiB vs upload_file", Figure(tuple(cpu_per_mb["vigil"])),
         Figure(tuple(cpu_per_mb["boto3"])), "(lower is better)"),
        ("client CPU/MiB vs 1 thread", Figure(tuple(cpu_per_mb["vigil"])),
         Figure(tuple(cpu_per_mb["boto3-serial"])), ""),
    ]
    vigil_speed = Figure(tuple(speed["vigil"])).median
    behind = SEGMENT_BYTES_AT_DEFAULT_BITRATE / MiB / vigil_speed if vigil_speed else float("nan")
    title = f"{files} files x {file_mb:g} MiB, {part_mb:g} MiB parts, moto S3 on loopback, {runs} runs"
    return "\n".join([
        table(f"upload: vigil vs boto3 upload_file ({title})", "MiB/s", rows, fmt=".1f"),
        table("upload CPU", "ms/MiB", cpu_rows, fmt=".1f"),
        "vigil hashes every byte twice (parts, then sent) and reads the checksums back; boto3 sends "
        "up to 10 parts at once and verifies nothing after the upload.",
        f"a 60 s segment at 5 Mbit/s ({SEGMENT_BYTES_AT_DEFAULT_BITRATE / MiB:.1f} MiB) goes up in about "
        f"{behind:.2f} s at vigil's rate here (target: footage at most 60 s behind recording)",
        load_note(),
    ])


DEFAULT_BITRATE_BPS = 5_000_000  # as SEGMENT_BYTES_AT_DEFAULT_BITRATE


def run_lag(url: str, work: Path, *, bitrate_bps: int, part_mb: float, parts: int) -> list[float]:
    """How old each part's first byte was when the bucket held the part (seconds), for an open
    segment grown at `bitrate_bps` until `parts` whole parts are recorded."""
    from hw.footage import PARTIAL_SUFFIX

    root = work / "lag"
    when = datetime.now(UTC)
    final = root / when.strftime("%Y-%m-%d") / when.strftime("%H") / when.strftime("%Y%m%dT%H%M%SZ.mp4")
    final.parent.mkdir(parents=True)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    part_bytes = int(part_mb * MiB)
    settings = UploadSettings(bucket=BUCKET, key_prefix="lag/", endpoint_url=url, region="us-east-1",
                              part_bytes=part_bytes, verify="checksum")
    uploader = Uploader(settings, roots=lambda: [root], open_segments=lambda: [partial])
    written_at: list[float] = []  # when each byte offset k * part_bytes was first written
    stop = threading.Event()

    def record() -> None:
        per_second = bitrate_bps // 8
        size = 0
        with partial.open("ab") as f:
            while not stop.is_set() and size < parts * part_bytes:
                chunk = os.urandom(per_second)
                now = time.monotonic()
                while len(written_at) * part_bytes < size + len(chunk):  # a part's first byte is in it
                    written_at.append(now)
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                size += len(chunk)
                stop.wait(1.0)

    writer = threading.Thread(target=record, name="bench-open-segment")
    writer.start()
    uploader.start()
    stored_at: list[float] = []
    deadline = time.monotonic() + parts * part_bytes * 8 / bitrate_bps + 120
    try:
        while len(stored_at) < parts and time.monotonic() < deadline:
            item = uploader.queue.get(final)
            while item is not None and len(stored_at) < len(item.parts):
                stored_at.append(time.monotonic())
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join()
        uploader.stop()
    if len(stored_at) < parts:
        raise RuntimeError(f"only {len(stored_at)} of {parts} parts of the open segment went up")
    return [stored - written for stored, written in zip(stored_at, written_at, strict=False)]


def lag_report(url: str, work: Path, *, bitrate_bps: int, part_mb: float, parts: int) -> str:
    lags = run_lag(url, work, bitrate_bps=bitrate_bps, part_mb=part_mb, parts=parts)
    each = ", ".join(f"{lag:.1f}" for lag in lags)
    return (f"upload lag behind recording, open segment ({parts} parts of {part_mb:g} MiB at "
            f"{bitrate_bps / 1e6:g} Mbit/s): worst {max(lags):.1f} s (each part: {each} s); target "
            f"<= 60 s; closed-segment upload alone would trail by the segment's length (3600 s)")


def smoke() -> str:
    return run(files=2, file_mb=6.0, part_mb=5.0, runs=1) + "\n" + _lag(bitrate_bps=40_000_000, part_mb=5.0,
                                                                        parts=2)


def _lag(**kw: Any) -> str:
    with quiet_logs(), aws_environment(), workdir("vigil-bench-upload-lag-") as work, moto_process() as url:
        boto3_client(url).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        return lag_report(url, work, **kw)


def main() -> None:
    print(run())
    print(_lag(bitrate_bps=DEFAULT_BITRATE_BPS, part_mb=8.0, parts=3))


if __name__ == "__main__":
    main()
