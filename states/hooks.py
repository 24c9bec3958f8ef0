"""The hooks the controller hands the machine's model: how it posts, schedules and reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Post(Protocol):
    """Queue `trigger` for the controller thread; `reason` goes to the trigger as `reason=`."""

    def __call__(self, trigger: str, reason: str = "") -> None: ...


Schedule = Callable[[float, str], None]
ErrorSink = Callable[[str, str], None]
