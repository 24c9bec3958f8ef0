"""Footage for a chosen past hour: real segments written by the real writer, unpaced.

The synthetic camera draws the frames (with their frame-number code), libx264 encodes them
and the SegmentWriter cuts them; only the clocks are faked, so the segments land in the
hour the test asks for. Frame.wallclock decides a segment's folder and name.
"""

from __future__ import annotations

import time
from pathlib import Path

from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.integrity import Signer
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import ClosedSegment, SegmentWriter

HOUR = 3600


def past_hour_start(hours_ago: int = 2, now: float | None = None) -> float:
    """UTC seconds of the start of the hour `hours_ago` hours before the current one."""
    now = time.time() if now is None else now
    return (now // HOUR - hours_ago) * HOUR


def record(
    root: Path,
    *,
    wallclock: float,
    frames: int,
    counter: FrameCounter,
    width: int = 160,
    height: int = 120,
    fps: float = 30.0,
    segment_seconds: float = 1.0,
    fragment_seconds: float = 0.5,
    crf: int = 23,
    signer: Signer | None = None,
) -> list[ClosedSegment]:
    """Record `frames` frames starting at `wallclock` into segments under `root`, as a run
    of the recorder would (one encoder, one writer); returns the closed segments in order."""
    mode = CameraMode(width, height, fps)
    camera = SyntheticCamera(mode, paced=False, counter=counter)
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=fragment_seconds, crf=crf)
    closed: list[ClosedSegment] = []
    writer = SegmentWriter(root, width=width, height=height, fps=fps, segment_seconds=segment_seconds,
                           fsync=False, when_segment_closed=closed.append, signer=signer)
    for i in range(frames):
        frame = camera.read(1.0)
        frame.timestamp = i / fps
        frame.wallclock = wallclock + i / fps
        for packet in encoder.encode(frame):
            writer.write(packet)
    for packet in encoder.flush():
        writer.write(packet)
    writer.close()
    camera.close()
    return closed
