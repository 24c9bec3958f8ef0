"""CPU cost of footage integrity (hw.integrity): the same recording with the chain and signed
manifests on, and off.

Real H.264 at 1920x1080, 30 fps (the synthetic camera, encoded once with vigil's libx264
settings before timing) is written by hw.writer.SegmentWriter as the daemon writes it:
fragmented MP4, an fsync per fragment, 2 s segments. With a signer every fragment is read
back after its fsync and hashed, and each closed segment gets a signed manifest (fsync,
rename). The figure is the process's CPU time for the writing, as a share of one core over
the footage's own duration: what integrity adds while recording in real time.
Reference: the same packets written with integrity off. Target: integrity adds <= 1 % CPU.
The synthetic picture compresses well; the hash throughput line scales the cost to a busier
10 Mbit/s camera stream.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import Figure, table
from bench.rig import FPS, FRAGMENT_SECONDS, load_note, quiet_logs, workdir
from controller.keys import signer_for
from hw.camera import CameraMode, EncodedPacket
from hw.encoder import H264Encoder
from hw.integrity import Signer
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import SegmentWriter

SEGMENT_SECONDS = 2.0
BUSY_CAMERA_BITS_PER_SECOND = 10_000_000


def encoded(mode: CameraMode, frames: int) -> list[EncodedPacket]:
    camera = SyntheticCamera(mode, counter=FrameCounter(), paced=False)
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=FRAGMENT_SECONDS)
    out: list[EncodedPacket] = []
    start = time.time()
    for i in range(frames):
        frame = camera.read(1.0)
        frame.timestamp = i / mode.fps
        frame.wallclock = start + i / mode.fps
        out.extend(encoder.encode(frame))
    out.extend(encoder.flush())
    camera.close()
    return out


def cpu_seconds(root: Path, mode: CameraMode, packets: list[EncodedPacket], signer: Signer | None) -> float:
    writer = SegmentWriter(root, width=mode.width, height=mode.height, fps=mode.fps,
                           segment_seconds=SEGMENT_SECONDS, signer=signer)
    cpu = time.process_time()
    for packet in packets:
        writer.write(packet)
    writer.close()
    spent = time.process_time() - cpu
    made = list(root.rglob("*.manifest.json"))
    assert (len(made) > 0) == (signer is not None), f"manifests under {root}: {len(made)}"
    return spent


def sha256_mb_per_second(megabytes: int = 64) -> float:
    data = bytes(1 << 20)
    cpu = time.process_time()
    h = hashlib.sha256()
    for _ in range(megabytes):
        h.update(data)
    return megabytes / max(time.process_time() - cpu, 1e-9)


def run(*, width: int = 1920, height: int = 1080, seconds: float = 20.0, runs: int = 5) -> str:
    mode = CameraMode(width, height, FPS)
    frames = int(seconds * FPS)
    signer = signer_for(Ed25519PrivateKey.generate(), "bench")
    on, off = [], []
    with quiet_logs(), workdir("vigil-bench-integrity-") as work:
        packets = encoded(mode, frames)
        footage_seconds = frames / FPS
        for i in range(runs):  # interleaved, so a busy moment of the machine hits both
            off.append(cpu_seconds(work / f"off-{i}", mode, packets, None) / footage_seconds * 100)
            on.append(cpu_seconds(work / f"on-{i}", mode, packets, signer) / footage_seconds * 100)
    added = Figure(tuple(a - b for a, b in zip(on, off, strict=True)))
    bitrate = sum(len(p.data) for p in packets) * 8 / footage_seconds
    throughput = sha256_mb_per_second()
    busy = BUSY_CAMERA_BITS_PER_SECOND / 8 / 1e6 / throughput * 100
    rows = [(f"writer CPU, {width}x{height}@{FPS:g}", Figure(tuple(on)), Figure(tuple(off)),
             "(integrity on / off)")]
    return "\n".join([
        table(f"footage integrity: chain + signed manifests, {frames} frames", "% of a core", rows,
              fmt=".3f"),
        f"integrity adds {added.show('.3f')} % of a core (target <= 1 %, "
        f"{'met' if added.median <= 1.0 else 'NOT met'}) at {bitrate / 1e6:.2f} Mbit/s",
        f"SHA-256 here: {throughput:.0f} MB/s, so hashing a {BUSY_CAMERA_BITS_PER_SECOND / 1e6:g} Mbit/s "
        f"stream costs about {busy:.3f} % of a core",
        load_note(),
    ])


def smoke() -> str:
    return run(width=320, height=240, seconds=2.0, runs=1)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
