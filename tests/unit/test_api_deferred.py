"""The daemon imports and starts its HTTP API once recording has its first fragment on disk
(controller/daemon.py BackgroundApi): until then the API's import does not take CPU from
the camera and the encoder. A controller that is not simply starting to record (autostart
off, a fault) gets its API at once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from controller.config import ApiConfig
from controller.core.controller import Controller
from controller.daemon import BackgroundApi


class Stub:
    """What BackgroundApi reads of the controller before it starts: its snapshot."""

    def __init__(self, **snapshot: Any) -> None:
        self.snapshot = SimpleNamespace(**{"autostart": True, "state": "idle", "configured_fps": 30.0,
                                           "run": SimpleNamespace(frames_recorded=0), **snapshot})


def deferred(stub: Stub) -> BackgroundApi:
    return BackgroundApi(ApiConfig(enabled=False), cast(Controller, stub), fragment_seconds=1.0)


@pytest.mark.parametrize(("snapshot", "waits"), [
    ({}, True),  # about to start recording
    ({"state": "recording", "run": SimpleNamespace(frames_recorded=30)}, True),  # fragment not yet out
    ({"state": "recording", "run": SimpleNamespace(frames_recorded=31)}, False),  # its keyframe came
    ({"state": "recovering"}, False),  # a fault: the operator needs the API now
    ({"autostart": False}, False),  # nothing will record until asked through the API
])
def test_the_api_waits_only_while_the_first_fragment_is_on_its_way(snapshot: dict[str, Any],
                                                                    waits: bool) -> None:
    assert deferred(Stub(**snapshot))._recording_is_starting() is waits


def test_stopping_while_it_waits_starts_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.surfaces import api as api_module

    started: list[object] = []
    monkeypatch.setattr(api_module, "start_api", lambda *args, **kwargs: started.append(args))
    api = deferred(Stub())  # never records: the API thread waits (at most API_DEFER_MAX_SECONDS)
    api.start()
    api.stop()  # joins the thread, which would start the API at the end of its wait
    assert not api._thread.is_alive()
    assert started == [] and api._server is None


def test_the_api_starts_once_the_first_fragment_is_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.surfaces import api as api_module

    started: list[object] = []
    monkeypatch.setattr(api_module, "start_api", lambda *args, **kwargs: started.append(args))
    api = deferred(Stub(state="recording", run=SimpleNamespace(frames_recorded=31)))
    api.start()
    api._thread.join()
    assert len(started) == 1
