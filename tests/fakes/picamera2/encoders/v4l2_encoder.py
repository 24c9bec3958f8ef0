"""The Pi 4 hardware encoder path (picamera2.encoders.v4l2_encoder), with libx264 inside.

Real V4L2Encoder (raspberrypi/picamera2 picamera2/encoders/v4l2_encoder.py
@ d547f58f363536efe8c8b92b747447d0da347771) queues each frame to /dev/video11 with its
timestamp in microseconds and a poll thread hands finished buffers to
`outputframe(bytes, keyframe, timestamp_us)`, so outputs run on the encoder's thread and get
packet=None. The fake keeps that shape: frames go through a queue of 16 (the real
NUM_OUTPUT_BUFFERS; a full queue blocks the camera thread, as buf_available.get() does) to a
thread that encodes them with libx264.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from typing import Any

import av

from .encoder import Encoder

NUM_OUTPUT_BUFFERS = 16
WORKER_JOIN_TIMEOUT_S = 10.0


def _fourcc(code: str) -> int:
    return int.from_bytes(code.encode("ascii"), "little")


V4L2_PIX_FMT_H264 = _fourcc("H264")
V4L2_PIX_FMT_MJPEG = _fourcc("MJPG")
V4L2_FORMATS = ("RGB888", "BGR888", "XBGR8888", "XRGB8888", "YUV420")

_log = logging.getLogger(__name__)
_encoder_ids = itertools.count()


class V4L2Encoder(Encoder):
    """Encodes on a thread of its own and calls outputs from it, like the V4L2 poll thread."""

    def __init__(self, bitrate: int | None, pixformat: int) -> None:
        super().__init__()
        self.bitrate = bitrate
        self._pixformat = pixformat
        self._controls: list[tuple[int, int]] = []
        self.vd: str | None = None
        self.framerate: float | None = None
        self._enable_framerate = False
        self._queue: queue.Queue[Any] | None = None
        self._worker_failed = False
        self.thread: threading.Thread | None = None
        self._id = next(_encoder_ids)

    @property
    def _v4l2_format(self) -> str:
        if self._format not in V4L2_FORMATS:
            raise RuntimeError("Unrecognised format", self._format, "for V4L2")
        return self._format

    def _open_codec(self) -> av.VideoCodecContext:
        raise NotImplementedError

    def _start(self) -> None:
        self._v4l2_format  # noqa: B018 - validates the input format, as the real one does
        self._codec = self._open_codec()
        self._headers_pending = self._codec.extradata or b""
        self._queue = queue.Queue(maxsize=NUM_OUTPUT_BUFFERS)
        self._worker_failed = False
        self.vd = "/dev/video11 (fake)"
        self.thread = threading.Thread(
            target=self.thread_poll,
            name=f"picamera2-fake-v4l2-encoder-{self._id}",
            daemon=True,
        )
        self.thread.start()

    def _encode(self, stream: Any, request: Any) -> None:
        if self.vd is None or self._queue is None:
            return
        if self._worker_failed:
            # The real encoder would block the camera once its 16 buffers are gone; the
            # fake drops the frame so a test sees the failure instead of a hang.
            return
        timestamp_us = self._timestamp(request)
        self._queue.put((request._fake_yuv420(stream), timestamp_us))

    def _stop(self) -> None:
        assert self._queue is not None and self.thread is not None
        self._queue.put(None)
        self.thread.join(WORKER_JOIN_TIMEOUT_S)
        if self.thread.is_alive():
            _log.error("fake V4L2 encoder thread %s did not finish within %.0fs; an output "
                       "is probably blocked", self.thread.name, WORKER_JOIN_TIMEOUT_S)
        self.vd = None

    def thread_poll(self) -> None:
        """Encode queued frames and hand the packets to the outputs until told to stop."""
        assert self._queue is not None
        while True:
            item = self._queue.get()
            frames = [None] if item is None else [item]
            try:
                if not self._worker_failed:
                    for frame in frames:
                        self._encode_and_output(frame)
            except Exception:
                _log.exception("fake V4L2 encoder thread: encoding or an output failed; "
                               "dropping further frames")
                self._worker_failed = True
            if item is None:
                return

    def _encode_and_output(self, item: tuple[Any, int] | None) -> None:
        if item is None:
            packets = self._codec.encode(None)
        else:
            yuv, timestamp_us = item
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = timestamp_us
            packets = self._codec.encode(frame)
        for packet in packets:
            data = bytes(packet)
            if self._headers_pending and packet.is_keyframe:
                # repeat=False: the stream header goes out once, with the first keyframe.
                data = self._headers_pending + data
                self._headers_pending = b""
            self.outputframe(data, packet.is_keyframe, packet.pts)
