"""The operator's GPIO panel: a push button that toggles recording or, held, resets; a status LED.

Built on gpiozero, imported lazily so hosts without it still run. The gpiozero API used here,
as its documentation describes it (gpiozero.readthedocs.io, "Input Devices", "Output
Devices", "API - Pins"):
- `Button(pin, *, pull_up=True, active_state=None, bounce_time=None, hold_time=1,
  hold_repeat=False, pin_factory=None)`: `when_held` runs once on the device's own thread
  after `hold_time` seconds pressed (hold_repeat=False); `when_released` runs on every
  release. gpiozero clears `is_held`/`held_time` before `when_released` runs, so the button
  remembers itself whether the press was a hold.
- `LED(pin, *, active_high=True, initial_value=False, pin_factory=None)` with `on()`/`off()`.
  The patterns are not `LED.blink(on_time, off_time, n, background=True)` because the
  critical pattern (SOS) is not one on/off period; a small pattern thread drives on/off.
- Pin factories: `pin_factory=None` means gpiozero's default (`Device.pin_factory`, chosen
  on first use from lgpio, rpigpio, pigpio, native, or $GPIOZERO_PIN_FACTORY); when none
  can load it raises `BadPinFactory` after warning `PinFactoryFallback` for each one
  tried. Named factories are the `gpiozero_pin_factories` entry points, as gpiozero itself
  resolves $GPIOZERO_PIN_FACTORY. `MockFactory` (gpiozero.pins.mock) simulates pins: tests
  press the button with `pin.drive_low()`/`drive_high()` and read the LED's history from
  `pin.states` (a list of `PinState(timestamp, state)`).

Callbacks only post events ("toggle", "reset") to the controller; they never fire triggers.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from hw.errors import VigilError

Post = Callable[[str], None]
StateSource = Callable[[], str]

TOGGLE_EVENT = "toggle"  # the controller decides start or stop from the state it meets
RESET_EVENT = "reset"
BUTTON_BOUNCE_SECONDS = 0.05  # contacts of a cheap push button chatter for a few milliseconds
LED_POLL_SECONDS = 0.05  # how quickly the LED follows a state change
JOIN_TIMEOUT_SECONDS = 2.0

# A pattern is a cycle of (on_seconds, off_seconds) steps, repeated while the state lasts.
Step = tuple[float, float]
SOLID: tuple[Step, ...] = ((1.0, 0.0),)
DARK: tuple[Step, ...] = ((0.0, 1.0),)
SOS_DOT_SECONDS = 0.15
SOS_DASH_SECONDS = 0.6
SOS_GAP_SECONDS = 0.15
SOS_PAUSE_SECONDS = 1.2
_DOT: Step = (SOS_DOT_SECONDS, SOS_GAP_SECONDS)
_DASH: Step = (SOS_DASH_SECONDS, SOS_GAP_SECONDS)
SOS: tuple[Step, ...] = (_DOT, _DOT, _DOT, _DASH, _DASH, _DASH, _DOT, _DOT,
                         (SOS_DOT_SECONDS, SOS_PAUSE_SECONDS))
LED_PATTERNS: Mapping[str, tuple[Step, ...]] = {
    "recording": SOLID,
    "idle": ((1.0, 1.0),),  # slow blink
    "recovering": ((0.1, 0.1),),  # fast blink
    "critical": SOS,
    "reset": DARK,
}


class GPIOUnavailable(VigilError, RuntimeError):
    """No GPIO on this machine, or the configured pins cannot be used; the reason says which."""


@dataclass(frozen=True)
class GpioSpec:
    """What the configuration asks of the GPIO panel (controller.config.GpioConfig's fields).

    Types only: the defaults live in the config schema.
    """

    enabled: bool
    reset_button: str | None
    status_led: str | None
    reset_hold_seconds: float
    pin_factory: str | None


def make_pin_factory(name: str | None) -> Any:
    """The gpiozero pin factory `name` asks for; None is gpiozero's default choice.

    Raises GPIOUnavailable, with every reason gpiozero gave, when it cannot load.
    """
    try:
        from gpiozero.exc import GPIOZeroError, PinFactoryFallback
    except ImportError as err:
        raise GPIOUnavailable(f"gpiozero is not installed ({err})") from err
    with warnings.catch_warnings(record=True) as caught:
        # gpiozero warns once per factory it skips; those reasons go into our one message.
        warnings.simplefilter("always")
        try:
            factory = _load_pin_factory(name)
        except (GPIOZeroError, ImportError, OSError, RuntimeError) as err:
            tried = [str(w.message) for w in caught if issubclass(w.category, PinFactoryFallback)]
            detail = f" ({'; '.join(tried)})" if tried else ""
            raise GPIOUnavailable(f"{err}{detail}") from err
    for warning in caught:
        logger.info("gpiozero: {}", warning.message)
    if factory is None:
        raise GPIOUnavailable(f"gpiozero has no pin factory named {name!r}")
    return factory


def _load_pin_factory(name: str | None) -> Any:
    from importlib.metadata import entry_points

    from gpiozero import Device

    if name is None:
        Device.ensure_pin_factory()
        return Device.pin_factory
    for entry in entry_points(group="gpiozero_pin_factories"):
        if entry.name == name:
            return entry.load()()
    return None


class ResetButton:
    """A push button: a short press posts "toggle", holding it `hold_seconds` posts "reset"."""

    def __init__(self, pin: str, *, hold_seconds: float, post: Post, pin_factory: Any) -> None:
        from gpiozero import Button

        self.pin_name = pin
        self.hold_seconds = hold_seconds
        self._post = post
        self._lock = threading.Lock()
        self._held = False
        self.short_presses = 0
        self.holds = 0
        self.device = Button(pin, pull_up=True, bounce_time=BUTTON_BOUNCE_SECONDS,
                             hold_time=hold_seconds, hold_repeat=False, pin_factory=pin_factory)
        self.device.when_held = self._on_held
        self.device.when_released = self._on_released

    def __repr__(self) -> str:
        return (f"<ResetButton pin={self.pin_name} hold={self.hold_seconds}s "
                f"presses={self.short_presses} holds={self.holds}>")

    def _on_held(self) -> None:
        with self._lock:
            self._held = True
            self.holds += 1
        logger.warning("button on {} held {}s: emergency reset", self.pin_name, self.hold_seconds)
        self._post(RESET_EVENT)

    def _on_released(self) -> None:
        with self._lock:
            was_held, self._held = self._held, False
            if not was_held:
                self.short_presses += 1
        if not was_held:  # the release that ends a hold is not also a short press
            logger.info("button on {} pressed: toggling recording", self.pin_name)
            self._post(TOGGLE_EVENT)

    def close(self) -> None:
        self.device.close()


class StatusLight:
    """An LED that shows the state: LED_PATTERNS[state], followed from a pattern thread.

    The thread (`vigil-status-led`) polls `state` every LED_POLL_SECONDS and restarts the
    pattern the moment the state changes; unknown states leave the LED off.
    """

    def __init__(self, pin: str, *, state: StateSource, pin_factory: Any) -> None:
        from gpiozero import LED

        self.pin_name = pin
        self._state = state
        self.showing = ""
        self.device = LED(pin, pin_factory=pin_factory)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vigil-status-led", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<StatusLight pin={self.pin_name} showing={self.showing or 'nothing'}>"

    def close(self) -> None:
        """Stop the pattern, turn the LED off and release the pin; idempotent."""
        self._closed.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_SECONDS)
        if not self.device.closed:
            self.device.off()
            self.device.close()

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                state = self._state()
                self.showing = state
                for on_seconds, off_seconds in LED_PATTERNS.get(state, DARK):
                    if on_seconds > 0:
                        self.device.on()
                        if not self._hold(on_seconds, state):
                            break
                    if off_seconds > 0:
                        self.device.off()
                        if not self._hold(off_seconds, state):
                            break
        except Exception:
            logger.exception("status LED on {} stopped; recording is not affected", self.pin_name)

    def _hold(self, seconds: float, state: str) -> bool:
        """Keep the LED as it is for `seconds`; False as soon as the state changes or we close."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._closed.wait(min(left, LED_POLL_SECONDS)) or self._state() != state:
                return False
        return True


class OperatorPanel:
    """The button and LED a unit has (either may be absent); `close()` releases both."""

    def __init__(self, spec: GpioSpec, *, post: Post, state: StateSource,
                 pin_factory: Any | None = None) -> None:
        self.spec = spec
        self.factory = pin_factory if pin_factory is not None else make_pin_factory(spec.pin_factory)
        self.button: ResetButton | None = None
        self.light: StatusLight | None = None
        try:
            if spec.reset_button is not None:
                self.button = ResetButton(spec.reset_button, hold_seconds=spec.reset_hold_seconds,
                                          post=post, pin_factory=self.factory)
            if spec.status_led is not None:
                self.light = StatusLight(spec.status_led, state=state, pin_factory=self.factory)
        except Exception as err:
            self.close()
            raise GPIOUnavailable(f"{type(err).__name__}: {err}") from err
        logger.info("GPIO ready button={} led={} factory={}", spec.reset_button, spec.status_led,
                    type(self.factory).__name__)

    def __repr__(self) -> str:
        return f"<OperatorPanel button={self.button!r} light={self.light!r}>"

    def close(self) -> None:
        """Turn the LED off and release the pins; idempotent."""
        if self.light is not None:
            self.light.close()
        if self.button is not None:
            self.button.close()


def open_panel(spec: GpioSpec, *, post: Post, state: StateSource,
               pin_factory: Any | None = None) -> OperatorPanel | None:
    """The configured GPIO panel, or None when GPIO is off, unconfigured or unavailable.

    Unavailable GPIO is said once, here, and the recorder runs on without it.
    """
    if not spec.enabled or (spec.reset_button is None and spec.status_led is None):
        return None
    try:
        return OperatorPanel(spec, post=post, state=state, pin_factory=pin_factory)
    except GPIOUnavailable as err:
        logger.warning("GPIO unavailable, running without the reset button and status LED: {}", err)
        return None
