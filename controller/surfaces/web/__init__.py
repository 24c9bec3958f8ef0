"""The unit's web page: `GET /` and the static files it loads, all shipped inside the package.

Nothing is loaded from the internet (a unit has none): the page's own script and style and
the vendored hls.js (static/vendor/, with its licence) are package data, read once when the
API is built. The Content-Security-Policy says the same to the browser: only this origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

# What the page's files may do: load from this origin only; hls.js feeds MediaSource through
# blob: URLs; a canvas may read the video (same origin, so not tainted).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
                           "worker-src 'self' blob:; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "vendor/hls.light.min.js": "text/javascript; charset=utf-8",
    "vendor/hls.js.LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str


def load_static() -> dict[str, StaticFile]:
    """Every file the page serves, read from the installed package (a wheel carries them)."""
    folder = resources.files(__package__ or __name__).joinpath("static")
    files = {}
    for name, media_type in STATIC_FILES.items():
        files[name] = StaticFile(folder.joinpath(name).read_bytes(), media_type)
    return files


def add_web_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files below `/web/` on `app`."""
    files = load_static()
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    def send(name: str) -> Response:
        found = files[name]
        return Response(found.body, media_type=found.media_type, headers=headers)

    @app.get("/", response_class=Response, include_in_schema=True, summary="The unit's web page",
             responses={200: {"content": {"text/html": {}}}})
    def page() -> Response:
        return send("index.html")

    @app.get("/web/{name:path}", response_class=Response, summary="The web page's script, style and "
             "vendored files", responses={200: {"content": {"text/javascript": {}}},
                                          404: {"description": "Not one of the page's files."}})
    def web_file(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404, detail=f"no such file of the web page: {name!r}")
        return send(name)
