"""A camera that replays a video file or an FFmpeg lavfi source through PyAV.

`source` is a path, or `lavfi:SPEC` (for example `lavfi:testsrc2=size=1280x720:rate=30`).
Frames are scaled to the configured size in YUV420 and paced at the source's own
timestamps, or handed over as fast as they decode (`paced=False`, for benchmarks).
At the end of the file it starts over, so a demo unit records forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import av

from hw.camera import CameraMode, Frame
from hw.errors import CameraLost, CameraTimeout, CameraUnavailable

LAVFI_PREFIX = "lavfi:"


def open_source(source: str) -> av.container.InputContainer:
    """Open a file path or a `lavfi:` spec as a PyAV input container."""
    if source.startswith(LAVFI_PREFIX):
        return av.open(source.removeprefix(LAVFI_PREFIX), format="lavfi")
    return av.open(source)


class FileCamera:
    """Replays `source` as a camera delivering YUV420 frames of the configured mode."""

    def __init__(self, mode: CameraMode, source: str, *, paced: bool = True, loop: bool = True):
        self.name = "file"
        self._mode = CameraMode(mode.width, mode.height, mode.fps, "frames")
        self.source = source
        self.paced = paced
        self.loop = loop
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._sequence = 0
        self._origin = 0.0
        self._offset = 0.0
        self._last_time = 0.0
        self._pending: tuple[float, av.VideoFrame] | None = None  # decoded, not yet due

    def __repr__(self) -> str:
        return f"<FileCamera {self.source!r} {'open' if self._container else 'closed'}>"

    @property
    def mode(self) -> CameraMode:
        return self._mode

    def open(self) -> None:
        try:
            self._container = open_source(self.source)
        except (av.FFmpegError, OSError) as err:
            raise CameraUnavailable(f"cannot open camera source {self.source!r}: {err}") from err
        if not self._container.streams.video:
            self._container.close()
            self._container = None
            raise CameraUnavailable(f"camera source {self.source!r} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)
        self._origin = time.monotonic()

    def close(self) -> None:
        container, self._container, self._frames = self._container, None, None
        self._pending = None
        if container is not None:
            container.close()

    def _next_video_frame(self) -> av.VideoFrame:
        assert self._frames is not None
        try:
            return next(self._frames)
        except StopIteration:
            if not self.loop:
                raise CameraLost(f"camera source {self.source!r} ended") from None
            # Start over; keep time running forward across the loop.
            self._offset += self._last_time + 1.0 / self._mode.fps
            self.close()
            self.open()
            self._origin = time.monotonic() - self._offset
            assert self._frames is not None
            return next(self._frames)
        except av.FFmpegError as err:
            raise CameraLost(f"camera source {self.source!r} failed: {err}") from err

    def _next_picture(self) -> tuple[float, av.VideoFrame]:
        """(source time, YUV420 picture of the configured size) of the next frame.

        The decoder's frame itself, not a copy in an array: the encoder takes it as it is.
        """
        vf = self._next_video_frame()
        t = float(vf.time) if vf.time is not None else self._sequence / self._mode.fps
        self._last_time = t
        m = self._mode
        if vf.width != m.width or vf.height != m.height or vf.format.name != "yuv420p":
            vf = vf.reformat(width=m.width, height=m.height, format="yuv420p")
        return t, vf

    def read(self, timeout: float) -> Frame:
        if self._frames is None:
            raise CameraLost("file camera read while closed")
        if self._pending is None:
            self._pending = self._next_picture()
        t, picture = self._pending
        if self.paced:
            delay = self._origin + self._offset + t - time.monotonic()
            if delay > timeout:
                # The frame stays pending: a source with a gap delivers it when it is due.
                time.sleep(timeout)
                raise CameraTimeout(f"next frame of {self.source!r} not due within {timeout}s")
            if delay > 0:
                time.sleep(delay)
        self._pending = None
        timestamp = self._origin + self._offset + t if self.paced else time.monotonic()
        frame = Frame(None, timestamp, time.time(), self._sequence, picture=picture)
        self._sequence += 1
        return frame
