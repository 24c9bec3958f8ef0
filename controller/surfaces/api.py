"""The HTTP API that operators and uptime checkers reach, served by uvicorn on `vigil-api`.

Health, status, metrics, recordings and the snapshot are open and read-only; actions need
the bearer token from `api.token_file`. Handlers read only the controller's status snapshot
and never fire triggers: an action posts a command on the controller's queue and then
waits, bounded, for its own outcome event (the new state, or the guard that refused and why).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol

import anyio.to_thread
import uvicorn
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from loguru import logger
from pydantic import BaseModel, Field
from starlette.requests import cookie_parser
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from controller.config import ApiConfig, parse_listen
from controller.core.commands import CommandDesk
from controller.core.controller import Controller
from controller.core.snapshot import StatusSnapshot
from controller.surfaces.export import (
    ExportError,
    NoFootage,
    SpanTooLong,
    clip_manifest,
    export_clip,
    parse_time,
    resolve_span,
    utc_text,
)
from controller.surfaces.history import HistoryRecorder
from controller.surfaces.hls import CONTENT_TYPE as CONTENT_TYPE_M3U8
from controller.surfaces.hls import LivePlaylist, media_file, vod_playlist
from controller.surfaces.hls_merged import generated_media
from controller.surfaces.hls_route import HlsFastPath, SignedMedia
from controller.surfaces.media_signature import MediaSigner
from controller.surfaces.metrics import CONTENT_TYPE, render_metrics
from controller.surfaces.recordings import (
    DEFAULT_PER_PAGE,
    MAX_PAGE,
    MAX_PER_PAGE,
    Problem,
    RecordingPage,
    list_recordings,
    resolve_recording,
    serve_descriptor,
    serve_file,
)
from controller.surfaces.spans import MAX_SPANS, Span, TimelineCache, nearest_spans, recorded_spans
from controller.surfaces.web import add_web_page
from hw.camera import Frame
from hw.errors import EncoderError, VigilError
from hw.integrity import Signer
from hw.snapshot import encode_jpeg

API_THREAD_NAME = "vigil-api"
ACTION_WAIT_SECONDS = 5.0
SERVER_READY_SECONDS = 5.0
SERVER_STOP_GRACE_SECONDS = 2.0
SERVER_STOP_SECONDS = 5.0
ALERTS_IN_STATUS = 20
HOUR_FORMAT = "%Y-%m-%dT%H"
HOUR_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}$"
DEFAULT_EXPORT_MAX_SECONDS = 1800.0
MAX_CONCURRENT_EXPORTS = 2
KEPT_CLIP_MANIFESTS = 64  # the manifests of the latest exports, fetched by X-Vigil-Manifest
SPANS_DEFAULT_SECONDS = 86400.0
SPANS_MAX_SECONDS = 366 * 86400
VOD_MAX_SECONDS = 86400.0

RootProvider = Callable[[], Path]


class ApiUnavailable(VigilError, RuntimeError):
    """The API could not start (address in use, not on this machine, not permitted)."""


def _version() -> str:
    try:
        return metadata.version("vigil")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- what the API answers ----------------------------------------------------------------------


class Health(BaseModel):
    """What an uptime checker needs: the state, the health score and why, in one line."""

    state: str
    health: float | None = Field(description="Health score 0-100, or null where none is computed.")
    reason: str


class ActionResult(BaseModel):
    """What the machine did with an action."""

    action: str
    done: bool = Field(description="True when the machine did what was asked.")
    state: str = Field(description="The state after the action (or now, if it is still running).")
    before: str = Field(description="The state when the action arrived.")
    detail: str
    transitions: list[str] = Field(default_factory=list)
    refused: str | None = Field(default=None, description="The guard's reason, when one refused.")


class MergeRequest(BaseModel):
    """Which closed hour to merge; none means every closed hour."""

    hour: str | None = Field(default=None, pattern=HOUR_PATTERN,
                             description="UTC hour as YYYY-MM-DDTHH, e.g. 2024-05-01T13.")


class MergeResult(BaseModel):
    """What became of a merge request."""

    action: str = "merge"
    hour: str | None = Field(description="The hour asked for; null for every closed hour.")
    done: bool = Field(description="True when the merge finished within the wait.")
    detail: str
    result: Any = Field(default=None, description="What the merge produced, when it finished.")


# --- bearer token ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionGate:
    """The token actions need, or why actions are disabled."""

    token: str | None
    disabled_reason: str

    @property
    def is_enabled(self) -> bool:
        return self.token is not None


def load_action_gate(token_file: Path | None) -> ActionGate:
    """The token in `token_file` (whitespace stripped), or why there is none; logs either way."""
    if token_file is None:
        gate = ActionGate(None, "actions are disabled: no api.token_file is configured")
    else:
        gate = _read_token(token_file)
    if gate.is_enabled:
        logger.info("API actions enabled: bearer token read from {}", token_file)
    else:
        logger.warning("API {}; start, stop, reset and merge answer 403 until the token file "
                       "exists and the daemon restarts", gate.disabled_reason)
    return gate


def _read_token(path: Path, disabled: str = "actions are disabled") -> ActionGate:
    try:
        # Without blocking: a FIFO named as the token file must not hang the start-up.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return ActionGate(None, f"{disabled}: token file {path} does not exist")
    except OSError as err:
        return ActionGate(None, f"{disabled}: token file {path} cannot be read "
                                f"({err.strerror or err})")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return ActionGate(None, f"{disabled}: token file {path} is not a regular file")
        raw = os.read(fd, 4096)
    except OSError as err:
        return ActionGate(None, f"{disabled}: token file {path} cannot be read "
                                f"({err.strerror or err})")
    finally:
        os.close(fd)
    token = raw.decode("utf-8", errors="replace").strip()
    if not token:
        return ActionGate(None, f"{disabled}: token file {path} is empty")
    if mode & 0o077:
        logger.warning("API token file {} is readable by others (mode {:o}); chmod 600 it",
                       path, stat.S_IMODE(mode))
    return ActionGate(token, "")


class TokenGate:
    """The action token now in force; a reset swaps in the one its reloaded config names."""

    def __init__(self, token_file: Path | None) -> None:
        self.token_file = token_file
        self.gate = load_action_gate(token_file)

    def reload(self, token_file: Path | None) -> None:
        self.token_file = token_file
        self.gate = load_action_gate(token_file)


class FootageGate:
    """Who may see footage: the viewer token, the action token, the login cookie, or anyone
    when the config says footage is public. A reset swaps in the reloaded config's choice."""

    def __init__(self, viewer_token_file: Path | None, *, public: bool = False) -> None:
        self._lock = threading.Lock()
        self._signer = MediaSigner()
        self._signed_for: tuple[str, ...] | None = None
        self.reload(viewer_token_file, public=public)

    def reload(self, viewer_token_file: Path | None, *, public: bool = False) -> None:
        self.viewer_token_file = viewer_token_file
        self.is_public = public
        if viewer_token_file is None:
            self.gate = ActionGate(None, "no api.viewer_token_file is configured")
        else:
            self.gate = _read_token(viewer_token_file, "no viewer token")
        if public:
            logger.warning("API footage is public (api.public_footage: true): recordings, exports, "
                           "live view and snapshots answer anyone who reaches the API")
        elif self.gate.is_enabled:
            logger.info("API footage needs the viewer token read from {} (or the action token)",
                        viewer_token_file)

    def tokens(self, operator: ActionGate) -> list[str]:
        return [t for t in (self.gate.token, operator.token) if t is not None]

    def signer(self, operator: ActionGate) -> MediaSigner:
        """The signer of media URIs (media_signature) for the tokens now in force: one with a
        new key, which voids every signature made before, once a reset changed a token."""
        tokens = tuple(self.tokens(operator))
        with self._lock:
            if self._signed_for is None:
                self._signed_for = tokens
            elif self._signed_for != tokens:
                self._signer, self._signed_for = MediaSigner(), tokens
            return self._signer


