"""A camera that draws its own frames: the default where no camera exists, and the test rig.

Every frame carries its sequence number in the frame-number code (hw.framecode), so a
recording can be decoded and checked for lost or repeated frames. Faults are injected
through a FaultPlan shared by every instance a factory makes, so a disconnect outlives
the instance that saw it, as a real unplugged camera would.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hw import framecode
from hw.camera import CameraMode, Frame
from hw.errors import CameraLost, CameraTimeout, CameraUnavailable

if TYPE_CHECKING:
    import numpy as np

STRIPE_PERIOD_PX = 64
SCROLL_PX_PER_FRAME = 4
CORRUPT_KINDS = ("shape", "dtype", "none")
FAULT_KINDS = ("stall", "hang", "disconnect", "freeze", "corrupt", "backward_timestamps", "flap")


class FrameCounter:
    """Hands out frame numbers: 0 for the first frame the process draws, +1 per frame."""

    def __init__(self) -> None:
        self._next = itertools.count()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            return next(self._next)


# The frame-number contract says numbers never reset while the process lives, so every
# synthetic camera in the process draws from this one counter.
PROCESS_FRAME_COUNTER = FrameCounter()


@dataclass
class FaultPlan:
    """Faults to inject into synthetic cameras; times are on the monotonic clock.

    Drive it from tests (or a demo config) with the `inject_*` methods; each records what
    was asked in `history`, as gpiozero's MockPin records its states.
    """

    stalled_until: float = 0.0
    pending_hang_seconds: float = 0.0
    disconnected_until: float = 0.0
    frozen_until: float = 0.0
    corrupt: list[str] = field(default_factory=list)
    backward_timestamps: int = 0
    flapping_until: float = 0.0
    flap_frames: int = 1
    # Set to a list to have every camera sharing the plan append each frame number it hands
    # over (tests compare it with the footage); None keeps a long run's memory flat.
    delivered: list[int] | None = None
    scheduled: list[tuple[float, str, float, int]] = field(default_factory=list)
    history: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _note(self, what: str) -> None:
        self.history.append((time.monotonic(), what))

    def inject_stall(self, seconds: float) -> None:
        """No frames for `seconds`; reads time out as a stalled driver's would."""
        with self._lock:
            self.stalled_until = time.monotonic() + seconds
            self._note(f"stall {seconds}s")

    def inject_hang(self, seconds: float) -> None:
        """The next read blocks for `seconds`, ignoring its timeout (a hung driver call)."""
        with self._lock:
            self.pending_hang_seconds = seconds
            self._note(f"hang {seconds}s")

    def take_hang(self) -> float:
        with self._lock:
            seconds, self.pending_hang_seconds = self.pending_hang_seconds, 0.0
            return seconds

    def inject(self, kind: str, seconds: float = 1.0, count: int = 1) -> None:
        """Inject a fault by name: stall, hang, disconnect, freeze, corrupt, backward_timestamps,
        flap (`count` frames per open, for `seconds`)."""
        if kind == "stall":
            self.inject_stall(seconds)
        elif kind == "hang":
            self.inject_hang(seconds)
        elif kind == "disconnect":
            self.inject_disconnect(seconds)
        elif kind == "freeze":
            self.inject_freeze(seconds)
        elif kind == "corrupt":
            self.inject_corrupt([CORRUPT_KINDS[i % len(CORRUPT_KINDS)] for i in range(count)])
        elif kind == "backward_timestamps":
            self.inject_backward_timestamps(count)
        elif kind == "flap":
            self.inject_flap(seconds, frames=count)
        else:
            raise ValueError(f"unknown fault {kind!r}; allowed: {', '.join(FAULT_KINDS)}")

    def schedule(self, after_seconds: float, kind: str, seconds: float = 1.0, count: int = 1) -> None:
        """Inject `kind` once `after_seconds` have passed (checked on every read)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; allowed: {', '.join(FAULT_KINDS)}")
        with self._lock:
            self.scheduled.append((time.monotonic() + after_seconds, kind, seconds, count))
            self.scheduled.sort()

    def apply_due(self, now: float) -> None:
        if not self.scheduled or self.scheduled[0][0] > now:
            return
        with self._lock:
            due = [s for s in self.scheduled if s[0] <= now]
            self.scheduled = [s for s in self.scheduled if s[0] > now]
        for _, kind, seconds, count in due:
            self.inject(kind, seconds, count)

    def inject_disconnect(self, seconds: float) -> None:
        """The camera is gone for `seconds`: reads raise CameraLost, opens fail."""
        with self._lock:
            self.disconnected_until = time.monotonic() + seconds
            self._note(f"disconnect {seconds}s")

    def inject_flap(self, seconds: float, *, frames: int = 1) -> None:
        """For `seconds`, every opened camera delivers `frames` frames, then its reads raise
        CameraLost (a loose connector: the camera comes back and goes again at once)."""
        if frames < 0:
            raise ValueError(f"flap frames must be 0 or more, not {frames}")
        with self._lock:
            self.flapping_until = time.monotonic() + seconds
            self.flap_frames = frames
            self._note(f"flap {seconds}s frames={frames}")

    def flap_limit(self, now: float) -> int | None:
        """Frames an opened camera may deliver before it is lost, while a flap lasts."""
        return self.flap_frames if now < self.flapping_until else None

    def inject_freeze(self, seconds: float) -> None:
        """The camera repeats its last image exactly for `seconds`."""
        with self._lock:
            self.frozen_until = time.monotonic() + seconds
            self._note(f"freeze {seconds}s")

    def inject_corrupt(self, kinds: list[str]) -> None:
        """The next frames are malformed, one per entry: 'shape', 'dtype' or 'none'."""
        unknown = set(kinds) - set(CORRUPT_KINDS)
        if unknown:
            raise ValueError(f"unknown corruption {sorted(unknown)}; allowed: {CORRUPT_KINDS}")
        with self._lock:
            self.corrupt.extend(kinds)
            self._note(f"corrupt {kinds}")

    def inject_backward_timestamps(self, count: int = 1) -> None:
        """The next `count` frames carry timestamps earlier than their predecessor's."""
        with self._lock:
            self.backward_timestamps += count
            self._note(f"backward_timestamps {count}")

    def is_disconnected(self, now: float) -> bool:
        return now < self.disconnected_until

    def take_corruption(self) -> str | None:
        with self._lock:
            return self.corrupt.pop(0) if self.corrupt else None

    def take_backward(self) -> bool:
        with self._lock:
            if self.backward_timestamps > 0:
                self.backward_timestamps -= 1
                return True
            return False


