"""Device bytes written per footage byte kept, over a recorded clock hour with its merge and
housekeeping, on a loop-mounted ext4: vigil next to ffmpeg's segment muxer.

Both sides get the same H.264 packets: a clip of the synthetic camera (720p30 by default,
libx264 ultrafast, crf 23, a keyframe every `fragment_seconds`) encoded once and replayed
for the whole hour with rising timestamps, so the hour is recorded in a minute, not an
hour; the wall clocks are those of a past clock hour. Each side writes onto its own fresh
ext4 (a sparse image on a loop device), and the device's sectors written
(/sys/block/loopN/stat, field 7, times 512) are read after mounting and again after
everything is flushed and the filesystem unmounted, so the journal's writes count too.

- vigil: the real SegmentWriter with the config's defaults (segment_seconds,
  fragment_seconds, every fragment fsynced, a signed manifest per file), then the real
  StorageHousekeeper pass (merge of the closed hour with the default verify, retention),
  as the daemon runs them.
- ffmpeg: `-f segment` with the same fragmented-MP4 movflags, a segment per clock hour,
  reading the same packets (as an Annex-B stream) from outside the measured filesystem.
  ffmpeg fsyncs nothing, so a power cut could lose far more than a fragment: that is the
  price vigil pays for losing at most one.

Footage kept: the bytes of the MP4 files left on the filesystem at the end. Needs root
(losetup, mount) and mkfs.ext4; without them the bench says so and prints no figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from bench.common import Figure, machine_line, table
from bench.rig import NO_FFMPEG
from controller.config.schema import RecordingConfig
from controller.keys import signer_for
from controller.storage.housekeeping import StorageHousekeeper, StorageSettings
from controller.storage.retention import RetentionPolicy
from hw.camera import CameraMode, EncodedPacket
from hw.encoder import H264Encoder
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import MOVFLAGS, SegmentWriter

HOUR = 3600
SECTOR_BYTES = 512
SECTORS_WRITTEN_FIELD = 6  # /sys/block/loopN/stat: the 7th field, sectors written
IMAGE_BYTES = 4 << 30  # sparse: only what is written takes room
HOUSEKEEPING_TIMEOUT_SECONDS = 600.0
TITLE = "device bytes written per footage byte kept, a clock hour with its merge (loop ext4)"


def missing_tools() -> str | None:
    """Why the bench cannot mount a loop ext4 here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root for losetup and mount (run `sudo make bench`)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y util-linux e2fsprogs mount)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: this kernel or container has no loop devices"
    return None


class LoopExt4:
    """A fresh ext4 on a loop device over a sparse image, mounted at `mountpoint`."""

    def __init__(self, image: Path, mountpoint: Path) -> None:
        self.image, self.mountpoint = image, mountpoint
        with open(image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        self.device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        mountpoint.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["mount", "-t", "ext4", self.device, str(mountpoint)], check=True)
        except BaseException:
            subprocess.run(["losetup", "-d", self.device], check=False)
            raise
        self.mounted = True

    def sectors_written(self) -> int:
        stat = Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()
        return int(stat[SECTORS_WRITTEN_FIELD])

    def unmount(self) -> None:
        if self.mounted:
            os.sync()
            subprocess.run(["umount", str(self.mountpoint)], check=True)
            self.mounted = False

    def close(self) -> None:
        try:
            self.unmount()
        finally:
            subprocess.run(["losetup", "-d", self.device], check=False)
            self.image.unlink(missing_ok=True)


def encode_clip(mode: CameraMode, seconds: float, fragment_seconds: float) -> list[EncodedPacket]:
    """`seconds` of the synthetic camera, encoded once: a whole number of keyframe groups."""
    camera = SyntheticCamera(mode, paced=False, counter=FrameCounter())
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=fragment_seconds)
    packets: list[EncodedPacket] = []
    for i in range(round(seconds * mode.fps)):
        frame = camera.read(1.0)
        frame.timestamp = i / mode.fps
        frame.wallclock = i / mode.fps
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.flush())
    camera.close()
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    # Cut before the clip's last keyframe so that replaying it keeps the keyframe rhythm.
    return packets[: keyframes[-1]] if len(keyframes) > 1 else packets


def replayed(clip: list[EncodedPacket], frames: int, fps: float, wall_start: float) -> list[EncodedPacket]:
    return [EncodedPacket(clip[i % len(clip)].data, clip[i % len(clip)].is_keyframe, i / fps,
                          wall_start + i / fps) for i in range(frames)]


def footage_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.mp4"))


def measure(work: Path, name: str, run: Callable[[Path], None]) -> tuple[float, int]:
    """(device bytes written per footage byte kept, footage bytes) of `run` on a fresh ext4."""
    fs = LoopExt4(work / f"{name}.img", work / f"{name}.mnt")
    try:
        before = fs.sectors_written()
        run(fs.mountpoint)
        os.sync()
        kept = footage_bytes(fs.mountpoint)
        fs.unmount()
        written = (fs.sectors_written() - before) * SECTOR_BYTES
    finally:
        fs.close()
    return written / kept, kept


