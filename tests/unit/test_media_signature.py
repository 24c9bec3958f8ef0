"""Signed media URIs (controller/surfaces/media_signature.py) and the Basic credentials parser,
on the real playlist text the live view makes from real segments."""

from __future__ import annotations

import base64
import string
from pathlib import Path

from controller.surfaces.api import presented_token
from controller.surfaces.hls import LiveSequence, live_playlist, sign_media_uris
from controller.surfaces.media_signature import LIVE_SIGNATURE_SECONDS, MediaSigner
from hw.synthetic import FrameCounter
from tests.pasthours import past_hour_start, record

NOW = 1_800_000_000.0


def test_a_signature_opens_its_path_until_its_expiry_only() -> None:
    signer = MediaSigner()
    query = signer.query("2026-01-01/00/20260101T000000Z.mp4", 1000)
    exp, sig = (part.split("=", 1)[1] for part in query.split("&"))
    assert signer.refusal("2026-01-01/00/20260101T000000Z.mp4", exp, sig, now=999) is None
    assert "expired" in str(signer.refusal("2026-01-01/00/20260101T000000Z.mp4", exp, sig, now=1000))
    assert "not valid" in str(signer.refusal("2026-01-01/00/20260101T000001Z.mp4", exp, sig, now=999))
    assert "not valid" in str(signer.refusal("2026-01-01/00/20260101T000000Z.mp4", "1001", sig, now=999))
    assert "not a UNIX time" in str(signer.refusal("x.mp4", "1e3", sig, now=0))
    assert "both" in str(signer.refusal("x.mp4", exp, None))
    # URL-safe base64 of a SHA-256 MAC, no padding: nothing a URL needs to escape.
    assert len(sig) == 43 and set(sig) <= set(string.ascii_letters + string.digits + "-_")
    # Another process (another key) does not take it.
    assert "not valid" in str(MediaSigner().refusal("2026-01-01/00/20260101T000000Z.mp4", exp, sig, now=999))


def test_expiries_are_rounded_up_to_a_step_so_viewers_share_one_signed_text() -> None:
    assert MediaSigner.live_expiry(NOW) == NOW + LIVE_SIGNATURE_SECONDS
    later = NOW + LIVE_SIGNATURE_SECONDS + 60
    assert MediaSigner.live_expiry(NOW + 1) == MediaSigner.live_expiry(NOW + 60) == later
    assert MediaSigner.vod_expiry(600, NOW) == NOW + 600 + 3600
    signer = MediaSigner()
    text = "#EXTM3U\n#EXTINF:1.000,\nhls/a.mp4\n"
    assert signer.signed(text, 5) is signer.signed(text, 5)


def test_every_media_uri_of_a_real_live_playlist_is_signed_for_its_own_path(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    record(root, wallclock=past_hour_start(hours_ago=1) + 10, frames=90, counter=FrameCounter(), fps=30)
    text = live_playlist(root, LiveSequence())
    assert text is not None
    signer = MediaSigner()
    signed = signer.signed(text, 2_000_000_000)
    before, after = text.splitlines(), signed.splitlines()
    assert len(before) == len(after)
    uris = 0
    for old, new in zip(before, after, strict=True):
        if old.startswith("hls/"):
            path, _, query = new.partition("?")
            assert path == old
        elif old.startswith('#EXT-X-MAP:URI="hls/'):
            uri = new.split('URI="')[1].split('"')[0]
            path, _, query = uri.partition("?")
            assert old == new.replace(f"?{query}", "")  # BYTERANGE and the rest as they were
        else:
            assert new == old
            continue
        uris += 1
        exp, sig = (part.split("=", 1)[1] for part in query.split("&"))
        assert signer.refusal(path.removeprefix("hls/"), exp, sig, now=NOW) is None
    assert uris >= 4, text
    assert sign_media_uris("#EXTM3U\n", lambda path: "never") == "#EXTM3U\n"


def test_basic_credentials_give_the_password_and_ignore_the_user_name() -> None:
    def header(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    found = presented_token(header(b"viewer:tok:en"))
    assert found is not None and (found.scheme, found.token) == ("basic", "tok:en")  # RFC 7617: first colon
    found = presented_token(header("ünïcode:pässwörd".encode()))
    assert found is not None and found.token == "pässwörd"  # charset="UTF-8"
    for bad in (header(b"no-colon"), header(b"user:"), "Basic %%%", header(b"\xff:x")):
        found = presented_token(bad)
        assert found is not None and found.scheme == "basic" and found.token is None, bad
    found = presented_token("bearer  abc ")
    assert found is not None and (found.scheme, found.token) == ("bearer", "abc")
    assert presented_token("Digest realm=x") is None and presented_token(None) is None