class SyntheticCamera:
    """Draws a scrolling pattern with the frame number in the top rows, paced at `fps`."""

    def __init__(
        self,
        mode: CameraMode,
        *,
        faults: FaultPlan | None = None,
        counter: FrameCounter = PROCESS_FRAME_COUNTER,
        paced: bool = True,
    ) -> None:
        self.name = "synthetic"
        self._mode = CameraMode(mode.width, mode.height, mode.fps, "frames")
        self.faults = faults if faults is not None else FaultPlan()
        self._counter = counter
        self._paced = paced
        self._is_open = False
        self._next_due = 0.0
        self._last: Frame | None = None
        self._last_timestamp = 0.0
        self._frames_since_open = 0
        self._luma_strip, self._chroma = self._draw_background()

    def __repr__(self) -> str:
        state = "open" if self._is_open else "closed"
        m = self._mode
        return f"<SyntheticCamera {m.width}x{m.height}@{m.fps:g} {state}>"

    @property
    def mode(self) -> CameraMode:
        return self._mode

    @property
    def is_open(self) -> bool:
        return self._is_open

    def _draw_background(self) -> tuple[np.ndarray, np.ndarray]:
        """A luma strip one stripe period wider than the frame, and fixed chroma planes."""
        import numpy as np  # only a backend that makes arrays pays for numpy
        w, h = self._mode.width, self._mode.height
        cols = np.arange(w + STRIPE_PERIOD_PX)
        rows = np.arange(h)[:, None]
        luma = ((cols[None, :] + rows) % STRIPE_PERIOD_PX) * (200 // STRIPE_PERIOD_PX) + 30
        chroma = np.full((h // 2, w), 128, dtype=np.uint8)
        chroma[: h // 4, : w // 2] = 90
        return luma.astype(np.uint8), chroma

    def open(self) -> None:
        if self.faults.is_disconnected(time.monotonic()):
            raise CameraUnavailable("synthetic camera is disconnected (injected fault)")
        self._is_open = True
        self._frames_since_open = 0
        self._next_due = time.monotonic()

    def close(self) -> None:
        self._is_open = False

    def read(self, timeout: float) -> Frame:
        if not self._is_open:
            raise CameraLost("synthetic camera read while closed")
        now = time.monotonic()
        self.faults.apply_due(now)
        hang = self.faults.take_hang()
        if hang > 0:
            # A hung driver call: ignore the timeout, as the real failure does.
            time.sleep(hang)
            now = time.monotonic()
        if self.faults.is_disconnected(now):
            self._is_open = False
            raise CameraLost("synthetic camera disconnected (injected fault)")
        flap_limit = self.faults.flap_limit(now)
        if flap_limit is not None and self._frames_since_open >= flap_limit:
            self._is_open = False
            raise CameraLost(f"synthetic camera lost after {self._frames_since_open} frame(s) "
                             "(injected flap)")
        if now < self.faults.stalled_until:
            wait = min(timeout, self.faults.stalled_until - now)
            time.sleep(wait)
            if time.monotonic() < self.faults.stalled_until:
                raise CameraTimeout(f"no frame within {timeout:.2f}s (injected stall)")
            self._next_due = time.monotonic()
        if self._paced:
            due = self._next_due
            delay = due - time.monotonic()
            if delay > timeout:
                time.sleep(timeout)
                raise CameraTimeout(f"no frame within {timeout:.2f}s")
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                # Far behind (the reader was blocked): restart the schedule from now
                # rather than bursting out a second of frames at once.
                due = time.monotonic()
            self._next_due = due + 1.0 / self._mode.fps
            timestamp = due
        else:
            timestamp = time.monotonic()
        frame = self._make_frame(timestamp)
        self._frames_since_open += 1
        if self.faults.delivered is not None:
            self.faults.delivered.append(frame.sequence)
        return frame

    def _make_frame(self, timestamp: float) -> Frame:
        import numpy as np  # only a backend that makes arrays pays for numpy

        # The wall clock at the frame's own instant (its scheduled time when paced), as a
        # sensor timestamp would be, not when a busy thread got round to drawing it.
        wallclock = time.time() + (timestamp - time.monotonic())
        if self._last is not None and timestamp < self.faults.frozen_until:
            frozen = self._last
            return Frame(frozen.data, timestamp, wallclock, frozen.sequence)
        n = self._counter.take()
        w, h = self._mode.width, self._mode.height
        data = np.empty(self._mode.frame_shape, dtype=np.uint8)
        offset = (n * SCROLL_PX_PER_FRAME) % STRIPE_PERIOD_PX
        data[:h] = self._luma_strip[:, offset : offset + w]
        data[h:] = self._chroma
        framecode.draw(data[:h], n)
        if self.faults.take_backward():
            timestamp = self._last_timestamp - 1.0 / self._mode.fps
        self._last_timestamp = timestamp
        frame = Frame(data, timestamp, wallclock, n)
        self._last = frame
        corruption = self.faults.take_corruption()
        if corruption is not None:
            return Frame(_corrupt(data, corruption), timestamp, wallclock, n)
        return frame


def _corrupt(data: np.ndarray, kind: str) -> np.ndarray | None:
    import numpy as np  # only a backend that makes arrays pays for numpy
    if kind == "none":
        return None
    if kind == "shape":
        return data[:-2, :-2]
    return data.astype(np.float32)
