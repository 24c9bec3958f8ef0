"""An operation queued for the camera's frame loop, with a result to wait for (picamera2.job).

Same contract as raspberrypi/picamera2 picamera2/job.py @ aeb3ff4fd1d9f0067b13e856cc113cc6a8249668:
each function returns (done, result); get_result(timeout) is Future.result, so a timeout
raises TimeoutError (concurrent.futures.TimeoutError is the builtin since Python 3.11) and
the job stays queued; cancel() makes get_result raise CancelledError.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any


class Job:
    def __init__(
        self,
        functions: list[Callable[[], tuple[bool, Any]]],
        signal_function: Callable[[Job], None] | None = None,
    ) -> None:
        self._functions = list(functions)
        self._future: Future[Any] = Future()
        self._future.set_running_or_notify_cancel()
        self._signal_function = signal_function
        self._result: Any = None
        self.calls = 0

    def execute(self) -> bool:
        """Run as many stages as can finish now; True when the whole job is done."""
        result = None
        try:
            while self._functions:
                done, result = self._functions[0]()
                self.calls += 1
                if not done:
                    break
                self._functions.pop(0)
            if not self._functions:
                self._result = result
        except Exception as err:
            self._future.set_exception(err)
            self._functions = []
        return not self._functions

    def signal(self) -> None:
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function:
            self._signal_function(self)

    def get_result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        if not self._future.done():
            self._future.set_exception(CancelledError())
