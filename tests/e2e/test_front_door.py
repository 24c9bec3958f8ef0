"""The front door: one snapshot, one event stream, one wiring place, one footage layout.

Real controller threads, a real uvicorn socket, a real config file edited on disk, real
PyAV footage decoded frame by frame.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from loguru import logger

from controller.config import load_config
from controller.core.events import SegmentClosed, StateChanged
from controller.daemon import Surfaces, build_controller
from controller.storage.retention import RetentionPolicy, enforce_retention
from controller.surfaces.recordings import list_recordings
from hw.footage import hour_folder_for, list_footage
from hw.synthetic import FrameCounter
from tests.e2e.conftest import RunningController
from tests.helpers import frame_numbers, gaps, segments
from tests.pasthours import past_hour_start, record
from tests.processes import free_port, post_action

CONFIG = """\
camera:
  backend: synthetic
  width: 160
  height: 120
  fps: 15
recording:
  root: {root}
  segment_seconds: 1
  fragment_seconds: 0.5
  merge: "off"
storage:
  retention_days: 0
  reserve_mb: {reserve_mb}
recovery:
  budgets:
    frame_invalid: {{count: {budget}, window_seconds: 10, cooldown_seconds: 10}}
api:
  listen: 127.0.0.1:{port}
  token_file: {token_file}
gpio:
  pin_factory: mock
  reset_button: "{pin}"
