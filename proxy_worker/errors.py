"""Typed errors of the proxy. Each carries a short ``kind`` used as a metric label and in the
task's failure reason, so an operator sees at once what went wrong without reading a trace."""

from __future__ import annotations

from common import causes


class ProxyError(Exception):
    """Base of every error that fails a task cleanly (the task is rejected with the reason)."""

    kind = "proxy"
    cause = causes.INTERNAL  # common/causes.py: travels in the task's result
    permanent = False  # True: the task fails at once, a retry would meet the same wall

    def reason(self) -> str:
        return f"{self.kind}: {self}"


class TaskWithdrawnError(ProxyError):
    """The coordinator withdrew the task while it ran (TaskWithdrawal): stop, drop it."""

    kind = "withdrawn"
    cause = causes.CANCELLED


class ConfigError(ProxyError):
    """The proxy's configuration cannot serve this task (unknown datastore, vCenter, ...)."""

    kind = "config"
    cause = causes.PROXY_CONFIG


class TaskError(ProxyError):
    """The task itself is malformed (ranges not aligned, beyond capacity, ...)."""

    kind = "bad_task"
    cause = causes.BAD_TASK
    permanent = True


class TransportError(ProxyError):
    """Reading the disk failed (I/O error, connection lost for good, server error)."""

    kind = "transport"
    cause = causes.DISK_READ


class DiskNotFoundError(TransportError):
    kind = "not_found"


class ShortReadError(TransportError):
    """The transport returned fewer bytes than asked for inside the disk's capacity."""

    kind = "short_read"


class OutOfRangeError(TransportError):
    """A read reaches past the disk's capacity."""

    kind = "out_of_range"


class TlsError(TransportError):
    """The server's certificate failed verification or the pinned thumbprint."""

    kind = "tls"


class AuthError(TransportError):
    kind = "auth"


class WriterError(ProxyError):
    """A writer refused a chunk batch or a have-query, or did not answer in time."""

    kind = "writer"
    cause = causes.WRITER_UNREACHABLE


class WriterRefusedError(WriterError):
    """A writer answered a chunk batch with a refusal; ``cause`` is the writer's. A full
    repository fails the task for good: sent again, it would be refused again."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = causes.checked(cause) or causes.REPOSITORY_ERROR
        self.permanent = self.cause == causes.REPOSITORY_FULL
