"""The exception tree every vigil layer raises: one base, leaves that also subclass the builtin."""

from __future__ import annotations


class VigilError(Exception):
    """Base of every error vigil raises on purpose."""


class CameraError(VigilError, RuntimeError):
    """The camera failed in a way the recorder should treat as a fault."""

    category = "camera_lost"


class CameraTimeout(CameraError, TimeoutError):
    """A camera call did not return a frame within its timeout."""

    category = "camera_timeout"


class CameraLost(CameraError, ConnectionError):
    """The camera vanished (unplugged, driver gone, source ended)."""

    category = "camera_lost"


class CameraUnavailable(CameraError):
    """The configured camera cannot be opened at all on this machine."""

    category = "camera_lost"


class BackendUnavailable(CameraUnavailable):
    """A camera backend whose library is missing or fails to load or start on this machine.

    Restarting vigil cannot fix it (a broken install, a shadowed numpy): the daemon exits
    with EX_CONFIG when the configured backend is one, and `auto` skips it.
    """


class EncoderError(VigilError, RuntimeError):
    """The encoder rejected a frame or failed."""

    category = "encoder_error"


class StorageError(VigilError, OSError):
    """Writing footage failed (I/O error, read-only filesystem)."""

    category = "storage_io"


class StorageFull(StorageError):
    """The filesystem holding the recording root is full (ENOSPC)."""

    category = "storage_full"