VIEWER_COOKIE = "vigil_viewer"
COOKIE_CONTEXT = b"vigil viewer cookie v1"
OPERATOR_COOKIE = "vigil_operator"
OPERATOR_COOKIE_CONTEXT = b"vigil operator cookie v1"
COOKIE_MAX_AGE_SECONDS = 30 * 24 * 3600
# A cookie-authenticated action must carry this header: a cross-site form or image cannot set
# a custom header, and a cross-site fetch() that sets one needs a CORS preflight the API never
# answers. SameSite=Strict already keeps the cookie off cross-site requests; this is the second lock.
ACTION_HEADER = "X-Vigil-Action"


def cookie_value(token: str) -> str:
    """What the login cookie holds for `token`: a MAC of it, not the token itself."""
    return hmac.new(token.encode(), COOKIE_CONTEXT, "sha256").hexdigest()


def operator_cookie_value(token: str) -> str:
    """What the operator cookie holds for the action token: a MAC of it under its own context,
    so a viewer cookie can never be replayed as an operator cookie."""
    return hmac.new(token.encode(), OPERATOR_COOKIE_CONTEXT, "sha256").hexdigest()


def cross_site_reason(request: Request) -> str | None:
    """Why a cookie-authenticated POST may come from another site, or None when it is the page's own.

    The page's requests carry ACTION_HEADER and, where the browser sends one, an Origin that
    names this very host.
    """
    if request.headers.get(ACTION_HEADER) is None:
        return (f"cookie-authenticated actions need the {ACTION_HEADER} header (the web page sends "
                "it; a cross-site request cannot): refused as a possible cross-site request")
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if origin is not None and (host is None or origin.rstrip("/") not in
                               (f"http://{host}", f"https://{host}")):
        return f"Origin {origin} is not this unit's page ({host}): refused as a cross-site request"
    return None


def _matches(given: str, tokens: list[str], transform: Callable[[str], str] | None = None) -> bool:
    """Constant-time comparison against every token (no early exit that would leak which)."""
    found = False
    for token in tokens:
        expected = transform(token) if transform is not None else token
        found |= hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                     expected.encode("utf-8", "surrogateescape"))
    return found


@dataclass(frozen=True)
class Presented:
    """The token an Authorization header carries: a bearer token, or a Basic password."""

    scheme: str  # "bearer" or "basic", as the header spells it in lower case
    token: str | None  # None: Basic credentials that are not base64 of UTF-8 "user:password"


