"""Footage for players that cannot send a bearer header, over a real socket against a real
Controller recording the synthetic camera: HTTP Basic credentials (RFC 7617) whose password
is the viewer token, the Basic challenge of what players open by URL, and the signed media
URIs a playlist hands out (controller/surfaces/media_signature.py)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from controller.core.controller import Controller
from controller.surfaces.api import ApiServer, create_app
from controller.surfaces.media_signature import (
    LIVE_SIGNATURE_SECONDS,
    SIGNATURE_STEP_SECONDS,
    VOD_MARGIN_SECONDS,
)
from hw.factory import Hardware
from tests.e2e.test_footage import (
    HEIGHT,
    WIDTH,
    Reply,
    bearer,
    ffmpeg_frame_numbers,
    get,
    iso,
    live_entries,
    wait_until,
)
from tests.helpers import gaps, recorded_span, segment_first_frames
from tests.specs import camera_spec, recording_spec

VIEWER = "basic-viewer-token"
OPERATOR = "basic-operator-token"
WAIT_SECONDS = 30.0


@dataclass
class Unit:
    controller: Controller
    server: ApiServer
    root: Path
    base: Path


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    base = tmp_path_factory.mktemp("footage-auth")
    root = base / "recordings"
    for name, token in (("viewer", VIEWER), ("operator", OPERATOR)):
        (base / name).write_text(token + "\n")
        (base / name).chmod(0o600)
    camera = camera_spec(backend="synthetic", width=WIDTH, height=HEIGHT, fps=30)
    controller = Controller(Hardware(camera, recording_spec(root=root, segment_seconds=1.0,
                                                           fragment_seconds=0.5)), autostart=True)
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    server = ApiServer(create_app(controller, token_file=base / "operator", root_provider=lambda: root,
                                  viewer_token_file=base / "viewer"), "127.0.0.1", 0)
    try:
        assert controller.wait_for_state("recording", WAIT_SECONDS), controller.refusals
        server.start()
        wait_until(lambda: len(list(root.rglob("*.mp4"))) >= 2, "two closed segments")
        yield Unit(controller, server, root, base)
    finally:
        assert server.stop()
        controller.request_shutdown()
        loop.join(WAIT_SECONDS)
        assert not loop.is_alive(), "controller did not shut down"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def signed_entry(unit: Unit) -> tuple[str, int, int]:
    """(a closed file's signed media URI from the live playlist, its size, its offset)."""
    reply = get(unit.server, "/live.m3u8", bearer(VIEWER))
    assert reply.status == 200, reply.body
    closed = [e for e in live_entries(reply.text) if ".partial" not in e[2]]
    assert closed, reply.text
    _, _, uri, size, offset = closed[-1]
    return uri, size, offset


def query_of(uri: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(uri).query).items()}


def test_basic_credentials_with_the_viewer_token_open_footage_any_user_name(unit: Unit) -> None:
    segment = next(unit.root.rglob("*.mp4")).relative_to(unit.root).as_posix()
    for path in ("/recordings", "/recordings/spans", "/live.m3u8", f"/recordings/{segment}",
                 f"/export?start={iso(time.time() - 20)}&duration=5"):
        for user in ("viewer", "anyone", ""):
            reply = get(unit.server, path, basic(user, VIEWER))
            assert reply.status not in (401, 403), (path, user, reply.body[:200])
        assert get(unit.server, path, basic("viewer", OPERATOR)).status not in (401, 403), path
        wrong = get(unit.server, path, basic("viewer", "wrong"))
        assert wrong.status == 401 and "password must be the viewer token" in wrong.json()["detail"], path
    # Not base64 of user:password (RFC 7617 2): 401 with the reason, never a server error.
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic"):
        reply = get(unit.server, "/recordings", {"Authorization": header})
        assert reply.status == 401 and "RFC 7617" in reply.json()["detail"], (header, reply.body)


def test_basic_credentials_open_no_action_whatever_token_they_carry(unit: Unit) -> None:
    for token in (VIEWER, OPERATOR):
        for action in ("stop", "reset"):
            refused = get(unit.server, f"/actions/{action}", basic("viewer", token), method="POST")
            assert refused.status == 401, (token, action, refused.body)
            assert "Basic credentials open footage only" in refused.json()["detail"]
    assert unit.controller.state == "recording"


def test_what_players_open_by_url_challenges_basic_but_not_the_web_pages_requests(unit: Unit) -> None:
    segment = next(unit.root.rglob("*.mp4")).relative_to(unit.root).as_posix()
    by_url = ["/live.m3u8", f"/vod.m3u8?start={iso(time.time() - 20)}&duration=5", f"/recordings/{segment}"]
    for path in by_url:
        reply = get(unit.server, path)
        assert reply.status == 401, path
        assert reply.headers["www-authenticate"] == 'Basic realm="vigil", charset="UTF-8", Bearer', path
        # The page's requests (hls.js sets X-Requested-With; a logged-in browser has the
        # cookie, a stale one after a token change included) get no Basic challenge: a
        # browser would put a login dialog over the page.
        for page in ({"X-Requested-With": "XMLHttpRequest"}, {"Cookie": "vigil_viewer=stale"}):
            reply = get(unit.server, path, page)
            assert reply.status == 401 and "Basic" not in reply.headers["www-authenticate"], (path, page)
    for path in ("/recordings", "/recordings/spans", "/snapshot.jpg", f"/hls/{segment}",
                 f"/export?start={iso(time.time() - 20)}&duration=5"):
        reply = get(unit.server, path)
        assert reply.status == 401 and "Basic" not in reply.headers["www-authenticate"], path


