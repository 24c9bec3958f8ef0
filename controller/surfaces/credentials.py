"""Secrets systemd hands to the service: `LoadCredential=` files in $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
from pathlib import Path

from controller.config import ApiConfig

API_TOKEN_CREDENTIAL = "api-token"  # the name in deploy/vigil.service's LoadCredential=
VIEWER_TOKEN_CREDENTIAL = "viewer-token"  # the same for the footage token, when the unit has one


def credential_path(name: str) -> Path | None:
    """The file systemd put credential `name` in for this service, or None outside systemd."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def api_with_credential_token(api: ApiConfig) -> ApiConfig:
    """`api`, reading the token from the systemd credential when the config names no token_file.

    Under the unit the token file itself (/etc/vigil/api-token) is root's alone; systemd gives
    vigil a copy only it can read. An api.token_file set in the config always wins.
    """
    update: dict[str, Path] = {}
    for key, name in (("token_file", API_TOKEN_CREDENTIAL), ("viewer_token_file", VIEWER_TOKEN_CREDENTIAL)):
        path = credential_path(name)
        if key not in api.model_fields_set and path is not None:
            update[key] = path
    return api.model_copy(update=update) if update else api