"""




def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_reset_applies_every_edited_setting_without_a_restart(tmp_path: Path) -> None:
    old_token, new_token = tmp_path / "old.token", tmp_path / "new.token"
    old_token.write_text("old-secret\n")
    new_token.write_text("new-secret\n")
    old_token.chmod(0o600)
    new_token.chmod(0o600)
    port = free_port()
    config_path = tmp_path / "vigil.yaml"

    def write(reserve_mb: int, budget: int, token_file: Path, pin: str) -> None:
        config_path.write_text(CONFIG.format(root=tmp_path / "rec", reserve_mb=reserve_mb, budget=budget,
                                             port=port, token_file=token_file, pin=pin))

    write(1, 30, old_token, "GPIO17")
    loaded = load_config(str(config_path))
    controller = build_controller(loaded, str(config_path))
    surfaces = Surfaces(loaded.config, controller)
    running = RunningController(controller)
    running.thread.start()
    surfaces.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert controller.wait_for_state("recording", 20)
        wait_for(lambda: surfaces.api._server is not None, 20)
        assert surfaces.panel is not None and surfaces.panel.button is not None
        assert str(surfaces.panel.button.device.pin) == "GPIO17"

        write(7, 4, new_token, "GPIO27")
        assert post_action(f"{base}/actions/reset", "old-secret") == 200
        assert controller.wait_for_state("recording", 20)

        assert controller.housekeeper.settings.retention.reserve_mb == 7
        assert controller.ledger.budgets["frame_invalid"].count == 4
        wait_for(lambda: surfaces.gpio_spec.reset_button == "GPIO27", 10)
        assert surfaces.panel is not None and surfaces.panel.button is not None
        assert str(surfaces.panel.button.device.pin) == "GPIO27"
        assert post_action(f"{base}/actions/stop", "old-secret") == 401
        assert post_action(f"{base}/actions/stop", "new-secret") == 200
    finally:
        surfaces.stop()
        running.stop()
        controller.bus.close()


def test_a_subscriber_that_blocks_forever_costs_recording_nothing(start_controller, tmp_path: Path) -> None:
    root = tmp_path / "rec"
    running = start_controller(root=root, segment_seconds=1.0)
    controller = running.controller
    stuck = threading.Event()
    release = threading.Event()

    def blocks_forever(event: object) -> None:
        stuck.set()
        release.wait()  # as a broker that never answers would

    subscription = controller.bus.subscribe("stuck", blocks_forever, maxsize=1)
    closed: list[SegmentClosed] = []
    watcher = controller.bus.subscribe("watcher", closed.append, kinds=(SegmentClosed,))
    try:
        assert controller.wait_for_state("recording", 20)
        assert stuck.wait(10)
        start = controller.snapshot.totals.frames_recorded
        freshest: list[float] = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            heartbeat = controller.snapshot.heartbeat
            assert heartbeat is not None
            freshest.append(time.monotonic() - heartbeat)
            time.sleep(0.1)
        assert controller.snapshot.totals.frames_recorded >= start + 30
        # The loop kept turning the whole time the subscriber hung.
        assert max(freshest) < 2.0, f"controller heartbeat went stale: {max(freshest):.2f}s"
        assert subscription.dropped > 0 and subscription.stats().queued <= 1
        assert 0 < controller.snapshot.as_dict()["events_dropped"]["stuck"] <= subscription.dropped
    finally:
        running.stop()
        release.set()
        controller.bus.close()
    numbers = [n for path in segments(root) for n in frame_numbers(path)]
    # The synthetic camera numbers frames for the life of the process (earlier tests in this
    # worker count too): contiguous, and as many as the controller recorded.
    assert gaps(numbers) == [], "frames were lost while a subscriber hung"
    assert len(numbers) == controller.snapshot.totals.frames_recorded
    assert closed and watcher.dropped == 0 and {c.path for c in closed} <= set(segments(root))


def test_posting_a_name_that_is_not_a_trigger_changes_nothing_and_is_logged(start_controller) -> None:
    running = start_controller()
    controller = running.controller
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    changes: list[StateChanged] = []
    controller.bus.subscribe("changes", changes.append, kinds=(StateChanged,))
    try:
        assert controller.wait_for_state("recording", 20)
        before = len(controller.transitions)
        for name in ("explode", "__init__", "cleanup", "recover_attempt"):
            controller.post(name)
        wait_for(lambda: sum("not a trigger" in line for line in lines) == 4, 10)
        assert controller.state == "recording"
        assert len(controller.transitions) == before
        assert not changes
    finally:
        logger.remove(sink)
        running.stop()
        controller.bus.close()


def test_recordings_lists_every_file_merge_writes_and_retention_deletes(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    past = past_hour_start(3)
    folder = hour_folder_for(root, past)
    record(root, wallclock=past + 60, frames=30, counter=FrameCounter())
    # Two merged files of one hour: HH.mp4 and the HH-1.mp4 a later merge writes beside it.
    folder.date_dir.mkdir(parents=True, exist_ok=True)
    first = segments(root)[0]
    (folder.date_dir / f"{folder.path.name}.mp4").write_bytes(first.read_bytes())
    (folder.date_dir / f"{folder.path.name}-1.mp4").write_bytes(first.read_bytes())
    # Things that are not vigil's: a foreign file, and a link out of the root.
    (folder.path / "notes.txt").write_text("not footage")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "20200101T000000Z.mp4").write_bytes(b"someone else's")
    other_hour = "23" if folder.path.name != "23" else "22"  # not the recorded hour's own name
    os.symlink(outside, folder.date_dir / other_hour)

    page = list_recordings(root, page=1, per_page=50)
    listed = {f.path for hour in page.hours for f in [*hour.merged_files, *hour.segments]}
    known = {f.relative_to(root) for f in list_footage(root)}
    assert listed == known
    assert f"{folder.date_dir.name}/{folder.path.name}-1.mp4" in listed
    assert not any("outside" in p or f"/{other_hour}/" in p or p.endswith(".txt") for p in listed)
    hour = next(h for h in page.hours if h.hour == folder.path.name)
    assert [f.name for f in hour.merged_files] == [f"{folder.path.name}.mp4", f"{folder.path.name}-1.mp4"]

    # Everything retention would delete is among what is listed, and nothing else goes.
    report = enforce_retention([root], RetentionPolicy(retention_days=1e-6, reserve_mb=0, reserve_percent=0),
                               now=time.time())
    deleted = {d.path.relative_to(root).as_posix() for d in report.deletions}
    assert deleted and deleted <= listed
    assert (outside / "20200101T000000Z.mp4").exists()
    assert json.dumps(page.model_dump())  # the page is plain JSON
