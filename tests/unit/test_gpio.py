"""The GPIO panel with gpiozero's MockFactory: the button drives a real controller, the LED shows it.

MockFactory simulates the pins in software (gpiozero.pins.mock): the button's pin is pressed
with `drive_low()` (it is pulled up) and released with `drive_high()`; the LED's pin keeps
its history in `pin.states`, a list of `PinState(timestamp, state)` where the timestamp is
the time since the previous change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin
from loguru import logger

from controller.core.controller import Controller
from hw.factory import Hardware
from hw.gpio import LED_PATTERNS, SOS, OperatorPanel, StatusLight, open_panel
from tests.helpers import gaps, recorded_numbers
from tests.specs import camera_spec, gpio_spec, recording_spec

BUTTON, LED = "17", "27"
FAST_HOLD_SECONDS = 0.3


def make_controller(tmp_path: Path) -> Controller:
    camera = camera_spec(backend="synthetic", width=160, height=120, fps=30, frozen_seconds=0)
    recording = recording_spec(root=tmp_path / "rec", segment_seconds=2, fragment_seconds=0.5)
    return Controller(Hardware(camera, recording), autostart=True)


class Unit:
    """A running controller with a GPIO panel on mock pins."""

    def __init__(self, tmp_path: Path, hold_seconds: float) -> None:
        self.factory = MockFactory()
        self.controller = make_controller(tmp_path)
        self.thread = threading.Thread(target=self.controller.run, name="vigil-controller", daemon=True)
        self.panel = OperatorPanel(
            gpio_spec(reset_button=BUTTON, status_led=LED, reset_hold_seconds=hold_seconds),
            post=self.controller.post, state=lambda: self.controller.state, pin_factory=self.factory,
        )
        self.button: MockPin = self.factory.pin(BUTTON)
        self.led: MockPin = self.factory.pin(LED)
        self.thread.start()
        assert self.controller.wait_for_state("recording", 20), self.controller.refusals

    def press(self) -> None:
        self.button.drive_low()
        self.button.drive_high()

    def close(self) -> None:
        self.controller.request_shutdown()
        self.thread.join(20)
        self.panel.close()
        assert not self.thread.is_alive()


@pytest.fixture
def make_unit(tmp_path: Path) -> Iterator[Callable[..., Unit]]:
    units: list[Unit] = []

    def make(hold_seconds: float = FAST_HOLD_SECONDS) -> Unit:
        units.append(Unit(tmp_path, hold_seconds))
        return units[-1]

    yield make
    for unit in units:
        if unit.thread.is_alive():
            unit.close()


def changes(pin: MockPin) -> list[bool]:
    """The LED's states since its history was last cleared, the starting state first."""
    return [bool(s.state) for s in pin.states]


def on_durations(pin: MockPin) -> list[float]:
    """How long each completed "on" lasted, in order."""
    durations = []
    for previous, current in zip(pin.states, pin.states[1:], strict=False):
        if previous.state and not current.state:
            durations.append(current.timestamp)
    return durations


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def reached(controller: Controller, state: str) -> Callable[[], bool]:
    return lambda: any(after == state for _, _, after, _ in controller.transitions)


# --- the button -----------------------------------------------------------------------------


def test_short_press_toggles_recording_off_and_on_and_the_led_follows(make_unit, tmp_path: Path) -> None:
    unit = make_unit()
    c = unit.controller
    assert wait_until(lambda: unit.led.state == 1, 2)  # recording: on
    unit.led.clear_states()
    time.sleep(0.5)  # an observation window: a solid LED does not change
    assert changes(unit.led) == [True]

    unit.press()
    assert c.wait_for_state("idle", 10), c.refusals
    # idle: slow blink (1 s on, 1 s off): at least one full on -> off -> on within 3.5 s
    unit.led.clear_states()
    assert wait_until(lambda: len(changes(unit.led)) >= 3, 3.5), changes(unit.led)

    unit.press()
    assert c.wait_for_state("recording", 10), c.refusals
    assert wait_until(lambda: unit.led.state == 1, 2)
    assert unit.panel.button is not None
    assert (unit.panel.button.short_presses, unit.panel.button.holds) == (2, 0)
    frames = c.snapshot.totals.frames_recorded
    assert c.wait_until(lambda: c.snapshot.totals.frames_recorded >= frames + 15, 10)
    unit.close()
    # The synthetic camera numbers the frames it draws and draws none while stopped: the two
    # runs together are one unbroken sequence, so nothing was lost at the stop or the start.
    assert gaps(recorded_numbers(tmp_path / "rec")) == []


def test_hold_resets_then_records_again_without_toggling(make_unit) -> None:
    unit = make_unit(FAST_HOLD_SECONDS)
    c = unit.controller
    unit.button.drive_low()
    assert c.wait_until(reached(c, "reset"), 10), c.transitions
    unit.button.drive_high()  # releasing after a hold is not a short press
    assert c.wait_until(lambda: reached(c, "reset")() and c.state == "recording", 20), c.transitions
    button = unit.panel.button
    assert button is not None and (button.holds, button.short_presses) == (1, 0)
    after_reset = [(b, a) for _, b, a, _ in c.transitions]
    after_reset = after_reset[after_reset.index(("recording", "reset")):]
    assert after_reset == [("recording", "reset"), ("reset", "idle"), ("idle", "recording")]


