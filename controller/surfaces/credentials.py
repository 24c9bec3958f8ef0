"""Secrets systemd hands to the service: `LoadCredential=` files in $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
from pathlib import Path

from controller.config import ApiConfig
from controller.config.schema import DEFAULT_API_TOKEN_FILE, DEFAULT_VIEWER_TOKEN_FILE

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
    """`api`, reading each token from its systemd credential when the config names no other file.

    Under the unit the token files themselves (/etc/vigil/api-token, /etc/vigil/viewer-token)
    are root's alone; systemd gives vigil a copy only it can read. A config that names the
    default file (the example config lists every default) means that file, whose readable
    copy is the credential; a token file elsewhere set in the config always wins.
    """
    update: dict[str, Path] = {}
    for key, name, default in (("token_file", API_TOKEN_CREDENTIAL, DEFAULT_API_TOKEN_FILE),
                               ("viewer_token_file", VIEWER_TOKEN_CREDENTIAL, DEFAULT_VIEWER_TOKEN_FILE)):
        path = credential_path(name)
        if path is not None and getattr(api, key) == default:
            update[key] = path
    return api.model_copy(update=update) if update else api
