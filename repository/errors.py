"""Typed errors of the repository: each names the object that was wrong and why."""

from __future__ import annotations


class RepositoryError(Exception):
    """Base class; the message is one line fit for an operator."""


class RepositoryFormatError(RepositoryError):
    """Not a repository, or a format version this code does not read."""


class CorruptObjectError(RepositoryError):
    """A stored object (blob, map, point, key file) failed a check."""

    def __init__(self, obj: str, reason: str) -> None:
        super().__init__(f"{obj}: {reason}")
        self.obj = obj
        self.reason = reason


class MissingChunkError(RepositoryError):
    """A chunk that must exist is not in the store."""


class InvalidChunkIdError(RepositoryError, ValueError):
    """An id that is not 32 bytes / 64 lowercase hex characters."""


class ChunkIdMismatchError(RepositoryError):
    """Received data whose hash is not the id it was sent under."""


class WrongPassphraseError(RepositoryError):
    """The passphrase does not open the key file."""


class RepositoryFullError(RepositoryError):
    """The file system holding the repository is full (ENOSPC / EDQUOT)."""


class PointNotFoundError(RepositoryError):
    """No restore point (or no disk in it) with the given id/key."""


class JobNotFoundError(RepositoryError):
    """No report of that job in the job history (job_history.py)."""


class InvalidRequestError(RepositoryError, ValueError):
    """A commit or import request with bad fields (the text names the field)."""


class LockedError(RepositoryError):
    """Another process holds an exclusive repository lock (e.g. gc)."""


class InvalidObjectNameError(RepositoryError, ValueError):
    """A storage object name that is not a relative "/"-separated key (storage.py)."""


class MissingObjectError(RepositoryError):
    """The storage holds no object of that name (the text says where it looked)."""

    def __init__(self, name: str, location: str) -> None:
        super().__init__(f"object {name} is missing ({location})")
        self.name = name
        self.location = location
