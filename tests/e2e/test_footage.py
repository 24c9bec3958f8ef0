"""Footage access over a real socket: clip export, the recorded-spans index, live HLS and the
viewer credential, against real segments (the real writer, libx264, PyAV) and a real
Controller recording the synthetic camera. Frame numbers prove what a clip or a player got."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from controller import cli
from controller.core.controller import Controller
from controller.storage.merge import merge_hour
from controller.surfaces import fmp4
from controller.surfaces.api import ApiServer, create_app
from controller.surfaces.export import export_clip
from controller.surfaces.fmp4 import scan_fragmented
from controller.surfaces.hls import LivePlaylist
from hw import framecode
from hw.factory import Hardware
from hw.footage import hour_folder_for
from hw.synthetic import FrameCounter
from tests.helpers import (
    frame_numbers,
    gaps,
    hls_span_numbers,
    recorded_frames,
    recorded_numbers,
    recorded_span,
    segment_first_frames,
    segments,
)
from tests.pasthours import past_hour_start, record
from tests.specs import camera_spec, recording_spec

WIDTH, HEIGHT, FPS = 160, 120, 30
VIEWER = "viewer-token-for-tests"
OPERATOR = "operator-token-for-tests"
WAIT_SECONDS = 30.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def get(server: ApiServer, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        body: bytes | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_until(predicate: Any, what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def timestamps(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        return [float(p.pts * stream.time_base) for p in container.demux(stream) if p.dts is not None]


# --- a root with history: a merged hour, the next hour's segments, a recovery gap -------------


@dataclass
class History:
    root: Path
    boundary: float  # UTC seconds where hour 1 ends and hour 2 begins
    resumed: float  # where recording resumed after the recovery gap
    numbers: dict[float, int]  # wall clock of each recorded frame -> its number


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """Frames from 3 s before an hour boundary to 2 s after it (one run), the first hour
    merged; then 2 s with nothing (a recovery, 60 frames lost) and 2 s more."""
    root = tmp_path_factory.mktemp("history") / "recordings"
    boundary = past_hour_start(hours_ago=2) + 3600
    counter = FrameCounter()
    numbers: dict[float, int] = {}
    first = record(root, wallclock=boundary - 3.0, frames=150, counter=counter, fps=FPS)
    assert first
    for i in range(150):
        numbers[boundary - 3.0 + i / FPS] = i
    for _ in range(60):
        counter.take()  # frames drawn while the recorder was recovering: never recorded
    resumed = boundary + 4.0
    record(root, wallclock=resumed, frames=60, counter=counter, fps=FPS)
    for i in range(60):
        numbers[resumed + i / FPS] = 210 + i
    merged = merge_hour(hour_folder_for(root, boundary - 1), fsync=False)
    assert len(merged) == 1 and merged[0].frames == 90
    return History(root, boundary, resumed, numbers)


def expected(history: History, start: float, end: float) -> list[int]:
    """The recorded frames of [start, end) from the keyframe at or before start (a keyframe
    every 15 frames, 0.5 s: fragment_seconds)."""
    times = sorted(history.numbers)
    keyframes = [t for i, t in enumerate(times) if (history.numbers[t] % 15 == 0)]
    first = max(t for t in keyframes if t <= start + 1e-9)
    return [history.numbers[t] for t in times if first - 1e-9 <= t < end - 1e-9]


def test_export_across_a_merged_hour_the_next_hours_segments_and_a_recovery_gap(
        history: History, tmp_path: Path) -> None:
    start, end = history.boundary - 2.4, history.resumed + 1.0
    out = tmp_path / "clip.mp4"
    clip = export_clip(history.root, start, end, out, workdir=tmp_path)
    numbers = frame_numbers(out)
    assert numbers == expected(history, start, end)
    assert numbers[0] == 15  # frame 18 is at start; its keyframe is frame 15
    assert numbers[-1] == 239  # the last frame that starts before end
    assert gaps(numbers) == [(149, 210)]  # the frames lost in the recovery, nothing else
    merged_hour = history.root / hour_folder_for(history.root, history.boundary - 1).date_dir.name / (
        hour_folder_for(history.root, history.boundary - 1).path.name + ".mp4")
    assert clip.files[0] == merged_hour  # the merged hour, then the next hour's segments
    assert all(p.parent == hour_folder_for(history.root, history.boundary).path for p in clip.files[1:])
    ts = timestamps(out)
    assert ts[0] == 0.0
    pause = ts[numbers.index(210)] - ts[numbers.index(149)]
    assert abs(pause - (history.resumed - (history.boundary + 2.0) + 1 / FPS)) < 0.002  # the gap kept
    assert clip.start == pytest.approx(history.boundary - 2.5)
    assert clip.end == pytest.approx(end)
    assert clip.gaps and clip.gaps[0][1] == pytest.approx(2.0, abs=0.002)
    with av.open(str(out)) as container:
        assert next(container.demux(video=0)).is_keyframe


def test_vigil_export_from_a_root_writes_the_same_clip(history: History, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    start, end = history.boundary - 1.0, history.boundary + 1.0
    out = tmp_path / "cli.mp4"
    code = cli.main(["export", "--root", str(history.root), "--start", iso(start), "--end", iso(end),
                     "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert frame_numbers(out) == expected(history, start, end)
    assert "frames from" in capsys.readouterr().out
    assert cli.main(["export", "--root", str(history.root), "--start", iso(start), "--end", iso(end),
                     "-o", str(out)]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err
    nothing = cli.main(["export", "--root", str(history.root), "--start", iso(start - 86400),
                        "--duration", "5", "-o", str(tmp_path / "none.mp4")])
    assert nothing == 1
    assert "nothing was recorded" in capsys.readouterr().err
    assert not (tmp_path / "none.mp4").exists()


# --- a live recorder behind the API -----------------------------------------------------------


@dataclass
class Live:
    controller: Controller
    server: ApiServer
    root: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("footage")
    root = base / "recordings"
    (base / "viewer").write_text(VIEWER + "\n")
    (base / "operator").write_text(OPERATOR + "\n")
    for name in ("viewer", "operator"):
        (base / name).chmod(0o600)
    camera = camera_spec(backend="synthetic", width=WIDTH, height=HEIGHT, fps=FPS)
    recording = recording_spec(root=root, segment_seconds=1.0, fragment_seconds=0.5)
    controller = Controller(Hardware(camera, recording), autostart=True)
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    server = ApiServer(create_app(controller, token_file=base / "operator", root_provider=lambda: root,
                                  viewer_token_file=base / "viewer", export_max_seconds=600),
                       "127.0.0.1", 0)
    try:
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        server.start()
        yield Live(controller, server, root)
    finally:
        assert server.stop()
        controller.request_shutdown()
        loop.join(WAIT_SECONDS)
        assert not loop.is_alive(), "controller did not shut down"


def spans_now(live: Live) -> list[dict[str, Any]]:
    reply = get(live.server, "/recordings/spans", bearer(VIEWER))
    assert reply.status == 200, reply.body
    spans: list[dict[str, Any]] = reply.json()["spans"]
    return spans


def test_the_spans_index_lists_what_is_recorded_including_the_open_segment(live: Live) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 2, "two closed segments")
    # Right after a segment closes the next has no whole fragment yet; half a second later it has.
    wait_until(lambda: any(f.endswith(".partial") for s in spans_now(live) for f in s["files"]),
               "the open segment in the index")
    spans = spans_now(live)
    assert len(spans) == 1, spans  # one continuous recording
    span = spans[0]
    assert span["frames"] >= 60 and span["end_seconds"] > span["start_seconds"]
    assert any(f.endswith(".partial") for f in span["files"])
    # Frames carry their capture times: under load the rate is not exactly 30 fps.
    assert 0.8 * FPS <= span["frames"] / span["seconds"] <= 1.2 * FPS, span
    reply = get(live.server, f"/recordings/spans?start={span['end']}&end=2000-01-01T00:00:00Z",
                bearer(VIEWER))
    assert reply.status == 422 and b"not after" in reply.body


def test_an_export_reaching_into_the_open_segment_has_every_frame_and_recording_goes_on(
        live: Live, tmp_path: Path) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 2, "two closed segments")
    first = spans_now(live)[0]["start"]
    wait_until(lambda: open_fragments(live) > 0, "a whole fragment in the open segment")
    closed_before = recorded_numbers_closed(live.root)
    asked = time.time()
    reply = get(live.server, f"/export?start={first}&end={iso(asked + 60)}", bearer(VIEWER))
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "video/mp4"
    assert reply.headers["content-disposition"].startswith("attachment; filename=")
    assert reply.headers["x-vigil-start"] == first
    out = tmp_path / "open.mp4"
    out.write_bytes(reply.body)
    numbers = frame_numbers(out)
    assert gaps(numbers) == []
    assert int(reply.headers["x-vigil-frames"]) == len(numbers)
    assert numbers[: len(closed_before)] == closed_before
    assert len(numbers) > len(closed_before)  # it reached into the open segment
    wait_until(lambda: recorded_numbers_closed(live.root)[-1:] >= [numbers[-1] + FPS], "more recording")
    everything = recorded_numbers_closed(live.root)
    assert gaps(everything) == []  # recording undisturbed
    assert numbers == everything[: len(numbers)]  # every frame up to the request, in order


def open_fragments(live: Live) -> int:
    current = live.controller.snapshot.current_segment
    try:
        return len(scan_fragmented(current).fragments) if current is not None else 0
    except (OSError, ValueError):
        return 0


def recorded_numbers_closed(root: Path) -> list[int]:
    """Frame numbers of the closed segments (the open one is still growing)."""
    return recorded_numbers(root)


def test_bad_times_reversed_spans_no_footage_and_huge_spans_are_4xx_with_a_reason(live: Live) -> None:
    auth = bearer(VIEWER)
    # "nearest" needs footage to point at: the first fragment, if this test runs first in the module.
    wait_until(lambda: spans_now(live), "a recorded span")
    for query, status, words in [
        ("start=yesterday&end=2026-01-01T00:00:00Z", 422, "ISO 8601"),
        ("start=2026-01-01T00:00:10Z&end=2026-01-01T00:00:00Z", 422, "not after"),
        ("start=2026-01-01T00:00:00Z", 422, "exactly one of end and duration"),
        ("start=2026-01-01T00:00:00Z&duration=-1", 422, "greater than 0"),
        ("start=2026-01-01T00:00:00Z&duration=nan", 422, "greater than 0"),
        ("start=2026-01-01T00:00:00Z&duration=601", 413, "export_max_seconds"),
        # The calendar's end, reached by a duration, a UNIX time or an offset: 4xx, not 500.
        ("start=9999-12-31T23:59:59Z&duration=5", 422, "ends after the year 9999"),
        ("start=253402300799&duration=5", 422, "ends after the year 9999"),
        ("start=9999-12-31T23:59:00-05:00&duration=5", 422, "out of range"),
        ("start=0001-01-01T00:00:00%2B01:00&duration=5", 422, "out of range"),
        ("start=2000-01-01T00:00:00Z&duration=10", 404, "nothing was recorded"),
    ]:
        reply = get(live.server, f"/export?{query}", auth)
        assert reply.status == status, (query, reply.body)
        assert words in reply.body.decode(), (query, reply.body)
    missing = get(live.server, "/export?start=2000-01-01T00:00:00Z&duration=10", auth).json()
    assert missing["nearest"] and missing["nearest"][0]["start_seconds"] > 946684800


def test_live_playlist_is_fmp4_by_byte_range_over_whole_fragments(live: Live) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 2, "two closed segments")
    reply = get(live.server, "/live.m3u8", bearer(VIEWER))
    assert reply.status == 200, reply.body
    text = reply.body.decode()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines and "#EXT-X-ENDLIST" not in lines
    assert any(line.startswith("#EXT-X-MEDIA-SEQUENCE:") for line in lines)
    assert any(line.startswith('#EXT-X-MAP:URI="hls/') for line in lines)
    # Every named byte range decodes, init + fragment, to frames that rise one by one.
    numbers: list[int] = []
    init: bytes = b""
    size_offset: tuple[int, int] | None = None
    for line in lines:
        if line.startswith("#EXT-X-MAP:"):
            uri = line.split('URI="')[1].split('"')[0]
            length = int(line.split('BYTERANGE="')[1].split("@")[0])
            init = get(live.server, f"/{uri}", {**bearer(VIEWER), "Range": f"bytes=0-{length - 1}"}).body
            assert init[4:8] == b"ftyp" and len(init) == length
        elif line.startswith("#EXT-X-BYTERANGE:"):
            size, offset = map(int, line.split(":")[1].split("@"))
            size_offset = (size, offset)
        elif line and not line.startswith("#"):
            assert size_offset is not None
            size, offset = size_offset
            wanted = {**bearer(VIEWER), "Range": f"bytes={offset}-{offset + size - 1}"}
            piece = get(live.server, f"/{line}", wanted)
            assert piece.status == 206 and len(piece.body) == size and piece.body[4:8] == b"moof"
            with av.open(_BytesFile(init + piece.body)) as container:
                numbers += [framecode.read_video_frame(f) for f in container.decode(video=0)]
    assert len(numbers) >= 30 and gaps(numbers) == []



def live_entries(text: str) -> list[tuple[str, int, str, int, int]]:
    """(init URI, init size, media URI, size, offset) of every media segment of a live playlist."""
    found = []
    init: tuple[str, int] | None = None
    size_offset: tuple[int, int] | None = None
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            init = (line.split('URI="')[1].split('"')[0], int(line.split('BYTERANGE="')[1].split("@")[0]))
        elif line.startswith("#EXT-X-BYTERANGE:"):
            size, offset = map(int, line.split(":")[1].split("@"))
            size_offset = (size, offset)
        elif line and not line.startswith("#") and init is not None and size_offset is not None:
            found.append((init[0], init[1], line, *size_offset))
    return found


def test_a_copy_that_is_current_gets_304_not_modified_and_a_stale_one_the_bytes(live: Live) -> None:
    """If-None-Match (RFC 9110 13.1.2, 13.2.2): `*`, the file's ETag, a weak form of it or a
    list holding it is 304 with no body, before any range; another tag gets the file."""
    wait_until(lambda: len(segments(live.root)) >= 2, "two closed segments")
    name = segments(live.root)[0].relative_to(live.root).as_posix()
    whole = get(live.server, f"/recordings/{name}", bearer(VIEWER))
    assert whole.status == 200 and whole.body
    etag = whole.headers["etag"]
    for header in ("*", etag, f"W/{etag}", f'"other", {etag}', f' "x" ,W/{etag} '):
        for extra in ({}, {"Range": "bytes=0-99"}):
            asked = {**bearer(VIEWER), **extra, "If-None-Match": header}
            reply = get(live.server, f"/recordings/{name}", asked)
            assert reply.status == 304 and reply.body == b"" and reply.headers["etag"] == etag, header
    stale = get(live.server, f"/recordings/{name}", {**bearer(VIEWER), "If-None-Match": '"other"'})
    assert stale.status == 200 and stale.body == whole.body
    # Still the viewer's: no credential is 401 whatever the condition says.
    assert get(live.server, f"/recordings/{name}", {"If-None-Match": "*"}).status == 401
    # HLS media: the fast path leaves conditional requests to the API's route, which answers alike.
    fast = live.server.app.state.hls_fast_path
    _, _, uri, size, offset = next(
        e for e in reversed(live_entries(get(live.server, "/live.m3u8", bearer(VIEWER)).text))
        if not e[2].endswith(".partial"))
    wanted = {**bearer(VIEWER), "Range": f"bytes={offset}-{offset + size - 1}"}
    piece = get(live.server, f"/{uri}", wanted)
    before = fast.answered
    same = get(live.server, f"/{uri}", {**wanted, "If-None-Match": piece.headers["etag"]})
    assert same.status == 304 and same.body == b"" and fast.answered == before
    other = get(live.server, f"/{uri}", {**wanted, "If-None-Match": '"other"'})
    assert other.status == 206 and other.body == piece.body


def test_live_hls_is_answered_below_fastapi_with_the_bytes_the_api_route_sends(live: Live) -> None:
    """A viewer's playlist reloads and fragment fetches are answered by the fast path (no
    FastAPI routing); the same request taken by the API's own route gives the same bytes."""
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 2, "two closed segments")
    fast = live.server.app.state.hls_fast_path
    before = fast.answered
    reply = get(live.server, "/live.m3u8", bearer(VIEWER))
    assert reply.status == 200 and reply.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert fast.answered == before + 1
    init_uri, init_size, uri, size, offset = next(  # a closed file's: the open one grows, and If-Range
        # below would then rightly answer 200 with the whole of it
        e for e in reversed(live_entries(reply.text)) if not e[2].endswith(".partial"))
    init = get(live.server, f"/{init_uri}", {**bearer(VIEWER), "Range": f"bytes=0-{init_size - 1}"})
    wanted = {**bearer(VIEWER), "Range": f"bytes={offset}-{offset + size - 1}"}
    piece = get(live.server, f"/{uri}", wanted)
    assert init.status == 206 and piece.status == 206 and fast.answered == before + 3
    assert piece.headers["content-range"].startswith(f"bytes {offset}-{offset + size - 1}/")
    # If-Range is left to the API's route (FastAPI): the same bytes and range, not counted here.
    routed = get(live.server, f"/{uri}", {**wanted, "If-Range": piece.headers["etag"]})
    assert routed.status == 206 and fast.answered == before + 3
    assert routed.body == piece.body and routed.headers["content-range"] == piece.headers["content-range"]
    with av.open(_BytesFile(init.body + piece.body)) as container:
        numbers = [framecode.read_video_frame(f) for f in container.decode(video=0)]
    assert numbers and gaps(numbers) == []
    # The fragment's decode time is on the wall clock, as the API's route serves it.
    assert piece.body[4:8] == b"moof"
    # No credential, a wrong one, or a viewer cookie: the answers of the API's gate.
    assert get(live.server, "/live.m3u8").status == 401
    unsigned = uri.partition("?")[0]
    assert get(live.server, f"/{unsigned}", {"Range": wanted["Range"]}).status == 401
    assert get(live.server, "/live.m3u8", bearer("wrong")).status == 401
    assert fast.answered == before + 3
    # The playlist's signed URI alone is a credential for its file, on the fast path too.
    signed = get(live.server, f"/{uri}", {"Range": wanted["Range"]})
    assert signed.status == 206 and signed.body == piece.body and fast.answered == before + 4
    before += 1
    login = get(live.server, "/login", {"Content-Type": "application/json"}, "POST",
                json.dumps({"token": VIEWER}).encode())
    cookie = login.headers["set-cookie"].split(";")[0]
    assert get(live.server, "/live.m3u8", {"Cookie": cookie}).status == 200
    assert fast.answered == before + 4
    # Traversal and foreign names are refused as the route refuses them (404, from FastAPI).
    assert get(live.server, "/hls/../../etc/passwd", bearer(VIEWER)).status == 404
    assert fast.answered == before + 4