def presented_token(authorization: str | None) -> Presented | None:
    """The bearer token or the Basic password (RFC 7617; the user name is ignored) that
    `authorization` carries; None for no header or another scheme."""
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    scheme, rest = scheme.lower(), rest.strip()
    if scheme == "bearer":
        return Presented(scheme, rest or None)
    if scheme != "basic":
        return None
    try:
        user_pass = base64.b64decode(rest, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return Presented(scheme, None)
    _, colon, password = user_pass.partition(":")
    return Presented(scheme, password if colon and password else None)


def _is_browser(request: Request) -> bool:
    """Whether a request comes from a browser (the web page's own requests): it carries one
    of the login cookies, or X-Requested-With (the page's hls.js sets it). A browser meets
    a Basic challenge with a login dialog over the page, so it gets none."""
    cookies = request.cookies
    return ("x-requested-with" in request.headers or VIEWER_COOKIE in cookies
            or OPERATOR_COOKIE in cookies)


class Session(BaseModel):
    """What the browser asking is logged in as, for the web page to offer what it may do."""

    role: str | None = Field(description='"operator" (actions and footage), "viewer" (footage), '
                                         "or null (not logged in).")
    footage: bool = Field(description="True when this browser may see footage.")
    footage_public: bool
    login_possible: bool = Field(description="False when no token is configured to log in with.")
    actions_enabled: bool
    export_max_seconds: float
    action_header: str = Field(description="The header a cookie-authenticated action must carry.")


class LoginRequest(BaseModel):
    """The viewer (or action) token, for a browser that cannot send a bearer header."""

    token: str = Field(min_length=1, max_length=4096)


class UploadDesk(Protocol):
    """What the API asks of the upload surface (controller.surfaces.upload.Uploader)."""

    def status(self) -> dict[str, Any]: ...

    def request_now(self) -> dict[str, Any]: ...


UPLOAD_OFF = "upload is off: set upload.enabled: true and upload.bucket in the config, then reset"


_bearer = HTTPBearer(auto_error=False, description="The token in the file named by api.token_file.")
# A Basic challenge makes clients that send a URL's user:password only when challenged (VLC,
# ffmpeg) send it; RFC 7617 2.1's charset says the password is UTF-8.
BASIC_CHALLENGE = 'Basic realm="vigil", charset="UTF-8"'


class _BasicPassword(HTTPBasic):
    """Documents Basic credentials in the OpenAPI schema; the footage gate reads the header
    itself (presented_token), so this never refuses anything."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return None


# FastAPI 0.110 (the oldest admitted, constraints-oldest.txt) resolves a class dependency's postponed
# annotations without its module's globals ("name 'Request' is not defined"): give it the class.
_BasicPassword.__call__.__annotations__["request"] = Request

_basic = _BasicPassword(auto_error=False, realm="vigil", scheme_name="HTTPBasic",
                        description="Footage only: any user name (e.g. viewer), the viewer token "
                                    "(or the action token) as the password.")


# --- the app -----------------------------------------------------------------------------------


def create_app(controller: Controller, *, token_file: Path | None,
               root_provider: RootProvider | None = None, viewer_token_file: Path | None = None,
               public_footage: bool = False,
               export_max_seconds: float = DEFAULT_EXPORT_MAX_SECONDS,
               signer: Signer | None = None, history: HistoryRecorder | None = None,
               uploader: Callable[[], UploadDesk | None] | None = None) -> FastAPI:
    """The API for `controller`, serving recordings below `root_provider()` (default: the
    root the snapshot says recording goes to); footage needs the token in
    `viewer_token_file` or `token_file` unless `public_footage`; exported clips' manifests
    are signed by `signer` (hw.integrity) when given; `GET /history` answers from `history`."""
    tokens = TokenGate(token_file)
    footage = FootageGate(viewer_token_file, public=public_footage)
    timelines = TimelineCache()
    live_view = LivePlaylist()
    exports = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
    clip_manifests = ClipManifests(KEPT_CLIP_MANIFESTS)
    commands = CommandDesk(controller, name="api-actions")
    snapshots = SnapshotCache()
    version = _version()
    footage_root = root_provider or recording_root_of(controller)
    app = FastAPI(
        title="vigil",
        version=version,
        description="Recorder daemon API: health, status, metrics and recordings are open and "
                    "read-only; actions need the bearer token from api.token_file.",
        # Swagger UI and ReDoc load their scripts from a CDN, and a unit has no internet:
        # both are off. /openapi.json stays (the schemathesis fuzz test reads it).
        docs_url=None,
        redoc_url=None,
    )
    add_web_page(app)
    app.state.tokens = tokens
    app.state.footage = footage
    app.state.commands = commands
    app.state.metric_hooks = []  # surfaces beside the API (MQTT) add their counters here
    # The upload surface, while one runs (daemon.Surfaces gives the provider; a reset swaps
    # the uploader behind it).
    no_uploader: Callable[[], UploadDesk | None] = lambda: None  # noqa: E731
    app.state.uploader = uploader or no_uploader

    def authorized(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        gate = tokens.gate
        if gate.token is None:
            raise HTTPException(403, detail=gate.disabled_reason)
        if credentials is None:
            operator_cookie = request.cookies.get(OPERATOR_COOKIE)
            if operator_cookie is not None and _matches(operator_cookie, [gate.token],
                                                        operator_cookie_value):
                reason = cross_site_reason(request)
                if reason is not None:
                    raise HTTPException(403, detail=reason)
                return
            viewer_cookie = request.cookies.get(VIEWER_COOKIE)
            if viewer_cookie is not None and _matches(viewer_cookie, footage.tokens(gate), cookie_value):
                raise HTTPException(403, detail="this login opens footage only; actions need the "
                                                "action token (log in with api.token_file's token)")
            presented = presented_token(request.headers.get("authorization"))
            detail = ("Basic credentials open footage only; actions need the action token as "
                      "Authorization: Bearer TOKEN" if presented is not None and presented.scheme == "basic"
                      else "missing bearer token (Authorization: Bearer TOKEN)")
            raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), gate.token.encode()):
            viewer_token = footage.gate.token
            if viewer_token is not None and _matches(credentials.credentials, [viewer_token]):
                raise HTTPException(403, detail="the viewer token opens footage only; actions need "
                                                "the action token (api.token_file)")
            raise HTTPException(401, detail="wrong bearer token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def footage_refusal(authorization: str | None, cookie: str | None,
                        media: SignedMedia | None = None) -> HTTPException | None:
        """Why these credentials do not open footage (None: they do): the bearer token or
        the Basic password, the login cookie, or for `/hls/` a signature of its path."""
        if footage.is_public:
            return None
        allowed = footage.tokens(tokens.gate)
        if not allowed:
            where = footage.viewer_token_file or "the file named by api.viewer_token_file"
            return HTTPException(403, detail=(
                f"footage is closed: {footage.gate.disabled_reason} and no action token; put a "
                f"token in {where} (chmod 600) and reset the recorder, or set "
                f"api.public_footage: true to open footage to everyone"))
        presented = presented_token(authorization)
        if presented is not None and presented.token is not None and _matches(presented.token, allowed):
            return None
        if cookie is not None and _matches(cookie, allowed, cookie_value):
            return None
        if media is not None and media.is_signed:
            why = footage.signer(tokens.gate).refusal(media.path, media.exp, media.sig)
            if why is None:
                return None
            return HTTPException(401, detail=why, headers={"WWW-Authenticate": "Bearer"})
        if presented is None:
            detail = ("footage needs the viewer token: Authorization: Bearer TOKEN, Basic "
                      "credentials with the token as the password, or the cookie POST /login sets")
        elif presented.scheme == "basic":
            detail = ("wrong Basic credentials: the password must be the viewer token (any user name)"
                      if presented.token is not None else
                      "Basic credentials must be base64 of UTF-8 user:password (RFC 7617)")
        else:
            detail = "wrong bearer token"
        return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})

    def refuse_unless_viewer(request: Request, media: SignedMedia | None = None, *,
                             challenge: bool = False) -> None:
        refusal = footage_refusal(request.headers.get("authorization"), request.cookies.get(VIEWER_COOKIE),
                                  media)
        if refusal is None:
            return
        if challenge and refusal.status_code == 401 and not _is_browser(request):
            refusal.headers = {"WWW-Authenticate": f"{BASIC_CHALLENGE}, Bearer"}
        raise refusal

    async def viewer(
        request: Request,
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _basic_password: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    ) -> None:
        refuse_unless_viewer(request)

    async def viewer_challenged(
        request: Request,
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _basic_password: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    ) -> None:
        """`viewer`, whose 401 challenges Basic too, for what players open by URL (playlists,
        recordings): VLC and ffmpeg send a URL's user:password only when challenged."""
        refuse_unless_viewer(request, challenge=True)

    async def media_viewer(
        request: Request,
        path: str,
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _basic_password: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
        exp: Annotated[str | None, Query(max_length=32, description=(
            "With sig: the UNIX time until which a playlist's signed URI opens this path."))] = None,
        sig: Annotated[str | None, Query(max_length=128, description=(
            "The signature a playlist gave this URI (a viewer credential for this path alone)."))] = None,
    ) -> None:
        refuse_unless_viewer(request, SignedMedia(path, exp, sig))

    def admits_viewer(authorization: str | None, cookie_header: str | None,
                      media: SignedMedia | None) -> bool:
        """Whether these headers (and a media URI's signature) open footage, as the API's
        routes decide it (for HlsFastPath)."""
        cookie = cookie_parser(cookie_header).get(VIEWER_COOKIE) if cookie_header is not None else None
        return footage_refusal(authorization, cookie, media) is None

    def signed_live(text: str) -> str:
        """The live playlist as a viewer gets it: its media URIs signed (unless footage is public)."""
        if footage.is_public:
            return text
        return footage.signer(tokens.gate).signed(text, MediaSigner.live_expiry())

    # The live view's hot requests, answered below FastAPI's routing (ApiServer serves this).
    app.state.hls_fast_path = HlsFastPath(app, root=footage_root, playlist=live_view, admits=admits_viewer,
                                          present=signed_live)

    def snapshot_status() -> tuple[StatusSnapshot, dict[str, Any]]:
        snap = controller.snapshot
        status = snap.as_dict()
        if status["disk"] is None:  # none yet (the disk monitor samples periodically)
            status["disk"] = _disk_usage(snap.root or snap.primary_root)
        status["actions_enabled"] = tokens.gate.is_enabled
        return snap, status

    auth_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "Missing or wrong bearer token."},
        403: {"model": Problem, "description": "Actions are disabled: no token file."},
    }

    @app.get("/health", response_model=Health, responses={503: {"model": Health,
             "description": "Not recording."}}, summary="Recording or not, for uptime checks")
    def health() -> JSONResponse:
        snap = controller.snapshot
        body = Health(state=snap.state, health=snap.health_score, reason=health_reason(snap))
        return JSONResponse(body.model_dump(), status_code=200 if snap.is_recording else 503)

    @app.get("/status", summary="Everything the recorder knows about itself")
    def get_status() -> dict[str, Any]:
        return snapshot_status()[1]

    @app.get("/history", summary="The last hours, one sample a minute, with the alerts raised",
             responses={404: {"model": Problem, "description": "History is off (api.history: false)."}})
    def get_history(
        hours: Annotated[int, Query(ge=1, le=24, description="How many hours back, 1 to 24.")] = 24,
    ) -> dict[str, Any]:
        if history is None:
            raise HTTPException(404, detail="history is off on this unit (api.history: false)")
        return history.window(hours)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        snap = controller.snapshot
        disk_now = None
        if snap.disk is None:
            usage = _disk_usage(snap.root or snap.primary_root)
            if usage is not None:
                disk_now = (usage["path"], usage["free_bytes"], usage["total_bytes"])
        return PlainTextResponse(render_metrics(snap, version=version, disk_now=disk_now,
                                                hooks=app.state.metric_hooks), media_type=CONTENT_TYPE)

    footage_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "Missing or wrong viewer token."},
        403: {"model": Problem, "description": "Footage is closed: no viewer token configured."},
    }
    viewer_only = [Depends(viewer)]
    challenged = [Depends(viewer_challenged)]

    @app.post("/login", status_code=204, response_class=Response,
              responses={**footage_responses, 204: {"description": "Cookie set."}},
              summary="Trade the viewer (or action) token for a cookie (for the web page)")
    def login(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        body: Annotated[LoginRequest | None, Body()] = None,
    ) -> Response:
        allowed = footage.tokens(tokens.gate)
        if not allowed:
            raise HTTPException(403, detail="no viewer token is configured (api.viewer_token_file)")
        given = body.token if body is not None else credentials.credentials if credentials else None
        if given is None or not _matches(given, allowed):
            raise HTTPException(401, detail="wrong or missing token",
                                headers={"WWW-Authenticate": "Bearer"})
        response = Response(status_code=204)
        response.set_cookie(VIEWER_COOKIE, cookie_value(given), max_age=COOKIE_MAX_AGE_SECONDS,
                            httponly=True, samesite="strict", path="/")
        operator = tokens.gate.token
        if operator is not None and _matches(given, [operator]):
            response.set_cookie(OPERATOR_COOKIE, operator_cookie_value(given),
                                max_age=COOKIE_MAX_AGE_SECONDS, httponly=True, samesite="strict",
                                path="/")
        elif OPERATOR_COOKIE in request.cookies:  # a viewer login replaces an operator's
            response.delete_cookie(OPERATOR_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.post("/logout", status_code=204, response_class=Response, summary="Forget the login cookies")
    def logout() -> Response:
        response = Response(status_code=204)
        for name in (VIEWER_COOKIE, OPERATOR_COOKIE):
            response.delete_cookie(name, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/session", response_model=Session, summary="What this browser's login opens")
    def session(request: Request) -> Session:
        allowed = footage.tokens(tokens.gate)
        viewer_cookie = request.cookies.get(VIEWER_COOKIE)
        operator_cookie = request.cookies.get(OPERATOR_COOKIE)
        is_operator = (tokens.gate.token is not None and operator_cookie is not None
                       and _matches(operator_cookie, [tokens.gate.token], operator_cookie_value))
        is_viewer = viewer_cookie is not None and _matches(viewer_cookie, allowed, cookie_value)
        sees = footage.is_public or is_operator or is_viewer
        role = "operator" if is_operator else "viewer" if is_viewer else None
        return Session(role=role, footage=sees, footage_public=footage.is_public,
                       login_possible=bool(allowed), actions_enabled=tokens.gate.is_enabled,
                       export_max_seconds=export_max_seconds, action_header=ACTION_HEADER)

    @app.get("/recordings/spans", response_model=SpanPage, dependencies=viewer_only,
             responses={**footage_responses, 422: {"model": Problem, "description": "Bad times."}},
             summary="Continuous recorded spans: the timeline")
    def recorded(
        start: Annotated[str | None, Query(max_length=64, description="ISO 8601 (UTC if no offset); "
                                           "default a day before end")] = None,
        end: Annotated[str | None, Query(max_length=64, description="ISO 8601; default now")] = None,
    ) -> SpanPage:
        try:
            t1 = parse_time(end) if end is not None else time.time()
            t0 = parse_time(start) if start is not None else t1 - SPANS_DEFAULT_SECONDS
        except ValueError as err:
            _invalid("start" if start is not None else "end", start or end, str(err))
        if t1 <= t0:
            _invalid("end", end, f"end {utc_text(t1)} is not after start {utc_text(t0)}")
        if t1 - t0 > SPANS_MAX_SECONDS:
            _invalid("start", start, f"at most {SPANS_MAX_SECONDS // 86400} days at once")
        root = footage_root()
        found = recorded_spans(root, t0, t1, timelines)
        return SpanPage(root=str(root), start=utc_text(t0), end=utc_text(t1),
                        spans=[span_out(s, root) for s in found], truncated=len(found) >= MAX_SPANS)

    @app.get(
        "/export",
        response_class=Response,
        dependencies=viewer_only,
        responses={
            **footage_responses,
            200: {"content": {"video/mp4": {}}, "description": "The clip (faststart MP4); "
                  "X-Vigil-Start and X-Vigil-End say the span its frames cover."},
            404: {"model": NoFootageProblem, "description": "Nothing recorded in the span."},
            413: {"model": Problem, "description": "Longer than api.export_max_seconds."},
            429: {"model": Problem, "description": "Too many exports at once."},
            503: {"model": Problem, "description": "The footage could not be read or the clip "
                  "not written (logged)."},
        },
        summary="One MP4 of a span: stream copy across segments, hours and the open segment",
    )
    def export(
        start: Annotated[str, Query(max_length=64, description="ISO 8601 (UTC if no offset), "
                                    "e.g. 2026-05-09T14:03:10Z")],
        end: Annotated[str | None, Query(max_length=64, description="ISO 8601; or give duration")] = None,
        duration: Annotated[float | None, Query(description="Seconds, instead of end")] = None,
    ) -> Response:
        try:
            t0, t1 = resolve_span(start, end, duration, max_seconds=export_max_seconds)
        except SpanTooLong as err:
            raise HTTPException(413, detail=str(err)) from err
        except ValueError as err:
            _invalid("end" if "end" in str(err) else "start", start, str(err))
        if not exports.acquire(blocking=False):
            raise HTTPException(429, detail=f"at most {MAX_CONCURRENT_EXPORTS} exports at once; "
                                            "try again", headers={"Retry-After": "5"})
        try:
            return _send_export(footage_root(), t0, t1, timelines, signer, clip_manifests)
        finally:
            exports.release()

    @app.get(
        "/export/manifest/{sha256}",
        dependencies=viewer_only,
        responses={
            **footage_responses,
            200: {"description": "The manifest of a clip this daemon exported (the X-Vigil-Manifest "
                  "URL beside it): which fragments of which segments it holds, its SHA-256, signed"},
            404: {"model": Problem, "description": "No recent export has that hash."},
        },
        summary="The manifest of an exported clip, by the clip's SHA-256",
    )
    def export_manifest(sha256: str) -> JSONResponse:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            _invalid("sha256", sha256, "the clip's SHA-256: 64 lowercase hex digits")
        manifest = clip_manifests.get(sha256)
        if manifest is None:
            raise HTTPException(404, detail=f"no manifest for {sha256}: only the latest "
                                            f"{KEPT_CLIP_MANIFESTS} exports' are kept; export again")
        return JSONResponse(manifest)

    @app.get("/live.m3u8", response_class=Response, dependencies=challenged,
             responses={**footage_responses, 200: {"content": {CONTENT_TYPE_M3U8: {}}},
                        404: {"model": Problem, "description": "Nothing recorded yet."}},
             summary="Live HLS playlist over the fragments on disk")
    def live() -> Response:
        text = live_view.text(footage_root())
        if text is None:
            raise HTTPException(404, detail="no footage on disk yet to play live")
        return Response(signed_live(text), media_type=CONTENT_TYPE_M3U8,
                        headers={"Cache-Control": "no-cache"})

    @app.get("/vod.m3u8", response_class=Response, dependencies=challenged,
             responses={**footage_responses, 200: {"content": {CONTENT_TYPE_M3U8: {}}},
                        404: {"model": NoFootageProblem, "description": "No footage in the span."},
                        413: {"model": Problem, "description": "Longer than a day."}},
             summary="Recorded HLS playlist of a span")
    def vod(
        start: Annotated[str, Query(max_length=64, description="ISO 8601 (UTC if no offset)")],
        end: Annotated[str | None, Query(max_length=64, description="ISO 8601; or give duration")] = None,
        duration: Annotated[float | None, Query(description="Seconds, instead of end")] = None,
    ) -> Response:
        try:
            t0, t1 = resolve_span(start, end, duration, max_seconds=VOD_MAX_SECONDS)
        except SpanTooLong as err:
            raise HTTPException(413, detail=str(err)) from err
        except ValueError as err:
            _invalid("end" if "end" in str(err) else "start", start, str(err))
        root = footage_root()
        text = vod_playlist(root, t0, t1)
        if text is None:
            near = recorded_spans(root, t0, t1, timelines) or nearest_spans(root, t0, t1, timelines)
            return JSONResponse(NoFootageProblem(
                detail=f"nothing recorded from {utc_text(t0)} to {utc_text(t1)}",
                nearest=[span_out(s, root) for s in near]).model_dump(), status_code=404)
        if not footage.is_public:
            text = footage.signer(tokens.gate).signed(text, MediaSigner.vod_expiry(t1 - t0))
        return Response(text, media_type=CONTENT_TYPE_M3U8)

    @app.get("/hls/{path:path}", response_class=Response, dependencies=[Depends(media_viewer)],
             responses={**footage_responses,
                        200: {"content": {"video/mp4": {}}}, 206: {"content": {"video/mp4": {}}},
                        404: {"model": Problem, "description": "No such segment below the root."},
                        304: {"description": "Not modified: If-None-Match named its ETag."},
                        416: {"description": "The range starts past the end."}},
             summary="Segment bytes for the HLS playlists (whole fragments only)")
    def hls_media(path: str, request: Request) -> Response:
        root = footage_root()
        found = media_file(root, path)
        if found is None:
            made = generated_media(root, path)  # a group of a merged hour, for /vod.m3u8
            if made is not None:
                return Response(made, media_type="video/mp4")
            raise HTTPException(404, detail="no such segment")
        return serve_file(found.path, request.headers.get("range"), request.headers.get("if-range"),
                          if_none_match=request.headers.get("if-none-match"), limit=found.limit,
                          patches=found.patches)

    @app.get("/recordings", response_model=RecordingPage, summary="Recorded hours, newest first",
             dependencies=viewer_only, responses=footage_responses)
    def recordings(
        page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1 for the newest hours.")] = 1,
        per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE, description="Hours per page.")] = (
            DEFAULT_PER_PAGE),
    ) -> RecordingPage:
        return list_recordings(footage_root(), page=page, per_page=per_page)

    @app.get(
        "/recordings/{path:path}",
        response_class=Response,
        responses={
            200: {"content": {"video/mp4": {}}, "description": "The whole file."},
            206: {"content": {"video/mp4": {}}, "description": "The requested byte range."},
            404: {"model": Problem, "description": "No such closed recording below the root."},
            304: {"description": "Not modified: If-None-Match named the file's current ETag."},
            416: {"description": "The range starts past the end of the file."},
            **footage_responses,
        },
        summary="A closed recording, with HTTP range requests",
        dependencies=challenged,
    )
    def recording_file(path: str, request: Request) -> Response:
        target = resolve_recording(footage_root(), path)
        if target is None:
            raise HTTPException(404, detail="no such recording")
        return serve_file(target, request.headers.get("range"), request.headers.get("if-range"),
                          if_none_match=request.headers.get("if-none-match"))

    @app.get(
        "/snapshot.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "The latest frame."},
                   503: {"model": Problem, "description": "No frame to show yet."}, **footage_responses},
        summary="The latest validated frame as JPEG",
        dependencies=viewer_only,
    )
    def snapshot() -> Response:
        snap = controller.snapshot
        frame = snap.latest_frame
        if frame is None or frame.data is None:
            raise HTTPException(503, detail=f"no frame yet: {snap.no_frame_reason}")
        try:
            jpeg = snapshots.jpeg_of(frame)
        except EncoderError as err:
            raise HTTPException(503, detail=f"snapshot failed: {err}") from err
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    action_responses: dict[int | str, dict[str, Any]] = {
        **auth_responses,
        202: {"model": ActionResult, "description": "Asked; not finished within the wait."},
        409: {"model": ActionResult, "description": "Refused by a guard, or not possible now."},
    }

    def action_route(trigger: str, summary: str) -> None:
        def act() -> JSONResponse:
            status_code, result = perform_action(controller, commands, trigger, ACTION_WAIT_SECONDS)
            return JSONResponse(result.model_dump(), status_code=status_code)

        act.__name__ = f"action_{trigger}"  # FastAPI names the OpenAPI operation after it
        app.post(f"/actions/{trigger}", response_model=ActionResult, responses=action_responses,
                 summary=summary, dependencies=[Depends(authorized)])(act)

    action_route("start", "Start recording")
    action_route("stop", "Stop recording")
    action_route("reset", "Emergency reset: drop everything, reload the config, start again")

    @app.post(
        "/actions/merge",
        response_model=MergeResult,
        responses={**auth_responses,
                   202: {"model": MergeResult, "description": "Queued; not finished within the wait."},
                   409: {"model": MergeResult, "description": "Nothing merged, and why."},
                   503: {"model": Problem, "description": "Merging is not available."}},
        summary="Merge a closed hour (or every closed hour) now",
        dependencies=[Depends(authorized)],
    )
    def merge(
        hour: Annotated[str | None, Query(pattern=HOUR_PATTERN, description="YYYY-MM-DDTHH (UTC)")] = None,
        body: Annotated[MergeRequest | None, Body()] = None,
    ) -> JSONResponse:
        chosen = _merge_hour(hour, body.hour if body is not None else None)
        status_code, result = perform_merge(controller, chosen, ACTION_WAIT_SECONDS)
        return JSONResponse(jsonable_encoder(result), status_code=status_code)

    @app.get("/upload/status", summary="The upload queue: pending, in flight, done, failed and why")
    def upload_status() -> dict[str, Any]:
        uploader = app.state.uploader()
        if uploader is None:
            return {"enabled": False, "reason": UPLOAD_OFF}
        status: dict[str, Any] = uploader.status()
        return status

    @app.post("/actions/upload", summary="Upload everything pending now (past upload.hours and a "
              "permanent error's hold); follow it on GET /upload/status",
              responses={**auth_responses,
                         202: {"description": "Started; `now` in the answer and in /upload/status "
                                              "shows how far it got."},
                         409: {"model": Problem, "description": "Upload is off."}},
              status_code=202, dependencies=[Depends(authorized)])
    def upload_now() -> JSONResponse:
        uploader = app.state.uploader()
        if uploader is None:
            return JSONResponse({"detail": UPLOAD_OFF}, status_code=409)
        progress = uploader.request_now()
        return JSONResponse({**uploader.status(), "now": progress}, status_code=202)

    return app


