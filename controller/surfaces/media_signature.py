"""Short-lived signatures that let a player fetch the HLS media a playlist named for it.

A player that was let in to a playlist (by the viewer credential) must fetch the playlist's
init sections and fragments too, and some cannot carry the credential there: VLC 3.0's HLS
demuxer fetches media with its own HTTP client, which sends no credentials, whatever the
playlist request carried. So a playlist answered to a valid credential names each media URI
with `?exp=UNIX&sig=MAC`: an HMAC-SHA256, under a key drawn at random for this process, of
the URI's path below `/hls/` and the expiry, in URL-safe base64 without padding. `/hls/PATH`
takes a valid, unexpired signature for exactly PATH as a viewer credential, and nothing else
does. The signature is not the token: it opens one file, for minutes (live) or the span's
playing time (recorded), and a restart of the daemon (a new key) ends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
import time
from datetime import UTC, datetime

from controller.surfaces.hls import sign_media_uris

KEY_BYTES = 32
# A live playlist is fetched again about once a fragment, and every fetch signs anew; its
# signatures expire after a few minutes. Expiries are rounded up to the step, so every viewer
# in the same step gets the same text (one signing, however many viewers).
LIVE_SIGNATURE_SECONDS = 300
SIGNATURE_STEP_SECONDS = 60
# A recorded playlist is fetched once and played for as long as its span lasts, or longer when
# paused: its signatures last the span plus this margin; a player paused past it opens the
# playlist again.
VOD_MARGIN_SECONDS = 3600
_SIGNED_TEXTS_KEPT = 4  # the latest signed playlists, by (text, expiry)


def _mac_text(key: bytes, path: str, expires: int) -> str:
    mac = hmac.new(key, f"{path}|{expires}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _ceil_step(seconds: float) -> int:
    return int(math.ceil(seconds / SIGNATURE_STEP_SECONDS) * SIGNATURE_STEP_SECONDS)


class MediaSigner:
    """Signs `/hls/` paths until an expiry and checks such signatures; `key` (random by
    default) is this process's alone."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)
        self._lock = threading.Lock()
        self._texts: dict[tuple[str, int], str] = {}

    def __repr__(self) -> str:
        return f"<MediaSigner texts={len(self._texts)}>"

    @staticmethod
    def live_expiry(now: float | None = None) -> int:
        """The expiry (UNIX seconds) of a live playlist's signatures answered at `now`."""
        return _ceil_step((time.time() if now is None else now) + LIVE_SIGNATURE_SECONDS)

    @staticmethod
    def vod_expiry(span_seconds: float, now: float | None = None) -> int:
        """The expiry of a recorded playlist's signatures: its span played out, plus a margin."""
        return _ceil_step((time.time() if now is None else now) + span_seconds + VOD_MARGIN_SECONDS)

    def query(self, path: str, expires: int) -> str:
        """The query (`exp=...&sig=...`) that opens `/hls/{path}` until `expires`."""
        return f"exp={expires}&sig={_mac_text(self._key, path, expires)}"

    def refusal(self, path: str, exp: str | None, sig: str | None, now: float | None = None) -> str | None:
        """Why `exp` and `sig` do not open `/hls/{path}` now; None when they do."""
        if exp is None or sig is None:
            return "a signed media URI carries both exp and sig (open the playlist again)"
        if not (exp.isascii() and exp.isdigit()) or len(exp) > 12:
            return f"exp {exp[:24]!r} is not a UNIX time in seconds"
        expires = int(exp)
        expected = _mac_text(self._key, path, expires)
        if not hmac.compare_digest(sig.encode("utf-8", "surrogateescape"), expected.encode("ascii")):
            return ("the signature is not valid for this media path (altered, for another path, or "
                    "from before the daemon restarted): open the playlist again")
        if expires <= (time.time() if now is None else now):
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return f"the signature expired at {when}: open the playlist again"
        return None

    def signed(self, text: str, expires: int) -> str:
        """`text` (one of vigil's playlists) with each media URI signed until `expires`."""
        key = (text, expires)
        with self._lock:
            found = self._texts.get(key)
        if found is not None:
            return found
        made = sign_media_uris(text, lambda path: self.query(path, expires))
        with self._lock:
            self._texts[key] = made
            while len(self._texts) > _SIGNED_TEXTS_KEPT:
                del self._texts[next(iter(self._texts))]
        return made


