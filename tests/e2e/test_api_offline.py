"""A unit has no internet: the API serves no page that would load from a CDN, and keeps its schema."""

from __future__ import annotations

import json

from tests.e2e.test_api import Live, live, request

__all__ = ["live"]  # the module-scoped fixture, started once for this module


def test_swagger_and_redoc_are_off_and_the_schema_is_served(live: Live) -> None:
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        assert request(live.server, "GET", path).status == 404, path
    schema = request(live.server, "GET", "/openapi.json")
    assert schema.status == 200
    assert json.loads(schema.body)["info"]["title"] == "vigil"
    assert b"cdn.jsdelivr.net" not in schema.body and b"unpkg.com" not in schema.body
