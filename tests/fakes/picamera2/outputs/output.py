"""Base class every encoder output derives from (picamera2.outputs.output).

Same interface as raspberrypi/picamera2 picamera2/outputs/output.py
@ ee44f64ab3de7d5f7627cae3b881d1f0ef77d572. Encoders call
`outputframe(frame, keyframe, timestamp, packet, audio)` positionally: frame is the encoded
bytes, timestamp is in microseconds since the encoder's first frame, packet is the
av.Packet for libav encoders and None for the hardware (V4L2) encoder.
"""

from __future__ import annotations

from typing import Any


class Output:
    """Handles output functionality of encoders."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """Take one encoded frame; the base class drops it."""

    def outputtimestamp(self, timestamp: int | None) -> None:
        """Append a timestamp (microseconds) to the pts file as milliseconds, if there is one."""
        if self.ptsoutput is not None and timestamp is not None:
            print(f"{timestamp // 1000}.{timestamp % 1000:03}", file=self.ptsoutput, flush=True)

    @property
    def ptsoutput(self) -> Any:
        return self._ptsoutput

    @ptsoutput.setter
    def ptsoutput(self, file: Any) -> None:
        if isinstance(file, str):
            self._ptsoutput = open(file, "w")  # noqa: SIM115 - lives as long as the output
        else:
            self._ptsoutput = file

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        """Some outputs need to know about an encoder's stream; the base class does not."""
