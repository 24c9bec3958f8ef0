"""The unit's Ed25519 signing key: created once (by deploy/install.sh, or by the daemon when
it is missing), readable by the vigil user only; manifests are signed with it (hw.integrity).

The key file is PKCS#8 PEM, unencrypted (the daemon must sign without a person at hand);
the public key is shown as 64 hex digits (its raw 32 bytes): `vigil key` prints it, the
status snapshot publishes it and `vigil verify --key` takes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.statedir import state_directory
from hw.errors import VigilError
from hw.integrity import Signer

KEY_MODE = 0o600


class KeyError_(VigilError, ValueError):
    """The key file cannot be read, made or parsed."""


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


MAX_KEY_BYTES = 64 * 1024  # a PEM Ed25519 key is 119 bytes


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        # Without blocking and only a regular file: a FIFO or /dev/zero named as the key is an
        # error at once, not a hang or an endless read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KeyError_(f"{path}: the signing key must be a regular file")
            data = os.read(fd, MAX_KEY_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as err:
        raise KeyError_(f"{path}: cannot read the signing key: {err.strerror or err}") from err
    if len(data) > MAX_KEY_BYTES:
        raise KeyError_(f"{path}: larger than a signing key ({MAX_KEY_BYTES} bytes at most)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise KeyError_(f"{path}: not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: holds a {type(key).__name__}, not an Ed25519 key")
    return key


def create_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key to `path` (mode 0600, never over an existing file), durably."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The key in `path`; a new one there when there is no file yet."""
    try:
        return load_key(path)
    except KeyError_:
        if path.exists() or path.is_symlink():
            raise
    try:
        return create_key(path)
    except FileExistsError:  # another process made it meanwhile
        return load_key(path)
    except OSError as err:
        raise KeyError_(f"{path}: cannot create the signing key: {err.strerror or err}") from err

KEY_NAME = "integrity.key"


def key_path(configured: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Where the signing key lives: `integrity.key_file`, else the service's state directory
    (systemd's StateDirectory= sets $STATE_DIRECTORY), else ~/.local/state/vigil."""
    if configured is not None:
        return configured
    return state_directory(env) / KEY_NAME


def signer_for(key: Ed25519PrivateKey, unit: str) -> Signer:
    return Signer(unit=unit, public_key=public_hex(key), sign=key.sign)


def verify_signature(public_key: str, signature: bytes, payload: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True
