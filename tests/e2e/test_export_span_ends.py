"""An export cut at a span's end, as `/recordings/spans` lists it, holds that span's last frame.

Real segments (the real writer, libx264, PyAV), a merged hour, a real Controller recording
the synthetic camera for the open segment, over a real socket; the frame-number code says
which frames a clip holds. The recorded footage has what a unit's clocks do: a wall clock
that runs slower than the capture clock (each segment starts a little before the previous
one's frames end), and frames that come slower than the file's typical rate at the end of
a run (a loaded camera). Either made an export to a listed span end lose the last frame:
the clip placed each file right after the one before and cut by those shifted times, which
add up over a run of segments; and the index ended a fragment at its frames times the
typical frame duration, before a slow fragment's last frame began.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from controller.core.controller import Controller
from controller.storage.merge import merge_hour
from controller.surfaces.api import ApiServer, create_app
from controller.surfaces.fmp4 import scan_fragmented
from hw.camera import CameraMode
from hw.encoder import H264Encoder
from hw.factory import Hardware
from hw.footage import hour_folder_for
from hw.synthetic import FrameCounter, SyntheticCamera
from hw.writer import SegmentWriter
from tests.helpers import frame_numbers, gaps, recorded_numbers
from tests.pasthours import past_hour_start
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 160, 120, 30.0
VIEWER = "viewer-token-for-span-ends"
WAIT_SECONDS = 30.0


def record_clocked(root: Path, *, wallclock: float, durations: list[float], counter: FrameCounter,
                   drift: float = 0.0, segment_seconds: float = 1.0) -> None:
    """Record len(durations) frames into segments under `root`, as tests/pasthours.record does,
    but frame i+1 is captured durations[i] seconds after frame i, and the wall clock advances
    (1 + drift) times as fast as the capture clock."""
    mode = CameraMode(WIDTH, HEIGHT, FPS)
    camera = SyntheticCamera(mode, paced=False, counter=counter)
    camera.open()
    encoder = H264Encoder(mode, fragment_seconds=0.5, crf=23)
    writer = SegmentWriter(root, width=WIDTH, height=HEIGHT, fps=FPS, segment_seconds=segment_seconds,
                           fsync=False)
    captured = 0.0
    for duration in durations:
        frame = camera.read(1.0)
        frame.timestamp = captured
        frame.wallclock = wallclock + captured * (1.0 + drift)
        for packet in encoder.encode(frame):
            writer.write(packet)
        captured += duration
    for packet in encoder.flush():
        writer.write(packet)
    writer.close()
    camera.close()


def get(server: ApiServer, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {VIEWER}"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def listed_spans(server: ApiServer) -> list[dict[str, Any]]:
    status, _, body = get(server, "/recordings/spans")
    assert status == 200, body
    spans: list[dict[str, Any]] = json.loads(body)["spans"]
    return spans


def export_to(server: ApiServer, start: str, end: str, out: Path) -> tuple[list[int], dict[str, str]]:
    status, headers, body = get(server, f"/export?start={quote(start)}&end={quote(end)}")
    assert status == 200, body
    out.write_bytes(body)
    return frame_numbers(out), headers


@dataclass
class Footage:
    server: ApiServer
    runs: list[list[int]]  # the frame numbers of each recorded run, oldest first


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Footage]:
    """Three runs, each its own span (minutes apart):
    - a merged hour: 4 s in 1 s segments, the wall clock 1 % slow;
    - 8 s in 1 s closed segments, the wall clock 1.5 % slow;
    - 4.5 s in 3 s segments, the last fragment's 15 frames each 20 % late."""
    base = tmp_path_factory.mktemp("span-ends")
    root = base / "recordings"
    counter = FrameCounter()
    runs: list[list[int]] = []
    taken = 0

    def run(frames: int, **how: Any) -> None:
        nonlocal taken
        durations = how.pop("durations", [1 / FPS] * frames)
        record_clocked(root, durations=durations, counter=counter, **how)
        runs.append(list(range(taken, taken + frames)))
        taken += frames

    merged_hour = past_hour_start(hours_ago=3) + 600
    run(120, wallclock=merged_hour, drift=-0.01)
    merged = merge_hour(hour_folder_for(root, merged_hour), fsync=False)
    assert len(merged) == 1 and merged[0].frames == 120
    closed = past_hour_start(hours_ago=2) + 600
    run(240, wallclock=closed, drift=-0.015)
    run(135, wallclock=closed + 120, segment_seconds=3.0,
        durations=[1 / FPS] * 120 + [1.2 / FPS] * 15)
    token = base / "viewer"
    token.write_text(VIEWER + "\n")
    token.chmod(0o600)
    camera = camera_spec(backend="synthetic", width=WIDTH, height=HEIGHT, fps=int(FPS))
    controller = Controller(Hardware(camera, recording_spec(root=root)), autostart=False)
    server = ApiServer(create_app(controller, token_file=None, root_provider=lambda: root,
                                  viewer_token_file=token, export_max_seconds=600), "127.0.0.1", 0)
    server.start()
    try:
        yield Footage(server, runs)
    finally:
        assert server.stop()