def test_holding_for_the_default_three_seconds_resets(make_unit) -> None:
    unit = make_unit(gpio_spec().reset_hold_seconds)
    c = unit.controller
    unit.button.drive_low()
    assert c.wait_until(reached(c, "reset"), 10), c.transitions
    unit.button.drive_high()
    assert c.wait_until(lambda: c.state == "recording", 20), c.transitions


def test_callbacks_only_post_events() -> None:
    factory = MockFactory()
    posted: list[str] = []
    panel = OperatorPanel(gpio_spec(reset_button=BUTTON, reset_hold_seconds=0.2), post=posted.append,
                          state=lambda: "idle", pin_factory=factory)
    pin = factory.pin(BUTTON)
    try:
        pin.drive_low()
        pin.drive_high()
        assert posted == ["toggle"]
        pin.drive_low()
        assert wait_until(lambda: "reset" in posted, 5)
        pin.drive_high()
        assert posted == ["toggle", "reset"]
    finally:
        panel.close()


# --- the LED patterns ------------------------------------------------------------------------


class StateBox:
    def __init__(self, state: str) -> None:
        self.state = state

    def __call__(self) -> str:
        return self.state


@pytest.fixture
def light() -> Iterator[tuple[StatusLight, StateBox, MockPin]]:
    factory = MockFactory()
    box = StateBox("reset")
    status_light = StatusLight(LED, state=box, pin_factory=factory)
    yield status_light, box, factory.pin(LED)
    status_light.close()


def show(light: tuple[StatusLight, StateBox, MockPin], state: str) -> MockPin:
    status_light, box, pin = light
    box.state = state
    assert wait_until(lambda: status_light.showing == state, 2)
    pin.clear_states()
    return pin


def test_led_is_solid_while_recording_and_off_during_reset(light) -> None:
    pin = show(light, "recording")
    time.sleep(0.6)  # observation window
    assert changes(pin) == [True]
    pin = show(light, "reset")
    time.sleep(0.6)
    assert changes(pin) == [False]


def test_led_blinks_slowly_when_idle_and_fast_when_recovering(light) -> None:
    pin = show(light, "idle")
    time.sleep(1.0)
    slow = len(changes(pin)) - 1
    pin = show(light, "recovering")
    time.sleep(1.0)
    fast = len(changes(pin)) - 1
    assert LED_PATTERNS["idle"] == ((1.0, 1.0),) and LED_PATTERNS["recovering"] == ((0.1, 0.1),)
    assert slow <= 2  # 1 s on, 1 s off: at most one change in a second (plus the restart)
    assert fast >= 4 * max(slow, 1), (slow, fast)  # 0.1 s on/off: about ten


def test_led_signals_sos_when_critical(light) -> None:
    status_light, _, _ = light
    pin = show(light, "critical")
    assert wait_until(lambda: len(on_durations(pin)) >= len(SOS), 10), changes(pin)
    on = on_durations(pin)[: len(SOS)]
    dots, dashes = on[:3] + on[6:9], on[3:6]
    assert min(dashes) > 2 * max(dots), on  # ... --- ...
    assert status_light.showing == "critical"


# --- no GPIO on this machine ------------------------------------------------------------------


def test_unavailable_gpio_is_said_once_and_the_recorder_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gpiozero's own way of choosing a factory, pointed at one that does not exist: the same
    # BadPinFactory as a host without GPIO, on any machine.
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    monkeypatch.setattr(Device, "pin_factory", None)
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    controller = make_controller(tmp_path)
    thread = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    try:
        panel = open_panel(gpio_spec(reset_button=BUTTON, status_led=LED), post=controller.post,
                           state=lambda: controller.state)
        thread.start()
        assert panel is None
        assert controller.wait_for_state("recording", 20), controller.refusals
        assert controller.wait_until(lambda: controller.snapshot.totals.frames_recorded >= 15, 10)
    finally:
        logger.remove(sink)
        controller.request_shutdown()
        thread.join(20)
    said = [line for line in lines if "GPIO unavailable" in line]
    assert len(said) == 1, lines
    assert "no-such-factory" in said[0]


def test_a_pin_the_board_does_not_have_is_unavailable_not_fatal() -> None:
    panel = open_panel(gpio_spec(status_led="GPIO99"), post=lambda name: None, state=lambda: "idle",
                       pin_factory=MockFactory())
    assert panel is None


def test_nothing_configured_opens_nothing() -> None:
    assert open_panel(gpio_spec(), post=lambda name: None, state=lambda: "idle") is None
    assert open_panel(gpio_spec(enabled=False, reset_button=BUTTON), post=lambda name: None,
                      state=lambda: "idle") is None
