"""Typed events and the bus that hands them to any number of subscribers.

The controller (and the recording and housekeeping threads) publish what happened: a state
changed, a transition was refused, a fault, an alert, a segment closed, an hour merged,
footage deleted, a command's outcome, a config reloaded. Each subscriber has its own bounded
queue and its own thread: `publish` never blocks, so a slow or dead subscriber (a stuck MQTT
broker, a slow browser) drops its own messages, counted, and never stalls the controller
loop or recording.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from controller.core.alerts import Alert

DEFAULT_QUEUE_EVENTS = 256
SUBSCRIBER_POLL_SECONDS = 0.5
SUBSCRIBER_JOIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class StateChanged:
    before: str
    after: str
    trigger: str
    reason: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class TransitionRefused:
    trigger: str
    state: str
    reason: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class FaultRaised:
    """An error category spent its budget (the ledger's verdict)."""

    category: str
    reason: str
    state: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AlertRaised:
    alert: Alert


@dataclass(frozen=True, slots=True)
class SegmentClosed:
    path: Path
    frames: int
    started_wallclock: float
    duration_seconds: float
    size_bytes: int
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class HourMerged:
    hour: str
    path: Path
    sources: tuple[Path, ...]
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class FootageDeleted:
    path: Path
    size_bytes: int
    reason: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class CommandDone:
    """What the machine did with one command (an action from the API, GPIO, MQTT, ...).

    `transitions` lists each state change the command caused, in order ("idle -> recording on
    start"); a reset is `reset`, `reset_done` and, when the config says autostart, `start`.
    `refused` is (trigger, the guard's reason) for the step a guard refused; `possible` is
    False when the trigger does nothing in the state it met.
    """

    command_id: int
    trigger: str
    before: str
    state: str
    transitions: tuple[str, ...]
    refused: tuple[str, str] | None
    possible: bool
    detail: str
    at: float = field(default_factory=time.time)

    @property
    def is_done(self) -> bool:
        return self.possible and self.refused is None


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """A reset reloaded the config file; `parts` is what the composition root built from it."""

    source: str
    parts: Any
    at: float = field(default_factory=time.time)


Event = (StateChanged | TransitionRefused | FaultRaised | AlertRaised | SegmentClosed | HourMerged
         | FootageDeleted | CommandDone | ConfigReloaded)
Handler = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    name: str
    delivered: int
    dropped: int
    failed: int
    queued: int


class Subscription:
    """One subscriber: a bounded queue and the thread that hands its events to `handler`."""

    def __init__(self, name: str, handler: Handler, *, maxsize: int,
                 kinds: tuple[type, ...] | None) -> None:
        self.name = name
        self.kinds = kinds
        self._handler = handler
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._warned_drop = False
        self._thread = threading.Thread(target=self._run, name=f"vigil-events-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<Subscription {self.name} delivered={self.delivered} dropped={self.dropped}>"

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wants(self, event: object) -> bool:
        return self.kinds is None or isinstance(event, self.kinds)

    def offer(self, event: object) -> None:
        """Queue `event` for the handler; never blocks: a full queue drops it, counted."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning("event subscriber {} is not keeping up; dropping its events "
                               "(counted in vigil_events_dropped_total)", self.name)

    def stats(self) -> SubscriberStats:
        return SubscriberStats(self.name, self.delivered, self.dropped, self.failed, self._queue.qsize())

    def close(self, timeout: float = SUBSCRIBER_JOIN_SECONDS) -> bool:
        """Stop handing out events; False when the handler is stuck and the thread was left."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=SUBSCRIBER_POLL_SECONDS)
            except queue.Empty:
                continue
            try:
                self._handler(event)
            except Exception:
                self.failed += 1
                logger.exception("event subscriber {} failed on {}", self.name, type(event).__name__)
            else:
                self.delivered += 1
                self._warned_drop = False


class EventBus:
    """Publish to every subscriber that wants the event; safe from any thread, never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription, ...] = ()
        self.published = 0

    def __repr__(self) -> str:
        return f"<EventBus subscribers={len(self._subscriptions)} published={self.published}>"

    def subscribe(self, name: str, handler: Handler, *, maxsize: int = DEFAULT_QUEUE_EVENTS,
                  kinds: tuple[type, ...] | None = None) -> Subscription:
        """Call `handler(event)` on a thread of its own for each event (of `kinds`, or all)."""
        subscription = Subscription(name, handler, maxsize=maxsize, kinds=kinds)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription, timeout: float = SUBSCRIBER_JOIN_SECONDS) -> bool:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        return subscription.close(timeout)

    def publish(self, event: object) -> None:
        self.published += 1
        for subscription in self._subscriptions:  # a tuple swapped whole: no lock needed here
            if subscription.wants(event):
                subscription.offer(event)

    def stats(self) -> tuple[SubscriberStats, ...]:
        return tuple(s.stats() for s in self._subscriptions)

    def close(self, timeout: float = SUBSCRIBER_JOIN_SECONDS) -> None:
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, ()
        deadline = time.monotonic() + timeout
        for subscription in subscriptions:
            subscription.close(max(0.0, deadline - time.monotonic()))
