"""Secrets systemd hands to the service: `LoadCredential=` files in $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
from pathlib import Path

from controller.config import ApiConfig

API_TOKEN_CREDENTIAL = "api-token"  # the name in deploy/vigil.service's LoadCredential=


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
    if "token_file" in api.model_fields_set:
        return api
    path = credential_path(API_TOKEN_CREDENTIAL)
    return api if path is None else api.model_copy(update={"token_file": path})
