"""What an operator meets: `vigil --version`, LSB status codes, the API token as a systemd credential."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from controller.config import ApiConfig
from controller.surfaces.credentials import api_with_credential_token
from tests.conftest import REPO
from tests.processes import free_port, post_action, stop_vigil

TOKEN = "credential-token-0123456789"
WAIT_SECONDS = 30.0


def vigil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)



def test_version_prints_the_installed_version() -> None:
    done = vigil("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"vigil {metadata.version('vigil')}\n"


class _Broken(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stdlib's name
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"internal error")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, name="test-broken-api", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_status_is_4_unknown_when_something_answers_but_not_a_status(broken_server: str) -> None:
    done = vigil("status", "--url", broken_server)
    assert done.returncode == 4, done.stderr
    assert f"{broken_server}/status answered 500" in done.stderr


def test_the_config_token_file_wins_over_the_credential(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "api-token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert api_with_credential_token(ApiConfig()).token_file == tmp_path / "api-token"
    mine = ApiConfig(token_file=Path("/srv/token"))
    assert api_with_credential_token(mine).token_file == Path("/srv/token")
    # The example config names the default files (root's alone under the unit): their
    # credentials are the copies vigil can read.
    (tmp_path / "viewer-token").write_text(TOKEN + "-viewer")
    example = ApiConfig(token_file=Path("/etc/vigil/api-token"),
                        viewer_token_file=Path("/etc/vigil/viewer-token"))
    assert "token_file" in example.model_fields_set
    assert api_with_credential_token(example).token_file == tmp_path / "api-token"
    assert api_with_credential_token(example).viewer_token_file == tmp_path / "viewer-token"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert api_with_credential_token(ApiConfig()) == ApiConfig()



def test_run_reads_the_token_from_its_credential_and_status_follows_lsb(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-token").write_text(TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "vigil.yaml"
    config.write_text("camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 30\n"
                      f"recording:\n  root: {tmp_path / 'rec'}\n  segment_seconds: 2\n"
                      f"api:\n  listen: 127.0.0.1:{port}\n")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while vigil("status", "--url", url).returncode != 0:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "vigil never reported recording"
            time.sleep(0.2)
        assert post_action(f"{url}/actions/stop", "wrong") == 401
        assert post_action(f"{url}/actions/stop", TOKEN) == 200
        stopped = vigil("status", "--url", url, "--json")
        assert stopped.returncode == 1, stopped.stdout  # running, not recording
        assert json.loads(stopped.stdout)["state"] == "idle"
    finally:
        output = stop_vigil(proc)
    assert proc.returncode == 0, output
    assert f"bearer token read from {credentials / 'api-token'}" in output
    assert vigil("status", "--url", url).returncode == 3  # not running
