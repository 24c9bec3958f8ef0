"""Writes encoded frames to a file (picamera2.outputs.fileoutput).

Follows raspberrypi/picamera2 picamera2/outputs/fileoutput.py
@ bf814e5b1c118893af3368c5649c4b91044adac5: FileOutput(file=None, pts=None, split=None);
nothing is written until the first keyframe; write errors mark the output dead and go to
the connectiondead callback instead of raising. Datagram splitting is not faked.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .output import Output


class FileOutput(Output):
    def __init__(self, file: Any = None, pts: Any = None, split: int | None = None) -> None:
        super().__init__(pts=pts)
        self.dead = False
        self._needs_close = False
        self._firstframe = True
        self._splitsize = split
        self.connectiondead: Callable[[BaseException], None] | None = None
        self.fileoutput = file

    @property
    def fileoutput(self) -> Any:
        return self._fileoutput

    @fileoutput.setter
    def fileoutput(self, file: Any) -> None:
        self._firstframe = True
        self._needs_close = False
        if file is None:
            self._fileoutput = None
        elif isinstance(file, str | Path):
            self._fileoutput = open(file, "wb")  # noqa: SIM115 - closed in stop()
            self._needs_close = True
        elif isinstance(file, io.BufferedIOBase):
            self._fileoutput = file
        else:
            raise RuntimeError("Must pass io.BufferedIOBase")

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        if audio:
            raise RuntimeError("Fileoutput does not support audio")
        if self._fileoutput is None or not self.recording:
            return
        if self._firstframe:
            if not keyframe:
                return
            self._firstframe = False
        self._write(frame, timestamp)

    def stop(self) -> None:
        super().stop()
        self.close()

    def close(self) -> None:
        try:
            if self._needs_close:
                self._fileoutput.close()
        except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError) as err:
            self._mark_dead(err)

    def _write(self, frame: Any, timestamp: int | None = None) -> None:
        try:
            self._fileoutput.write(frame)
            self._fileoutput.flush()
            self.outputtimestamp(timestamp)
        except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError, ValueError) as err:
            self._mark_dead(err)

    def _mark_dead(self, err: BaseException) -> None:
        self.dead = True
        if self.connectiondead is not None:
            self.connectiondead(err)
