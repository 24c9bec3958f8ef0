"""sd_notify: a real controller recording the synthetic camera talks to a real datagram socket.

The socket stands in for systemd: it is bound in a temporary directory (or in the abstract
namespace) and named by $NOTIFY_SOCKET, exactly as systemd hands it to a Type=notify service.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.core.controller import Controller
from controller.core.health import Health
from controller.core.snapshot import Refusal
from controller.surfaces.sdnotify import (
    NotifySocket,
    ServiceNotifier,
    describe,
    notify_address,
    watchdog_timeout_seconds,
)
from hw.factory import Hardware
from tests.fakes.notify_socket import ServiceManagerSocket, pings
from tests.specs import camera_spec, recording_spec

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s: well above the controller loop's 0.25 s tick
PING_SECONDS = WATCHDOG_USEC / 2_000_000


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="vigil-notify-") as name:
        yield Path(name)


def make_controller(tmp_path: Path, *, autostart: bool = True) -> Controller:
    camera = camera_spec(backend="synthetic", width=160, height=120, fps=30, frozen_seconds=0)
    recording = recording_spec(root=tmp_path / "rec", segment_seconds=2, fragment_seconds=0.5)
    return Controller(Hardware(camera, recording), autostart=autostart)


def run_in_thread(controller: Controller) -> threading.Thread:
    thread = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    thread.start()
    return thread


def shut_down(controller: Controller, thread: threading.Thread) -> None:
    controller.request_shutdown()
    thread.join(20)
    assert not thread.is_alive(), "controller did not shut down"


# --- the protocol's pieces ---------------------------------------------------------------------


def test_notify_address_reads_paths_and_abstract_names() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@vigil/notify") == b"\0vigil/notify"
    assert notify_address("vsock:2:1234") is None
    assert notify_address("relative/path") is None
    assert notify_address("@") is None


def test_watchdog_timeout_honours_watchdog_pid() -> None:
    assert watchdog_timeout_seconds({"WATCHDOG_USEC": "30000000"}, pid=42) == 30.0
    assert watchdog_timeout_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 30.0
    assert watchdog_timeout_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_timeout_seconds({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_timeout_seconds({"WATCHDOG_USEC": "soon"}, pid=42) is None
    assert watchdog_timeout_seconds({}, pid=42) is None


def test_status_line_names_state_health_and_why_idle(tmp_path: Path) -> None:
    snap = make_controller(tmp_path, autostart=False).snapshot
    healthy = Health(97, "ok", {})
    assert describe(replace(snap, state="recording", health=healthy)) == "recording; health 97"
    assert describe(replace(snap, state="critical", health=Health(12, "state is critical", {}))) == (
        "critical; health 12")
    assert describe(replace(snap, state="recovering", health=None)) == "recovering"
    refusal = Refusal("start", "camera missing", 0.0)
    assert describe(replace(snap, state="idle", health=None, last_refusal=refusal)) == (
        "idle; last refusal: camera missing"
    )


def test_without_notify_socket_nothing_is_sent_and_no_thread_starts(tmp_path: Path) -> None:
    assert NotifySocket(env={}).send("READY=1") is False
    controller = make_controller(tmp_path, autostart=False)
    notifier = ServiceNotifier(controller, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    notifier.start()
    assert not any(t.name == "vigil-watchdog" for t in threading.enumerate())
    notifier.close()


# --- with a real controller ---------------------------------------------------------------------


def test_ready_after_recording_pings_while_healthy_and_stop_when_the_loop_is_wedged(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = socket_dir / "notify"
    systemd = ServiceManagerSocket(str(path))
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "WATCHDOG_PID": str(os.getpid())}
    controller = make_controller(tmp_path)
    notifier = ServiceNotifier(controller, env=env)
    thread = run_in_thread(controller)
    notifier.start()
    released = threading.Event()
    try:
        seen = systemd.wait_for(lambda m: m.get("READY") == "1", timeout=20)
        ready_at = time.time()
        assert pings(seen) == 0  # the watchdog only runs once start-up is complete
        assert seen[-1]["STATUS"].startswith("recording")
        started = [t for t, _, after, _ in controller.transitions if after == "recording"]
        assert started and started[0] <= ready_at

        # Healthy: a ping about every half of WATCHDOG_USEC (4 expected in 2 s).
        assert 2 <= pings(systemd.collect(2.0)) <= 6

        # A state change is reported at once, not only periodically.
        controller.post("stop")
        systemd.wait_for(lambda m: m.get("STATUS", "").startswith("idle"), timeout=10)

        # Wedge the controller loop for real: an event whose handling blocks.
        entered = threading.Event()

        def wedge() -> None:
            entered.set()
            released.wait(30)

        monkeypatch.setattr(controller.unit, "trigger", lambda *args, **kwargs: wedge())
        controller.post("start")
        assert entered.wait(5)
        systemd.collect(2 * PING_SECONDS)  # pings already due when the loop stopped may still come
        assert pings(systemd.collect(2.0)) == 0, "watchdog kept pinging a wedged controller loop"

        released.set()
        systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5)  # alive again: pings resume
    finally:
        released.set()
        shut_down(controller, thread)
        notifier.close()
    assert systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=5)
    systemd.close()


def test_abstract_socket_idle_by_config_and_foreign_watchdog_pid(tmp_path: Path) -> None:
    name = f"@vigil-test-{uuid.uuid4().hex}"
    systemd = ServiceManagerSocket(b"\0" + name[1:].encode())
    # WATCHDOG_PID names another process: the pings are not ours to send (sd_watchdog_enabled(3)).
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "WATCHDOG_PID": str(os.getpid() + 1)}
    controller = make_controller(tmp_path, autostart=False)
    notifier = ServiceNotifier(controller, env=env)
    thread = run_in_thread(controller)
    notifier.start()
    try:
        seen = systemd.wait_for(lambda m: m.get("READY") == "1", timeout=10)
        assert seen[-1]["STATUS"].startswith("idle")
        assert pings(systemd.collect(3 * PING_SECONDS)) == 0
        notifier.stopping()  # what the daemon's SIGTERM handler does
        stopping = systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=5)
        assert stopping[-1]["STATUS"] == "stopping"
    finally:
        shut_down(controller, thread)
        notifier.close()
    assert systemd.collect(0.3) == []  # STOPPING=1 is said once
    systemd.close()