def vigil_hour(root: Path, packets: list[EncodedPacket], mode: CameraMode) -> None:
    defaults = RecordingConfig()
    signer = signer_for(Ed25519PrivateKey.generate(), "bench")
    recordings = root / "recordings"
    writer = SegmentWriter(recordings, width=mode.width, height=mode.height, fps=mode.fps,
                           segment_seconds=defaults.segment_seconds, signer=signer)
    for packet in packets:
        writer.write(packet)
    writer.close()
    housekeeper = StorageHousekeeper(
        StorageSettings(merge=defaults.merge, merge_verify=defaults.merge_verify,
                        retention=RetentionPolicy(), signer=signer),
        roots=lambda: [recordings], active_root=lambda: recordings, open_segments=list,
    )
    housekeeper.start()
    try:
        if not housekeeper.check_now(HOUSEKEEPING_TIMEOUT_SECONDS):
            raise RuntimeError("the housekeeping pass did not finish")
    finally:
        housekeeper.stop(5)
    if len(housekeeper.merged) != 1:
        raise RuntimeError(f"expected the hour merged into one file, got {housekeeper.merged}")


def ffmpeg_hour(root: Path, stream: Path, ffmpeg: str, fps: float) -> None:
    """The segment muxer cutting on timestamps every hour; the stream's keyframes make the
    fragments (frag_keyframe), as they do for vigil."""
    out = root / "recordings"
    out.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-framerate", f"{fps:g}", "-f", "h264", "-i", str(stream),
                    "-c", "copy", "-f", "segment", "-segment_time", str(HOUR),
                    "-segment_format", "mp4", "-segment_format_options", f"movflags={MOVFLAGS}",
                    "-reset_timestamps", "1", str(out / "%03d.mp4")], check=True)


def run(*, width: int = 1280, height: int = 720, fps: float = 30.0, seconds: float = HOUR,
        clip_seconds: float = 10.0, runs: int = 1) -> str:
    why_not = missing_tools()
    ffmpeg = shutil.which("ffmpeg")
    if why_not is not None or ffmpeg is None:
        return "\n".join([f"== {TITLE}", machine_line(), f"skipped: {why_not or NO_FFMPEG}",
                          f"{'measure':<34} {'vigil B/B':>28} {'reference B/B':>28} {'ratio':>7}",
                          f"{'an hour in one piece':<34} {'-':>28} {'-':>28} {'n/a':>7}"])
    for name in ("hw", "controller"):
        logger.disable(name)
    try:
        return _run(ffmpeg, width=width, height=height, fps=fps, seconds=seconds,
                    clip_seconds=clip_seconds, runs=runs)
    finally:
        for name in ("hw", "controller"):
            logger.enable(name)


def _run(ffmpeg: str, *, width: int, height: int, fps: float, seconds: float, clip_seconds: float,
         runs: int) -> str:
    mode = CameraMode(width, height, fps)
    fragment_seconds = RecordingConfig().fragment_seconds
    clip = encode_clip(mode, clip_seconds, fragment_seconds)
    hour_start = (time.time() // HOUR - 2) * HOUR  # a closed clock hour, two hours ago
    packets = replayed(clip, round(seconds * fps), fps, hour_start)
    ours: list[float] = []
    theirs: list[float] = []
    kept = 0
    with tempfile.TemporaryDirectory(prefix="vigil-bench-writes-") as tmp:
        work = Path(tmp)
        stream = work / "hour.h264"
        with open(stream, "wb") as f:
            for packet in packets:
                f.write(packet.data)
        for index in range(runs):
            ratio, kept = measure(work, f"vigil{index}", lambda root: vigil_hour(root, packets, mode))
            ours.append(ratio)
            ratio, _ = measure(work, f"ffmpeg{index}",
                               lambda root: ffmpeg_hour(root, stream, ffmpeg, fps))
            theirs.append(ratio)
    block = table(TITLE, "B/B", [
        ("an hour in one piece, merged", Figure(tuple(ours)), Figure(tuple(theirs)),
         "vigil <= 1.15 (absolute)"),
    ], fmt=".3f")
    return (f"{block}\ninput: {len(packets)} frames {width}x{height}@{fps:g} ({seconds:g}s, a "
            f"{clip_seconds:g}s clip replayed), {kept / 1e6:.1f} MB kept; vigil: defaults (segment_seconds "
            f"{RecordingConfig().segment_seconds:g}, a fsync per {fragment_seconds:g}s fragment, manifests, "
            f"merge_verify {RecordingConfig().merge_verify}); reference: ffmpeg -f segment, same movflags, "
            f"no fsync")


def main() -> None:
    print(run())


def smoke() -> str:
    return run(width=320, height=240, seconds=20.0, clip_seconds=2.0)


if __name__ == "__main__":
    main()
