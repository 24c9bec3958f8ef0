"""The API's OpenAPI schema, fuzzed with schemathesis against a live server: no server errors.

The server fronts its own controller (recording the synthetic camera), and requests carry
the valid token, so the actions really run: a stop, reset or merge here disturbs no other
test. The action token opens footage too, so the footage endpoints (export, spans, HLS,
login) are fuzzed with it: bad times, reversed and huge spans must all be 4xx. The media route
is also fuzzed with no credential but its `exp` and `sig`: a forged signature must be a 401. A 503 is
allowed only where the schema documents it (health while not recording, no frame for a
snapshot yet, merging unavailable, footage unreadable); anything else from 500 up is a failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core.controller import Controller
from controller.surfaces.api import ApiServer, create_app
from hw.factory import Hardware
from tests.specs import camera_spec, recording_spec

TOKEN = "fuzz-token"
EXAMPLES = 200  # about 20 s on the development machine: every operation, valid and invalid input


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "recordings"
    token_file = base / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    camera = camera_spec(backend="synthetic", width=160, height=120, fps=15)
    controller = Controller(Hardware(camera, recording_spec(root=root, segment_seconds=1.0,
                                                           fragment_seconds=0.5)))
    loop = threading.Thread(target=controller.run, name="vigil-controller", daemon=True)
    loop.start()
    server = ApiServer(create_app(controller, token_file=token_file, root_provider=lambda: root),
                       "127.0.0.1", 0)
    try:
        assert controller.wait_for_state("recording", 20), controller.refusals
        server.start()
        yield server
    finally:
        assert server.stop()
        controller.request_shutdown()
        loop.join(20)
        assert not loop.is_alive(), "controller did not shut down"


def documented_statuses(operation: schemathesis.APIOperation) -> set[str]:
    return {str(code) for code in operation.definition.raw.get("responses", {})}


def test_fuzzing_the_openapi_schema_gives_no_server_errors(fuzz_server: ApiServer, tmp_path: Path) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    cases = st.one_of(schema.as_strategy(),
                      schema.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    seen: set[str] = set()
    signed: set[int] = set()  # the media route's answers to its signature alone

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def no_server_error(case: schemathesis.Case) -> None:
        # The media route's exp and sig are a credential of their own: there they are also
        # sent alone, so the signature check meets what the fuzzer makes of them.
        credentials: list[dict[str, str]] = [{"Authorization": f"Bearer {TOKEN}"}]
        if case.operation.path == "/hls/{path}":
            credentials.append({})
        for headers in credentials:
            response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
            seen.add(case.operation.label)
            code = response.status_code
            if code >= 500:
                assert code == 503 and "503" in documented_statuses(case.operation), (
                    f"{case.operation.label} answered {code} to {case.as_curl_command()}: "
                    f"{response.content[:500]!r}")
            if not headers:
                signed.add(code)

    no_server_error()
    assert len(seen) >= 14, seen  # every operation was reached, not just the first few
    for label in ("GET /export", "GET /recordings/spans", "GET /live.m3u8", "GET /vod.m3u8",
                  "GET /hls/{path}"):
        assert label in seen, seen
    assert 401 in signed, signed  # what the fuzzer signs is refused, with a reason, never 5xx