def test_the_live_playlist_is_made_again_only_when_its_footage_changes(history: History,
                                                                        tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    shutil.copytree(history.root, root)
    past = time.time() - 60
    for path in [root, *root.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)
    playlist = LivePlaylist()
    first = playlist.text(root)
    assert first is not None
    for _ in range(5):
        assert playlist.text(root) == first
    assert playlist.made <= 2  # made, made again once its stamps are known, then reused
    made = playlist.made
    assert playlist.cached(root) == (True, first)
    # A new segment in the newest hour: the next request makes a playlist that lists it.
    hour = hour_folder_for(root, history.resumed).path
    newest = sorted(hour.glob("*.mp4"))[-1]
    stem = newest.name.removesuffix(".mp4")  # YYYYMMDDTHHMMSSZ
    later = newest.with_name(f"{stem[:-3]}{int(stem[-3:-1]) + 5:02d}Z.mp4")
    shutil.copyfile(newest, later)
    assert playlist.cached(root)[0] is False
    text = playlist.text(root)
    assert text is not None and later.name in text and playlist.made == made + 1
    # The open segment growing (a fragment appended) is a change too.
    os.utime(later, (past, past))
    os.utime(hour, (past, past))
    playlist.text(root)
    playlist.text(root)
    assert playlist.cached(root)[0] is True
    with open(later, "ab") as grown:
        grown.write(b"\0" * 8)
    assert playlist.cached(root)[0] is False


class _BytesFile:
    """A file object over bytes for PyAV."""

    def __new__(cls, data: bytes) -> Any:
        import io

        return io.BytesIO(data)


def ffmpeg_frame_numbers(server: ApiServer, playlist: str, frames: int | None = None, *,
                         url_password: str | None = None) -> list[int]:
    """The frame numbers ffmpeg decodes from `playlist` (every decoded frame once: passthrough
    duplicates none to fill a constant rate); `frames` stops it after that many. The viewer
    token goes as a bearer header, or with `url_password` as the URL's `viewer:PASSWORD@`."""
    limit = ["-frames:v", str(frames)] if frames is not None else []
    if url_password is None:
        source = ["-headers", f"Authorization: Bearer {VIEWER}\r\n", "-i", f"{server.url}{playlist}"]
    else:
        source = ["-i", f"http://viewer:{url_password}@127.0.0.1:{server.port}{playlist}"]
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *source, *limit, "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    plane = WIDTH * HEIGHT
    assert len(result.stdout) % plane == 0
    return [framecode.read(np.frombuffer(result.stdout[i * plane:(i + 1) * plane], np.uint8)
                           .reshape(HEIGHT, WIDTH)) for i in range(len(result.stdout) // plane)]


def test_ffmpeg_plays_the_live_playlist_across_segment_boundaries_losing_no_frame(live: Live) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 3, "three closed segments")
    frames = 150  # 5 s at 30 fps over 1 s segments: at least three segment boundaries
    numbers = ffmpeg_frame_numbers(live.server, "/live.m3u8", frames)
    assert len(numbers) == frames
    wait_until(lambda: max(segment_first_frames(live.root)) > numbers[-1], "the played frames closed")
    # Every recorded frame once, in order: none lost at a boundary (where each file's own times
    # restart at 0; /hls/ serves them on one timeline), none repeated.
    assert numbers == recorded_span(live.root, numbers[0], numbers[-1]), gaps(numbers)
    crossed = [n for n in segment_first_frames(live.root) if numbers[0] < n <= numbers[-1]]
    assert len(crossed) >= 3, (crossed, numbers[0], numbers[-1])


def test_ffmpeg_plays_a_recorded_span_from_the_vod_playlist_frame_for_frame(live: Live) -> None:
    wait_until(lambda: len(list(live.root.rglob("*.mp4"))) >= 5, "five closed segments")
    closed = sorted(p for p in live.root.rglob("*.mp4") if not p.is_symlink())[:5]
    frames = [f for path in closed for f in recorded_frames(path)]
    assert [f.number for f in frames] == list(range(frames[0].number, frames[0].number + len(frames)))
    # From inside the second segment to inside the fourth, between frames: two boundaries.
    second, fourth = recorded_frames(closed[1]), recorded_frames(closed[3])
    start = second[len(second) // 2 + 2].wallclock + 0.5 / FPS
    end = fourth[len(fourth) // 2 - 3].wallclock + 0.5 / FPS
    reply = get(live.server, f"/vod.m3u8?start={iso(start)}&end={iso(end)}", bearer(VIEWER))
    assert reply.status == 200, reply.body
    assert "#EXT-X-ENDLIST" in reply.text.splitlines()
    # Three files, each with its init section; one encoder ran through both boundaries, so the
    # stream carries on there: no discontinuity (VLC 3.0 stops at one, see the hls module).
    assert reply.text.count("#EXT-X-MAP:") == 3
    assert "#EXT-X-DISCONTINUITY" not in reply.text
    wanted = hls_span_numbers(frames, start, end)
    keyframe = next(f for f in frames if f.number == wanted[0])
    assert keyframe.is_keyframe and keyframe.wallclock < start - 1 / FPS  # the span starts after it
    assert len(wanted) > FPS  # more than a second, over two segment boundaries
    assert ffmpeg_frame_numbers(live.server, f"/vod.m3u8?start={iso(start)}&end={iso(end)}") == wanted



def unfragmented_copy(history: History, tmp_path: Path) -> Path:
    """A copy of `history`'s root whose merged hour is an ordinary MP4 (index at the front, one
    mdat, vigil's tags kept), as merges wrote before hours were written once: the same packets."""
    root = tmp_path / "recordings"
    shutil.copytree(history.root, root)
    hour = hour_folder_for(root, history.boundary - 1)
    merged = hour.date_dir / (hour.path.name + ".mp4")
    plain = merged.with_name("plain.tmp.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(merged), "-c", "copy", "-map_metadata", "0",
                    "-movflags", "+faststart+use_metadata_tags", "-f", "mp4", str(plain)], check=True)
    plain.replace(merged)
    assert not fmp4.is_fragmented(merged)
    return root


@pytest.mark.parametrize("layout", ["fragmented", "unfragmented"])
def test_ffmpeg_plays_a_vod_playlist_over_a_merged_hour_and_the_next_hours_segments(
        live: Live, history: History, tmp_path: Path, layout: str) -> None:
    """A merged hour is in the recorded playlist, followed by the next hour's segments and the
    recovery gap. A fragmented hour (what merges write now: an adopted segment, or segments
    joined) is served by its fragments like a segment; an ordinary MP4 (an hour merged by an
    older vigil) by one media segment per group of pictures, made from the hour file."""
    root = history.root if layout == "fragmented" else unfragmented_copy(history, tmp_path)
    server = ApiServer(create_app(live.controller, token_file=None, root_provider=lambda: root,
                                  public_footage=True), "127.0.0.1", 0)
    server.start()
    try:
        start, end = history.boundary - 2.4, history.resumed + 1.0
        query = f"/vod.m3u8?start={iso(start)}&end={iso(end)}"
        reply = get(server, query)
        assert reply.status == 200, reply.body
        lines = reply.text.splitlines()
        merged = hour_folder_for(root, history.boundary - 1)
        merged_uri = f"hls/{merged.date_dir.name}/{merged.path.name}.mp4"
        if layout == "fragmented":
            assert any(line.startswith(f'#EXT-X-MAP:URI="{merged_uri}"') for line in lines), lines
            assert get(server, f"/{merged_uri}").status == 200  # its bytes, like a segment's
        else:
            assert f'#EXT-X-MAP:URI="{merged_uri}/init.mp4"' in lines
            assert [line for line in lines if line.startswith(merged_uri + "/")] == [
                f"{merged_uri}/{n:06d}.m4s" for n in range(1, 6)]  # from the group of frame 15 on
            # A group that is not there, and the unfragmented hour's file itself, are not served.
            assert get(server, f"/{merged_uri}/000099.m4s").status == 404
            assert get(server, f"/{merged_uri}").status == 404
        assert lines[-1] == "#EXT-X-ENDLIST"
        # The recovery gap is a discontinuity: the encoder started again after it. The merged
        # hour and the next hour's first segment hold one encoder's frames (one recording):
        # fragmented, the hour's init section decodes them alike (the merge's muxer adds only a
        # bit-rate hint), so the stream carries on; its groups made on request are another
        # muxer's output, not compared, so the segment after them starts anew.
        after_gap = datetime.fromtimestamp(history.resumed, UTC).strftime("%Y%m%dT%H%M%SZ.mp4")
        at = next(i for i, line in enumerate(lines) if line.startswith("#EXT-X-MAP:") and after_gap in line)
        assert lines[at - 1] == "#EXT-X-DISCONTINUITY", lines
        assert lines.count("#EXT-X-DISCONTINUITY") == (1 if layout == "fragmented" else 2), lines
        # Played by ffmpeg: the very frames an export of the span holds, in order.
        numbers = ffmpeg_frame_numbers(server, query)
        assert numbers == expected(history, start, end)
        assert gaps(numbers) == [(149, 210)]
    finally:
        assert server.stop()


# --- the viewer credential --------------------------------------------------------------------

FOOTAGE_PATHS = ["/recordings", "/recordings/spans", "/snapshot.jpg", "/live.m3u8",
                 "/export?start=2026-01-01T00:00:00Z&duration=5",
                 "/vod.m3u8?start=2026-01-01T00:00:00Z&duration=5", "/hls/2026-01-01/00/x.mp4"]


def test_every_footage_endpoint_needs_the_viewer_credential(live: Live) -> None:
    wait_until(lambda: list(live.root.rglob("*.mp4")), "a closed segment")
    segment = next(live.root.rglob("*.mp4")).relative_to(live.root).as_posix()
    paths = [*FOOTAGE_PATHS, f"/recordings/{segment}", f"/hls/{segment}"]
    for path in paths:
        assert get(live.server, path).status == 401, path
        assert get(live.server, path, bearer("wrong")).status == 401, path
        assert get(live.server, path, bearer(VIEWER)).status not in (401, 403), path
        assert get(live.server, path, bearer(OPERATOR)).status not in (401, 403), path  # opens all
    for open_path in ("/health", "/metrics"):
        assert get(live.server, open_path).status in (200, 503)
    # The viewer token is no action token.
    refused = get(live.server, "/actions/stop", bearer(VIEWER), method="POST")
    assert refused.status == 403 and "viewer token" in refused.json()["detail"]
    assert live.controller.state == "recording"


def test_login_sets_an_httponly_strict_cookie_that_opens_footage(live: Live) -> None:
    wrong = get(live.server, "/login", {"Content-Type": "application/json"}, "POST",
                json.dumps({"token": "wrong"}).encode())
    assert wrong.status == 401
    login = get(live.server, "/login", {"Content-Type": "application/json"}, "POST",
                json.dumps({"token": VIEWER}).encode())
    assert login.status == 204, login.body
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert VIEWER not in cookie  # a MAC of the token, not the token
    value = cookie.split(";")[0]
    assert get(live.server, "/recordings", {"Cookie": value}).status == 200
    assert get(live.server, "/recordings", {"Cookie": "vigil_viewer=forged"}).status == 401


def test_without_any_token_footage_is_403_saying_how_and_public_footage_opens_it(
        live: Live, tmp_path: Path) -> None:
    closed = ApiServer(create_app(live.controller, token_file=tmp_path / "none",
                                  viewer_token_file=tmp_path / "none-either",
                                  root_provider=lambda: live.root),
                       "127.0.0.1", 0)
    public = ApiServer(create_app(live.controller, token_file=None, root_provider=lambda: live.root,
                                  public_footage=True), "127.0.0.1", 0)
    closed.start()
    public.start()
    try:
        for path in FOOTAGE_PATHS:
            reply = get(closed, path, bearer(VIEWER))
            assert reply.status == 403, path
            assert "api.public_footage" in reply.json()["detail"] and "none-either" in reply.json()["detail"]
        assert get(public, "/recordings").status == 200
        # Alone (or first on a worker) the recorder may not have a whole fragment yet.
        wait_until(lambda: get(public, "/live.m3u8").status != 404, "a whole fragment to play live")
        assert get(public, "/live.m3u8").status == 200
    finally:
        closed.stop()
        public.stop()


@pytest.mark.parametrize("path", [
    "/hls/../../etc/passwd", "/hls/%2e%2e/%2e%2e/etc/passwd", "/hls/..%2f..%2fetc%2fpasswd",
    "/hls//etc/passwd", "/hls/%2Fetc%2Fpasswd", "/hls/x.mp4%00../../etc/passwd",
    "/hls/2000-01-01/00/secret.mp4", "/hls/2000-01-01/00/20000101T000000Z.mp4.partial/../x",
    "/hls/2000-01-01/00/20000101T000000Z.mp4.partial",
    "/hls/links/escape.mp4",
])
def test_the_hls_route_refuses_what_recordings_refuses(live: Live, path: str) -> None:
    reply = get(live.server, path, bearer(VIEWER))
    assert reply.status == 404, (path, reply.body[:200])


def test_the_hls_route_serves_no_merged_hour_and_no_link(live: Live, tmp_path: Path) -> None:
    day = live.root / "2001-01-01"
    (day / "00").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"SECRET")
    (day / "00" / "20010101T000000Z.mp4.partial").symlink_to(tmp_path / "secret")
    (day / "00" / "20010101T000001Z.mp4").symlink_to(tmp_path / "secret")
    try:
        for path in ("2001-01-01/00/20010101T000000Z.mp4", "2001-01-01/00/20010101T000000Z.mp4.partial",
                     "2001-01-01/00/20010101T000001Z.mp4"):
            reply = get(live.server, f"/hls/{path}", bearer(VIEWER))
            assert reply.status == 404 and b"SECRET" not in reply.body
    finally:
        shutil.rmtree(day)  # the module's recording root is shared: the tests after this decode it all


def test_an_exported_clip_over_http_carries_its_signed_manifest(live: Live, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from controller.keys import signer_for
    from controller.verify import verify
    from hw.footage import manifest_path
    from tests.unit.test_integrity import START
    from tests.unit.test_integrity import record as record_signed

    signer = signer_for(Ed25519PrivateKey.generate(), "unit-a")
    root = tmp_path / "signed"
    record_signed(root, signer)  # 5 s of 1 s segments, each with its signed manifest
    server = ApiServer(create_app(live.controller, token_file=None, root_provider=lambda: root,
                                  viewer_token_file=tmp_path / "none", public_footage=True, signer=signer),
                       "127.0.0.1", 0)
    server.start()
    try:
        reply = get(server, f"/export?start={iso(START + 1.2)}&end={iso(START + 3.7)}")
        assert reply.status == 200, reply.body
        url = reply.headers["x-vigil-manifest"]
        assert url == f"/export/manifest/{reply.headers['x-vigil-sha256']}"
        answer = get(server, url)
        assert answer.status == 200, answer.body
        manifest = answer.json()
        assert manifest["kind"] == "clip" and manifest["public_key"] == signer.public_key
        assert len(manifest["sources"]) == 3  # seconds 1, 2 and 3
        assert get(server, "/export/manifest/" + "0" * 64).status == 404
        assert get(server, "/export/manifest/not-a-hash").status == 422
        # vigil export over the API writes both, and the clip verifies
        out = tmp_path / "clip.mp4"
        code = cli.main(["export", "--url", f"http://127.0.0.1:{server.port}", "--start", iso(START + 1.2),
                         "--end", iso(START + 3.7), "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        assert manifest_path(out).is_file()
        report = verify([out], key=signer.public_key)
        assert report.is_ok, [f.describe() for f in report.findings]
    finally:
        assert server.stop()
