"""libx264 through PyAV, set up the way the fake's H.264 encoders need it."""

from __future__ import annotations

from fractions import Fraction

import av

MICROSECONDS = Fraction(1, 1_000_000)
# x264's own profile names for the ones picamera2 accepts.
X264_PROFILES = {
    "baseline": "baseline",
    "constrained baseline": "baseline",
    "main": "main",
    "high": "high",
}


def open_libx264(
    *,
    width: int,
    height: int,
    framerate: float,
    keyint: int,
    bitrate: int | None,
    qp: int | None,
    profile: str | None,
    preset: str,
    repeat_headers: bool,
    threads: int = 0,
) -> av.VideoCodecContext:
    """An opened encoder: pts in microseconds, a keyframe exactly every `keyint` frames.

    repeat_headers=False sets the global-header flag, so SPS/PPS go to `extradata` and not
    into the packets (what libav does for picamera2's repeat=False).
    """
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = MICROSECONDS
    ctx.framerate = Fraction(framerate).limit_denominator(1001)
    ctx.gop_size = keyint
    ctx.thread_count = threads
    if bitrate is not None:
        ctx.bit_rate = bitrate
    if not repeat_headers:
        ctx.flags |= av.codec.context.Flags.global_header
    options = {
        "preset": preset,
        "tune": "zerolatency",
        # scenecut=0: keyframes only every keyint frames, never on picture changes.
        "x264-params": f"keyint={keyint}:scenecut=0:repeat-headers={int(repeat_headers)}",
    }
    if profile is not None:
        options["profile"] = X264_PROFILES[profile]
    if qp is not None:
        options["qp"] = str(qp)
    ctx.options = options
    ctx.open()
    return ctx