# --- footage -----------------------------------------------------------------------------------


class SpanOut(BaseModel):
    start: str = Field(description="UTC, ISO 8601, of the first frame.")
    end: str = Field(description="UTC, ISO 8601, when the last frame ends.")
    start_seconds: float = Field(description="The same as UNIX seconds.")
    end_seconds: float
    seconds: float
    frames: int
    files: list[str] = Field(description="Paths below /recordings/ of the files that hold it.")


class SpanPage(BaseModel):
    root: str
    start: str
    end: str
    spans: list[SpanOut]
    truncated: bool = Field(description="True when more spans matched than one answer lists.")


class NoFootageProblem(BaseModel):
    """Nothing recorded in the span asked for, and the recorded spans nearest to it."""

    detail: str
    nearest: list[SpanOut]


def span_out(span: Span, root: Path) -> SpanOut:
    files = []
    for path in span.files:
        try:
            files.append(path.relative_to(root).as_posix())
        except ValueError:
            files.append(path.name)
    return SpanOut(start=utc_text(span.start), end=utc_text(span.end), start_seconds=span.start,
                   end_seconds=span.end, seconds=round(span.end - span.start, 6), frames=span.frames,
                   files=files)


class ClipManifests:
    """The manifests of the latest exported clips, by the clip's SHA-256 (bounded, thread-safe)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}

    def put(self, manifest: dict[str, Any]) -> str:
        key = str(manifest["sha256"])
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = manifest
            while len(self._items) > self.keep:
                del self._items[next(iter(self._items))]
        return key

    def get(self, sha256: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get(sha256)


def _send_export(root: Path, start: float, end: float, cache: TimelineCache,
                 signer: Signer | None = None, manifests: ClipManifests | None = None) -> Response:
    """Assemble the clip in a private temporary directory, then stream it from an unlinked file;
    its manifest is kept in `manifests`, named by the X-Vigil-Manifest header."""
    workdir = Path(tempfile.mkdtemp(prefix="vigil-export-"))
    try:
        out = workdir / "clip.mp4"
        try:
            clip = export_clip(root, start, end, out, workdir=workdir, cache=cache)
        except NoFootage as err:
            body = NoFootageProblem(detail=str(err), nearest=[span_out(s, root) for s in err.nearest])
            return JSONResponse(body.model_dump(), status_code=404)
        except ExportError as err:
            logger.error("export failed: {}", err)
            raise HTTPException(503, detail=f"the clip could not be made: {err}") from err
        except OSError as err:
            logger.error("export failed: {}", err)
            raise HTTPException(503, detail=f"the clip could not be written: {err.strerror or err}",
                                headers={"Retry-After": "5"}) from err
        name = f"vigil-{utc_text(clip.start)}-{utc_text(clip.end)}.mp4".replace(":", "")
        sha256 = None
        if manifests is not None:
            try:
                sha256 = manifests.put(clip_manifest(clip, signer, name=name))
            except OSError as err:
                logger.error("export failed: its manifest could not be made: {}", err)
                raise HTTPException(503, detail=f"the clip's manifest could not be made: "
                                                f"{err.strerror or err}") from err
        fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # an open descriptor keeps the clip readable
    size = os.fstat(fd).st_size
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Vigil-Start": utc_text(clip.start), "X-Vigil-End": utc_text(clip.end),
        "X-Vigil-Frames": str(clip.frames), "X-Vigil-Gaps": str(len(clip.gaps)),
        "Cache-Control": "no-store",
    }
    if sha256 is not None:
        headers["X-Vigil-Manifest"] = f"/export/manifest/{sha256}"
        headers["X-Vigil-Sha256"] = sha256
    return serve_descriptor(fd, size, media_type="video/mp4", headers=headers)


# --- actions -----------------------------------------------------------------------------------


def perform_merge(controller: Controller, hour: str | None, wait_seconds: float) -> tuple[int, MergeResult]:
    """Ask the storage lifecycle for a merge and wait (bounded) for it: (HTTP status, result).

    `Controller.request_merge(hour)` comes with the storage lifecycle; it may answer at once
    or with a Future of the merged files, whose exception says why nothing was merged.
    """
    request_merge = getattr(controller, "request_merge", None)
    if request_merge is None:
        raise HTTPException(503, detail="merging is not available: this build has no storage "
                                        "lifecycle (Controller.request_merge is missing)")
    what = f"hour {hour}" if hour else "every closed hour"
    logger.info("API asked for a merge of {}", what)
    try:
        answer = request_merge(hour)
    except ValueError as err:
        _invalid("hour", hour, str(err))
    except Exception as err:
        logger.exception("merge request failed hour={}", hour)
        raise HTTPException(503, detail=f"merge could not be requested: {err}") from err
    if not isinstance(answer, Future):
        return 202, MergeResult(hour=hour, done=False, detail=f"merge of {what} requested",
                                result=_plain(answer))
    try:
        merged = answer.result(timeout=wait_seconds)
    except TimeoutError:
        return 202, MergeResult(hour=hour, done=False,
                                detail=f"merge of {what} queued; still running after {wait_seconds:g}s")
    except Exception as err:
        return 409, MergeResult(hour=hour, done=False,
                                detail=f"nothing merged: {type(err).__name__}: {err}")
    count = len(merged) if isinstance(merged, list | tuple) else 1
    return 200, MergeResult(hour=hour, done=True, detail=f"merged {count} hour(s)",
                            result=_plain(merged))


def _plain(value: object) -> Any:
    """`value` as JSON-ready data, or its text when it has no JSON form."""
    try:
        return jsonable_encoder(value)
    except (TypeError, ValueError):
        return str(value)


def perform_action(controller: Controller, commands: CommandDesk, trigger: str,
                   wait_seconds: float) -> tuple[int, ActionResult]:
    """Post `trigger` and wait (bounded) for its outcome event: (HTTP status, result)."""
    before = controller.snapshot.state
    logger.info("API asked for {} in state {}", trigger, before)
    done = commands.ask(trigger, wait_seconds)
    if done is None:
        state = controller.snapshot.state
        return 202, ActionResult(action=trigger, done=False, state=state, before=before,
                                 detail=f"{trigger} asked; not finished after {wait_seconds:g}s, "
                                        f"state is {state}")
    result = ActionResult(action=trigger, done=done.is_done, state=done.state, before=done.before,
                          detail=done.detail, transitions=list(done.transitions),
                          refused=done.refused[1] if done.refused else None)
    if done.is_done:
        return 200, result
    if trigger == "reset" and done.refused is not None and done.refused[0] == "start":
        # The reset itself happened; only the autostart after it was refused.
        result.done = True
        result.detail = f"reset done; autostart refused: {done.refused[1]}"
        return 200, result
    return 409, result


def _invalid(name: str, value: object, message: str) -> NoReturn:
    """Raise a 422 in FastAPI's own shape, so every bad parameter reads alike."""
    raise RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message,
                                   "input": value}])