def test_a_signed_media_uri_opens_its_own_path_until_it_expires_and_nothing_else(unit: Unit) -> None:
    uri, size, offset = signed_entry(unit)
    path, _, query = uri.partition("?")
    params = query_of(uri)
    wanted = {"Range": f"bytes={offset}-{offset + size - 1}"}
    fast = unit.server.app.state.hls_fast_path
    before = fast.answered
    good = get(unit.server, f"/{uri}", wanted)
    assert good.status == 206 and len(good.body) == size and good.body[4:8] == b"moof"
    whole = get(unit.server, f"/{uri}")
    assert whole.status == 200 and whole.body[offset:offset + size] == good.body
    assert fast.answered == before + 2  # on the fast path, like a bearer viewer's requests

    def refused(target: str, words: str) -> Reply:
        reply = get(unit.server, target, wanted)
        assert reply.status == 401, (target, reply.status, reply.body[:300])
        assert words in reply.json()["detail"], (target, reply.body)
        return reply

    # Another file with this file's signature: no.
    other = next(p for p in sorted(unit.root.rglob("*.mp4"))
                 if p.relative_to(unit.root).as_posix() != path.removeprefix("hls/"))
    refused(f"/hls/{other.relative_to(unit.root).as_posix()}?{query}", "not valid for this media path")
    # Tampered: a changed signature, a later expiry, one of the two left out, a bad time.
    sig = params["sig"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused(f"/{path}?exp={params['exp']}&sig={flipped}", "not valid for this media path")
    refused(f"/{path}?exp={int(params['exp']) + 60}&sig={sig}", "not valid for this media path")
    refused(f"/{path}?exp={params['exp']}", "both exp and sig")
    refused(f"/{path}?sig={sig}", "both exp and sig")
    refused(f"/{path}?exp=soon&sig={sig}", "not a UNIX time")
    refused(f"/{path}?exp=-5&sig={sig}", "not a UNIX time")
    # Expired: a genuine signature of this path whose time has passed.
    signer = unit.server.app.state.footage.signer(unit.server.app.state.tokens.gate)
    past = int(time.time()) - 1
    refused(f"/{path}?{signer.query(path.removeprefix('hls/'), past)}", "expired")
    # The signature opens /hls/ alone: not the same file under /recordings/, not a playlist.
    refused(f"/recordings/{path.removeprefix('hls/')}?{query}", "footage needs the viewer token")
    refused(f"/live.m3u8?{query}", "footage needs the viewer token")
    assert fast.answered == before + 2  # every refusal was the API's, with its reason


def test_playlists_sign_live_for_minutes_and_recorded_spans_for_their_length(unit: Unit) -> None:
    t0 = time.time()
    live = get(unit.server, "/live.m3u8", bearer(VIEWER))
    t1 = time.time()
    assert live.status == 200
    entries = live_entries(live.text)
    uris = {e[0] for e in entries} | {e[2] for e in entries}
    assert uris and all(query_of(u).keys() == {"exp", "sig"} for u in uris), live.text
    expiries = {int(query_of(u)["exp"]) for u in uris}
    assert len(expiries) == 1
    (expiry,) = expiries
    assert t0 + LIVE_SIGNATURE_SECONDS <= expiry <= t1 + LIVE_SIGNATURE_SECONDS + SIGNATURE_STEP_SECONDS

    span = 600.0
    start = time.time() - span + 5
    t0 = time.time()
    vod = get(unit.server, f"/vod.m3u8?start={iso(start)}&duration={span}", bearer(VIEWER))
    t1 = time.time()
    assert vod.status == 200, vod.body
    media = [line for line in vod.text.splitlines() if line.startswith("hls/")]
    assert media
    expiry = int(query_of(media[0])["exp"])
    assert t0 + span + VOD_MARGIN_SECONDS <= expiry <= t1 + span + VOD_MARGIN_SECONDS + SIGNATURE_STEP_SECONDS
    # Fetched with nothing but their signatures, the recorded playlist's media are served.
    assert all(get(unit.server, "/" + line, {"Range": "bytes=0-7"}).status == 206 for line in media[:4])


def test_a_token_changed_by_a_reset_voids_the_signatures_made_before(unit: Unit, tmp_path: Path) -> None:
    viewer = tmp_path / "viewer"
    viewer.write_text("first-token")
    viewer.chmod(0o600)
    server = ApiServer(create_app(unit.controller, token_file=tmp_path / "none",
                                  root_provider=lambda: unit.root, viewer_token_file=viewer),
                       "127.0.0.1", 0)
    server.start()
    try:
        reply = get(server, "/live.m3u8", bearer("first-token"))
        assert reply.status == 200
        uri = next(e[2] for e in live_entries(reply.text) if ".partial" not in e[2])
        assert get(server, f"/{uri}").status == 200
        server.app.state.footage.reload(viewer)  # a reset that reloads the same token: still good
        assert get(server, f"/{uri}").status == 200
        viewer.write_text("second-token")
        server.app.state.footage.reload(viewer)
        refused = get(server, f"/{uri}")
        assert refused.status == 401 and "not valid" in json.loads(refused.body)["detail"]
    finally:
        assert server.stop()


def test_ffmpeg_plays_the_live_playlist_with_the_token_in_the_url(unit: Unit) -> None:
    """No -headers: ffmpeg sends the URL's user:password when the playlist's 401 challenges
    Basic, and fetches the media by their signed URIs."""
    frames = 60
    numbers = ffmpeg_frame_numbers(unit.server, "/live.m3u8", frames, url_password=VIEWER)
    assert len(numbers) == frames
    wait_until(lambda: max(segment_first_frames(unit.root)) > numbers[-1], "the played frames closed")
    assert numbers == recorded_span(unit.root, numbers[0], numbers[-1]), gaps(numbers)