@pytest.mark.parametrize("end_as", ["iso", "seconds"])
def test_an_export_to_each_listed_span_end_holds_that_spans_last_frame(footage: Footage, tmp_path: Path,
                                                                       end_as: str) -> None:
    spans = listed_spans(footage.server)
    assert [s["frames"] for s in spans] == [len(r) for r in footage.runs], spans
    assert spans[0]["files"][0].endswith(".mp4") and len(spans[0]["files"]) == 1  # the merged hour
    for span, numbers in zip(spans, footage.runs, strict=True):
        end = span["end"] if end_as == "iso" else repr(span["end_seconds"])
        got, headers = export_to(footage.server, span["start"], end, tmp_path / f"{span['start']}.mp4")
        assert got == numbers, (span, got[:3], got[-3:])  # the last frame too, and nothing after
        assert int(headers["x-vigil-frames"]) == span["frames"]
        assert headers["x-vigil-end"] == span["end"]  # the clip ends where the index says


def test_an_export_from_inside_a_span_to_its_end_holds_the_same_last_frame(footage: Footage,
                                                                           tmp_path: Path) -> None:
    # Which frames are in a clip does not depend on the file the clip begins in.
    span, numbers = listed_spans(footage.server)[1], footage.runs[1]
    middle = repr((span["start_seconds"] + span["end_seconds"]) / 2)
    got, _ = export_to(footage.server, middle, span["end"], tmp_path / "middle.mp4")
    assert got == numbers[numbers.index(got[0]):]
    assert got[0] > numbers[0] and got[0] % 15 == 0  # from a keyframe inside the span


# --- the open segment ---------------------------------------------------------------------------


@dataclass
class Live:
    controller: Controller
    server: ApiServer
    root: Path


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    root = tmp_path / "recordings"
    token = tmp_path / "viewer"
    token.write_text(VIEWER + "\n")
    token.chmod(0o600)
    camera = camera_spec(backend="synthetic", width=WIDTH, height=HEIGHT, fps=int(FPS))
    recording = recording_spec(root=root, segment_seconds=2.0, fragment_seconds=0.5)
    controller = Controller(Hardware(camera, recording), autostart=True)
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    server = ApiServer(create_app(controller, token_file=None, root_provider=lambda: root,
                                  viewer_token_file=token, export_max_seconds=600), "127.0.0.1", 0)
    try:
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        server.start()
        yield Live(controller, server, root)
    finally:
        assert server.stop()
        controller.request_shutdown()
        loop.join(WAIT_SECONDS)
        assert not loop.is_alive(), "controller did not shut down"


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def open_fragments(live: Live) -> int:
    current = live.controller.snapshot.current_segment
    try:
        return len(scan_fragmented(current).fragments) if current is not None else 0
    except (OSError, ValueError):
        return 0


def test_an_export_to_the_open_segments_listed_end_holds_its_last_whole_fragments_last_frame(
        live: Live, tmp_path: Path) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 2, "two closed segments")
    wait_until(lambda: open_fragments(live) >= 2, "two whole fragments in the open segment")
    spans = listed_spans(live.server)
    assert len(spans) == 1 and spans[0]["files"][-1].endswith(".partial"), spans
    span = spans[0]
    for end in (span["end"], repr(span["end_seconds"])):
        got, headers = export_to(live.server, span["start"], end, tmp_path / "open.mp4")
        assert gaps(got) == [] and len(got) == span["frames"], (span, got[-3:])
        assert headers["x-vigil-end"] == span["end"]
    # The clip's last frame is the last one the index counted: the next one recorded began at
    # or after the listed end, so the clip rightly stops before it.
    wait_until(lambda: recorded_numbers(live.root)[-1:] >= [got[-1] + int(FPS)], "more recording")
    recorded = recorded_numbers(live.root)
    assert recorded[: len(got)] == got