def _merge_hour(query_hour: str | None, body_hour: str | None) -> str | None:
    """The one hour asked for (query or body), checked to be a real UTC hour."""
    if query_hour is not None and body_hour is not None and query_hour != body_hour:
        _invalid("hour", query_hour, f"hour given twice and they differ: query {query_hour!r}, "
                                     f"body {body_hour!r}")
    hour = query_hour if query_hour is not None else body_hour
    if hour is None:
        return None
    try:
        datetime.strptime(hour, HOUR_FORMAT)
    except ValueError as err:
        _invalid("hour", hour, f"{hour!r} is not a UTC hour YYYY-MM-DDTHH: {err}")
    return hour


# --- status helpers ----------------------------------------------------------------------------


def _disk_usage(root: Path) -> dict[str, Any] | None:
    try:
        usage = os.statvfs(root)
    except OSError:
        return None
    return {"path": str(root), "free_bytes": usage.f_bavail * usage.f_frsize,
            "total_bytes": usage.f_blocks * usage.f_frsize}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def health_reason(snap: StatusSnapshot) -> str:
    """One line saying why the recorder is in its state."""
    state = snap.state
    since = _iso(snap.since)
    last_fault = next((a.message for a in reversed(snap.alerts) if a.kind == "fault"), None)
    if state == "recording":
        reason = f"recording since {since}"
        if snap.fps_achieved is not None:
            reason += f" at {snap.fps_achieved:.1f} of {snap.configured_fps:g} fps"
        if snap.health is not None and snap.health.reason not in ("", "ok"):
            reason += f"; health: {snap.health.reason}"
    elif state == "idle":
        reason = f"idle since {since}: not recording"
        if snap.refusals_since_state:
            refusal = snap.refusals_since_state[-1]
            reason += f"; {refusal.trigger} refused: {refusal.reason}"
    elif state == "recovering":
        reason = f"recovering since {since}"
        if last_fault:
            reason += f" after {last_fault}"
        reason += f"; attempt {snap.recovery_attempts}"
    elif state == "critical":
        reason = f"critical since {since}: recovery gave up"
        if last_fault:
            reason += f" ({last_fault})"
        reason += "; probing again periodically"
    elif state == "reset":
        reason = f"resetting since {since}: reloading the config"
    else:
        reason = f"{state} since {since}"
    return " ".join(reason.split())


