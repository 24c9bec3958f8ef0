"""Asking the machine for something and waiting, bounded, for its own outcome event.

A surface (the API, MQTT, the web page) posts a command through the controller and waits
for the CommandDone event with that command's id: it never reads the machine's history.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from controller.core.events import CommandDone

if TYPE_CHECKING:
    from controller.core.controller import Controller
    from controller.core.events import Subscription


class CommandDesk:
    """Posts commands and hands each caller the CommandDone that answers it."""

    def __init__(self, controller: Controller, *, name: str = "commands") -> None:
        self._controller = controller
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[CommandDone]] = {}
        self._subscription: Subscription = controller.bus.subscribe(
            name, self._on_done, kinds=(CommandDone,))

    def ask(self, trigger: str, timeout: float) -> CommandDone | None:
        """Post `trigger`; its outcome, or None when it has not settled within `timeout` s."""
        future: Future[CommandDone] = Future()
        with self._lock:  # registered before its outcome can arrive: _on_done takes this lock
            command_id = self._controller.command(trigger)
            self._waiting[command_id] = future
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            return None
        finally:
            with self._lock:
                self._waiting.pop(command_id, None)

    def close(self) -> None:
        self._controller.bus.unsubscribe(self._subscription)

    def _on_done(self, done: CommandDone) -> None:
        with self._lock:
            future = self._waiting.pop(done.command_id, None)
        if future is not None:  # else another desk's command, or one whose wait gave up
            future.set_result(done)
