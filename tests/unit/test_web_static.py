"""The web page's files: all shipped as package data, all served, nothing loaded from elsewhere."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from controller.surfaces import web

STATIC = Path(web.__file__).parent / "static"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
README = PYPROJECT.parent / "README.md"


def test_every_file_of_the_page_is_served_and_is_package_data() -> None:
    on_disk = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file())
    assert on_disk == sorted(web.STATIC_FILES)
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["controller.surfaces.web"]
    for name in on_disk:  # a wheel built from pyproject.toml carries each one
        assert any(fnmatch(f"static/{name}", pattern) for pattern in globs), name
    files = web.load_static()
    assert files["vendor/hls.light.min.js"].body == (STATIC / "vendor/hls.light.min.js").read_bytes()


def test_the_page_loads_only_its_own_files() -> None:
    html = (STATIC / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references, "no script or style found"
    for ref in references:
        own = ref.startswith("/web/") and ref.removeprefix("/web/") in web.STATIC_FILES
        assert own or ref in ("data:,", "#"), ref
    script = (STATIC / "app.js").read_text()
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", script)  # the SVG namespace is a name
    assert "default-src 'self'" in web.CONTENT_SECURITY_POLICY


def test_the_vendored_hls_js_is_the_version_the_readme_names_with_its_licence() -> None:
    bundle = (STATIC / "vendor/hls.light.min.js").read_text()
    version = re.search(r"hls\.js (\d+\.\d+\.\d+)", README.read_text())
    assert version is not None, "README names no hls.js version"
    assert f'"{version.group(1)}"' in bundle
    assert "Apache License" in (STATIC / "vendor/hls.js.LICENSE").read_text()