class SnapshotCache:
    """The JPEG of the newest frame, encoded once however many clients ask for that frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._jpeg = b""

    def jpeg_of(self, frame: Frame) -> bytes:
        """The JPEG of `frame`; EncoderError when it holds no image."""
        if frame.data is None:
            raise EncoderError(f"frame {frame.sequence} holds no image")
        with self._lock:
            if frame is not self._frame:
                self._jpeg = encode_jpeg(frame.data)
                self._frame = frame
            return self._jpeg


# --- the server --------------------------------------------------------------------------------
#
# uvicorn parses requests with httptools (llhttp, in C): per request that costs about half of
# what its pure-Python h11 protocol did, and requests are most of what a live HLS viewer costs
# the daemon (bench/live.py). uvicorn (uvicorn/protocols/http/httptools_impl.py) arms no timer
# until a first response is sent: a client that connects and sends nothing, or half a request
# head, holds its connection and its descriptor forever; `limit_concurrency` only answers 503
# once a whole request head has arrived; and llhttp takes a head of any length. So the API
# puts its own bounds around uvicorn's HttpToolsProtocol: a bound on a request head's bytes
# (431 and closed past it), a hard cap on open
# connections (at the cap the oldest connection idle for over a second is dropped, so an
# operator gets through a flood of idle ones; else the newcomer gets 503), a deadline for
# each whole request, a deadline for a client that stops reading its response, and a small
# accept backlog (asyncio accepts up to `backlog` connections per wake-up; uvicorn/server.py
# passes it to create_server). Together they keep the API's descriptors far below
# RLIMIT_NOFILE, so recording never meets EMFILE.

MAX_CONNECTIONS = 64
ACCEPT_BACKLOG = 16
# The kernel's queue of connections not yet accepted costs the process no descriptor; a short
# one makes a burst of clients that overflow it hang in the handshake for seconds. asyncio
# listens with `backlog` (which also bounds one accept burst), so the queue is widened after.
LISTEN_QUEUE = 128
REQUEST_SECONDS = 10.0  # from connecting (or the previous response) to a whole request received
SEND_STALL_SECONDS = 30.0  # a client that reads none of its response for this long is dropped
# At the cap, a connection idle this long may be dropped for a new one; younger ones are not
# (a burst of real clients is still sending its requests), the new one gets 503 instead.
DROP_IDLE_AFTER_SECONDS = 1.0
KEEP_ALIVE_SECONDS = 5
MAX_HEAD_BYTES = 16 * 1024  # a request head larger than this is answered 431 and closed
LINGER_SECONDS = 1.0  # after a 431, the client's further bytes are read and dropped this long
HANDLER_THREADS = 8  # request handlers run on at most this many worker threads
# Descriptors the rest of the daemon may need beside the API's: its own files, the camera,
# the segment writer, merges, /proc reads. The API keeps to what is left of the limit.
RESERVED_DESCRIPTORS = 128
ACCEPT_BURSTS = 3  # accepted sockets of up to this many bursts can be open before they are seen


@dataclass(frozen=True)
class ServerLimits:
    """How much of the process the API's clients can hold, and for how long."""

    max_connections: int = MAX_CONNECTIONS
    backlog: int = ACCEPT_BACKLOG
    request_seconds: float = REQUEST_SECONDS
    send_stall_seconds: float = SEND_STALL_SECONDS
    drop_idle_after_seconds: float = DROP_IDLE_AFTER_SECONDS
    keep_alive_seconds: int = KEEP_ALIVE_SECONDS
    max_head_bytes: int = MAX_HEAD_BYTES
    handler_threads: int = HANDLER_THREADS

    @property
    def max_descriptors(self) -> int:
        """The most descriptors the API's clients can hold at once."""
        return self.max_connections + ACCEPT_BURSTS * self.backlog

    @classmethod
    def for_descriptor_limit(cls, limit: int | None = None, **overrides: Any) -> ServerLimits:
        """Limits that leave RESERVED_DESCRIPTORS (or half of `limit`) for everything else.

        `limit` defaults to this process's soft RLIMIT_NOFILE.
        """
        if limit is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if limit == resource.RLIM_INFINITY:
                limit = 1 << 20
        spare = max(0, limit - max(RESERVED_DESCRIPTORS, limit // 2))
        backlog = max(1, min(ACCEPT_BACKLOG, spare // (4 * ACCEPT_BURSTS)))
        connections = max(1, min(MAX_CONNECTIONS, spare - ACCEPT_BURSTS * backlog))
        return cls(**{"max_connections": connections, "backlog": backlog, **overrides})


_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                   b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                   b"content-length: %d\r\n\r\n%s")
_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
             b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s")


def _raw_response(template: bytes, text: str) -> bytes:
    body = text.encode() + b"\n"
    return template % (len(body), body)


@dataclass
class ConnectionBook:
    """What the API's connections did, shared by every connection of one server.

    Touched only on the server's event loop thread. `waiting` holds the connections that
    have no request in progress, oldest first, with the (monotonic) time each began to wait:
    the first to go when the cap is reached.
    """

    limits: ServerLimits
    waiting: dict[HttpToolsProtocol, float] = field(default_factory=dict)
    accepted: int = 0
    refused: int = 0  # over the cap with nothing to drop: answered 503 and closed
    dropped_idle: int = 0  # waiting connections closed to make room for a new one
    timed_out: int = 0  # no whole request within request_seconds: 408 and closed
    head_too_large: int = 0  # a request head over max_head_bytes: 431 and closed
    send_stalled: int = 0  # read none of the response for send_stall_seconds: closed
    at_cap: bool = False  # logged once when the cap is reached, once when it is left

    def note_cap(self, reached: bool, open_now: int) -> None:
        if reached and not self.at_cap:
            logger.warning("HTTP API at its cap of {} connections: dropping idle ones, refusing "
                           "others with 503 (recording is unaffected)", self.limits.max_connections)
        elif not reached and self.at_cap:
            logger.info("HTTP API below its connection cap again ({} open; {} refused, {} idle "
                        "dropped, {} timed out so far)", open_now, self.refused, self.dropped_idle,
                        self.timed_out)
        self.at_cap = reached

    def counts(self) -> dict[str, int]:
        return {"accepted": self.accepted, "refused": self.refused,
                "dropped_idle": self.dropped_idle, "timed_out": self.timed_out,
                "head_too_large": self.head_too_large,
                "send_stalled": self.send_stalled}


class _HeadTooLarge(Exception):
    """A request head over the bound (raised inside the parser's callbacks)."""


def _guarded_protocol(book: ConnectionBook) -> type[HttpToolsProtocol]:
    """uvicorn's HttpToolsProtocol with the cap, the head bound and the deadlines of `book.limits`."""
    limits = book.limits

    class GuardedProtocol(HttpToolsProtocol):
        """Where the connection's newest request is, from the parser's callbacks: `_begun`
        requests were started and `_answered` of them answered; the newest has its whole head
        (`_head_done`) and its whole body (`_whole`). As with h11's states before: no request
        is in progress while the newest has only part of its head, or is answered and wholly
        received; such a client may be dropped at the cap, and times out with a 408."""

        _request_timer: asyncio.TimerHandle | None = None
        _request_deadline: float | None = None  # loop time; None: no request is awaited
        _stall_timer: asyncio.TimerHandle | None = None
        _begun = 0
        _answered = 0
        _head_done = False
        _whole = False
        _head_bytes = 0  # received since the last whole head, while a head is incomplete
        _head_fields = 0  # the newest request's URL and header lines, as the parser hands them over
        _head_too_large = False
        _lingering = False  # answered and closing: what the client still sends is read and dropped

        def _answer_and_close(self, response: bytes) -> None:
            """Send `response` and close gracefully: our side ends after it (FIN), and what the
            client is still sending is read and dropped for a moment before the socket closes;
            closed at once with its data unread, the kernel answers with a reset, which can
            reach the client before the response does."""
            self._lingering = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            book.accepted += 1
            open_now = sum(1 for c in self.connections
                           if isinstance(c, HttpToolsProtocol) and not c.transport.is_closing())
            if open_now >= limits.max_connections:
                book.note_cap(True, open_now)
            if open_now >= limits.max_connections and not self._drop_oldest_waiting():
                # Refused before uvicorn counts it: connection_lost needs only the transport.
                self.transport = transport
                book.refused += 1
                transport.write(_raw_response(_TOO_MANY, f"too many connections (at most "
                                                         f"{limits.max_connections}); try again"))
                transport.close()
                return
            super().connection_made(transport)
            self._await_request()

        @staticmethod
        def _drop_oldest_waiting() -> bool:
            old_enough = time.monotonic() - limits.drop_idle_after_seconds
            while book.waiting:
                oldest, since = next(iter(book.waiting.items()))
                if since > old_enough:
                    return False  # every waiting connection is younger
                del book.waiting[oldest]
                if not oldest.transport.is_closing():
                    book.dropped_idle += 1
                    oldest.transport.close()
                    return True
            return False

        # The parser's callbacks (httptools calls them from inside feed_data).
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun += 1
            self._head_done = self._whole = False
            self._head_fields = 0

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def _count_head(self, size: int) -> None:
            """A head that arrives whole in one read is counted here, exactly, before its
            request starts; raising stops the parser, and uvicorn then answers through
            send_400_response (a 431 below)."""
            self._head_fields += size
            if self._head_fields > limits.max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge(limits.max_head_bytes)

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._refuse_head()
            else:
                super().send_400_response(msg)

        def _refuse_head(self) -> None:
            book.head_too_large += 1
            book.waiting.pop(self, None)
            self._answer_and_close(_raw_response(
                _HEAD_TOO_LARGE, f"request head over {limits.max_head_bytes} bytes"))

        def on_headers_complete(self) -> None:
            self._head_done = True
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._whole = True
            super().on_message_complete()

        def _in_progress(self) -> bool:
            """The newest request has its whole head, and is not answered or its body is
            still coming (an answer may go before the body, as a refusal does)."""
            return self._head_done and (self._begun > self._answered or not self._whole)

        def _head_open(self) -> bool:
            """What arrives now is (part of) a request head: the newest one's head is not whole,
            or every request is answered and wholly received (the next one has not begun)."""
            return not self._head_done or (self._begun == self._answered and self._whole)

        def _received(self) -> bool:
            """The newest request is wholly received (it is being answered)."""
            return self._in_progress() and self._whole

        def _await_request(self) -> None:
            """From now the client has limits.request_seconds to send a whole request.

            The deadline moves with each request; the timer is not made again each time (a
            keep-alive viewer asks twice a second): one armed earlier finds the deadline
            later when it fires, and waits again for the rest."""
            self._request_deadline = self.loop.time() + limits.request_seconds
            if self._request_timer is None:
                self._request_timer = self.loop.call_at(self._request_deadline, self._request_due)
            book.waiting.pop(self, None)
            book.waiting[self] = time.monotonic()

        def _note_progress(self) -> None:
            if self._in_progress():
                book.waiting.pop(self, None)  # a request is in progress: not idle
            if self._received():
                self._request_deadline = None  # the whole request is in

        def _request_due(self) -> None:
            self._request_timer = None
            deadline = self._request_deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline:  # moved on by a later request
                self._request_timer = self.loop.call_at(deadline, self._request_due)
                return
            self._request_overdue()

        def _request_overdue(self) -> None:
            self._request_deadline = None
            if self._received():
                return
            book.timed_out += 1
            book.waiting.pop(self, None)
            if not self._in_progress():
                self.transport.write(_raw_response(
                    _TIMED_OUT, f"no whole request within {limits.request_seconds:g} s"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return
            if self._head_open():
                self._head_bytes += len(data)
            super().data_received(data)
            # A head still not whole: the parser holds what it has, so its bytes are bounded
            # here (to within one read of the bound).
            if (self._head_open() and self._head_bytes > limits.max_head_bytes
                    and not self.transport.is_closing() and not self._lingering):
                self._refuse_head()
                return
            self._note_progress()

        def on_response_complete(self) -> None:
            self._answered += 1
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_request()
                self._note_progress()  # a pipelined request may have been taken up already

        def pause_writing(self) -> None:
            super().pause_writing()
            self._cancel(self._stall_timer)
            self._stall_timer = self.loop.call_later(limits.send_stall_seconds, self._send_stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._cancel(self._stall_timer)
            self._stall_timer = None

        def _send_stalled(self) -> None:
            self._stall_timer = None
            if not self.transport.is_closing():
                book.send_stalled += 1
                self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel(self._request_timer)
            self._cancel(self._stall_timer)
            self._request_timer = self._stall_timer = None
            book.waiting.pop(self, None)
            super().connection_lost(exc)
            if book.at_cap:
                open_now = sum(1 for c in self.connections
                               if isinstance(c, HttpToolsProtocol) and not c.transport.is_closing())
                if open_now < limits.max_connections // 2:
                    book.note_cap(False, open_now)

        @staticmethod
        def _cancel(timer: asyncio.TimerHandle | None) -> None:
            if timer is not None:
                timer.cancel()

    return GuardedProtocol


class _LoopErrors:
    """asyncio's error reports for the API's loop, each kind logged once a minute, not per event.

    asyncio reports an accept() that fails for lack of descriptors (EMFILE, ENFILE) and
    retries a second later; under pressure that is a traceback every few milliseconds.
    """

    INTERVAL_SECONDS = 60.0

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        kind = str(context.get("message", "error"))
        if isinstance(error, OSError) and error.errno is not None:
            kind += f": {errno.errorcode.get(error.errno, error.errno)}"
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -self.INTERVAL_SECONDS) >= self.INTERVAL_SECONDS:
            self._logged[kind] = now
            logger.warning("HTTP API: {} ({}; {} time(s) so far); the API goes on", kind,
                           error if error is not None else "no detail", self.counts[kind])


class _Server(uvicorn.Server):
    """uvicorn's Server, with the worker threads bounded and loop errors summarised."""

    def __init__(self, config: uvicorn.Config, limits: ServerLimits, errors: _LoopErrors) -> None:
        super().__init__(config)
        self._limits = limits
        self._errors = errors

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self._errors)
        # Starlette runs sync handlers on anyio's worker threads (40 by default); each thread
        # keeps a stack and a malloc arena, so fewer threads bound the API's memory.
        anyio.to_thread.current_default_thread_limiter().total_tokens = self._limits.handler_threads
        await super().startup(sockets)


def _bind(host: str, port: int, backlog: int = ACCEPT_BACKLOG) -> socket.socket:
    """A listening TCP socket on host:port; ApiUnavailable says why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ApiUnavailable(f"cannot resolve {host!r}: {err.strerror}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        where = f"{host}:{port}"
        if err.errno == errno.EADDRINUSE:
            why = f"{where} is already in use (another vigil, or another service on that port?)"
        elif err.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        elif err.errno == errno.EACCES:
            why = f"not permitted to listen on {where} (ports below 1024 need privileges)"
        else:
            why = f"cannot listen on {where}: {err.strerror or err}"
        raise ApiUnavailable(why) from err
    sock.set_inheritable(False)
    return sock


class ApiServer:
    """Serves an ASGI app with uvicorn on the thread `vigil-api`; start and stop are bounded.

    `limits` bound what clients can hold (connections, time, threads); by default they are
    fitted to this process's descriptor limit.
    """

    def __init__(self, app: FastAPI, host: str, port: int, *, limits: ServerLimits | None = None) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.limits = limits if limits is not None else ServerLimits.for_descriptor_limit()
        self.connections = ConnectionBook(self.limits)
        self.loop_errors = _LoopErrors()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return f"<ApiServer {self.url} {'running' if running else 'stopped'}>"

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose, when asked for port 0)."""
        return int(self._socket.getsockname()[1]) if self._socket is not None else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = SERVER_READY_SECONDS) -> None:
        """Bind, then serve on a thread; returns once requests are answered.

        Raises ApiUnavailable when the address cannot be used or uvicorn does not come up.
        """
        if self._thread is not None:
            raise RuntimeError("an ApiServer starts once; make a new one")
        limits = self.limits
        self._socket = _bind(self.host, self.requested_port, limits.backlog)
        # The API's own fast path for live HLS (hls_route), when the app has one.
        asgi = getattr(self.app.state, "hls_fast_path", None) or self.app
        config = uvicorn.Config(
            asgi, http=_guarded_protocol(self.connections), loop="asyncio", ws="none",
            lifespan="off", log_config=None, access_log=False,
            timeout_graceful_shutdown=int(SERVER_STOP_GRACE_SECONDS),
            backlog=limits.backlog, timeout_keep_alive=limits.keep_alive_seconds,
            # uvicorn's own check (503 once this many connections or requests are open) as a
            # backstop: the cap above admits at most max_connections, plus as many again while
            # dropped idle ones are closing.
            limit_concurrency=2 * limits.max_connections + 1,
        )
        server = _Server(config, limits, self.loop_errors)
        self._server = server
        sockets = [self._socket]

        def serve() -> None:
            try:
                server.run(sockets=sockets)
            except BaseException as err:  # uvicorn exits with SystemExit on some failures
                self._failure = err

        self._thread = threading.Thread(target=serve, name=API_THREAD_NAME, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ApiUnavailable(f"uvicorn did not start on {self.url}: {self._failure!r}")
            time.sleep(0.01)  # polling uvicorn's started flag, under a deadline
        self._socket.listen(max(LISTEN_QUEUE, limits.backlog))
        logger.info("HTTP API listening on {} (at most {} connections, {:g} s for a request)",
                    self.url, limits.max_connections, limits.request_seconds)

    def stop(self, timeout: float = SERVER_STOP_SECONDS) -> bool:
        """Stop serving; False when the thread had to be abandoned after `timeout`."""
        server, thread = self._server, self._thread
        stopped = True
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(1.0)
            if thread.is_alive():
                logger.error("HTTP API thread did not stop within {:g}s; abandoning it", timeout)
                stopped = False
        if self._socket is not None:
            self._socket.close()
        return stopped


def recording_root_of(controller: Controller) -> RootProvider:
    """The root the unit records into (after any fallback), else the configured one."""

    def root() -> Path:
        snap = controller.snapshot
        return snap.root or snap.primary_root

    return root


def start_api(config: ApiConfig, controller: Controller, signer: Signer | None = None, *,
              history: HistoryRecorder | None = None,
              uploader: Callable[[], UploadDesk | None] | None = None) -> ApiServer | None:
    """The running API as configured, or None (disabled, or its address unusable: logged)."""
    if not config.enabled:
        logger.info("HTTP API disabled (api.enabled: false)")
        return None
    host, port = parse_listen(config.listen)
    app = create_app(controller, token_file=config.token_file, viewer_token_file=config.viewer_token_file,
                     public_footage=config.public_footage, export_max_seconds=config.export_max_seconds,
                     signer=signer, history=history, uploader=uploader)
    server = ApiServer(app, host, port)
    try:
        server.start()
    except ApiUnavailable as err:
        logger.error("HTTP API not started: {}; recording goes on without the API", err)
        return None
    return server
