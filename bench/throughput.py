"""Unpaced recording throughput (frames per second): vigil's recording path next to ffmpeg.

Both encode the same `testsrc2` frames with the same libx264 settings (bench.rig) into
fragmented-MP4 segments, as fast as they can:
- vigil: in-process, the recording path exactly as the daemon assembles it
  (hw.factory.Hardware: FileCamera with `pace: false` -> FrameValidator -> bounded queue ->
  H264Encoder -> SegmentWriter with its per-fragment fsync), on its two threads. The camera
  is held back while the queue is full (bench.rig.HeldBackCamera) so that every frame is
  recorded: the figure is the fastest rate vigil records without dropping. The clock runs
  from starting the pipeline to the last segment closed; Python start-up and opening the
  camera are left out.
- ffmpeg: `ffmpeg -f lavfi -i testsrc2=... -frames:v N <the same x264 options> -f segment
  -segment_format mp4 ...` (no fsync); the time is its own `-benchmark` rtime, which
  likewise leaves out process start-up and opening the input.
Target: vigil >= 0.90 x ffmpeg at both sizes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.common import Figure, table
from bench.rig import (
    NO_FFMPEG,
    encoder_note,
    ffmpeg_record_command,
    has_ffmpeg,
    load_note,
    quiet_logs,
    record_in_process,
    workdir,
)

SIZES = ((1280, 720), (1920, 1080))
TARGET = "vigil/ffmpeg >= 0.90"
_RTIME = re.compile(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s")


def vigil_run(work: Path, width: int, height: int, frames: int, run: int) -> tuple[float, Path]:
    """(frames per second, where the segments are) of one in-process run."""
    root = work / f"vigil-{width}x{height}-{run}"
    result = record_in_process(root, width, height, frames)
    return result.frames_recorded / result.seconds, root


def ffmpeg_run(work: Path, width: int, height: int, frames: int, run: int) -> tuple[float, Path]:
    """(frames per second by ffmpeg's own rtime, where the segments are) of one ffmpeg run."""
    out = work / f"ffmpeg-{width}x{height}-{run}"
    out.mkdir()
    done = subprocess.run(ffmpeg_record_command(out, width, height, frames=frames, benchmark=True),
                          capture_output=True, text=True, check=True)
    found = _RTIME.search(done.stderr)
    if found is None:
        raise RuntimeError(f"ffmpeg printed no -benchmark line:\n{done.stderr[-2000:]}")
    return frames / float(found.group(3)), out


def output_note(size: str, ours: Path, ref: Path | None) -> str:
    """How much each side wrote and with which libx264: the same work, or the figures mislead."""
    our_files = sorted(ours.rglob("*.mp4"))
    ours_mb = sum(p.stat().st_size for p in our_files) / 1e6
    if ref is None:
        return f"{size}: vigil wrote {ours_mb:.1f} MB"
    ref_files = sorted(ref.glob("*.mp4"))
    ref_mb = sum(p.stat().st_size for p in ref_files) / 1e6
    return (f"{size}: vigil wrote {ours_mb:.1f} MB, ffmpeg {ref_mb:.1f} MB; "
            f"{encoder_note(our_files[0], ref_files[0])}")


def run(*, frames: int = 600, runs: int = 5, sizes: tuple[tuple[int, int], ...] = SIZES) -> str:
    rows = []
    notes = []
    ffmpeg = has_ffmpeg()
    with quiet_logs(), workdir("vigil-bench-throughput-") as work:
        for width, height in sizes:
            ours: list[float] = []
            ref: list[float] = []
            ours_out, ref_out = Path(), None
            # Interleaved, so a slow spell on the machine hits both sides alike.
            for i in range(runs):
                fps, ours_out = vigil_run(work, width, height, frames, i)
                ours.append(fps)
                if ffmpeg:
                    fps, ref_out = ffmpeg_run(work, width, height, frames, i)
                    ref.append(fps)
            rows.append((f"{width}x{height}, {frames} frames", Figure(tuple(ours)),
                         Figure(tuple(ref) or (float("nan"),)), TARGET))
            notes.append(output_note(f"{width}x{height}", ours_out, ref_out))
    text = table("recording throughput, unpaced, testsrc2 -> libx264 ultrafast -> fragmented MP4",
                 "fps", rows, fmt=".1f")
    lines = [text, *notes,
             "vigil: in-process pipeline as the daemon builds it, camera held back on a full queue "
             "(no frame dropped), per-fragment fsync; ffmpeg: -benchmark rtime, no fsync",
             load_note()]
    if not ffmpeg:
        lines.append(NO_FFMPEG)
    return "\n".join(lines)


def smoke() -> str:
    return run(frames=30, runs=1, sizes=((320, 240),))


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
