"""Structured logging (structlog): JSON lines on stdout, key=value on a TTY.

Context is bound per job / VM / disk / task with :func:`bound` (contextvars, so it
follows the thread or task that bound it; a new thread or a pool's worker starts with
none: work handed to one is wrapped in :func:`in_log_context`). The role is the
process's, added to every line whatever thread logs it. Records from the standard
``logging`` module (pika, pyvmomi, urllib3) go through the same processors and renderer.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any, ParamSpec, TypeVar

import structlog

P = ParamSpec("P")
R = TypeVar("R")

_configured = False
# Process-wide, not a contextvar: threads (consumers, pools, pika's) do not inherit those.
_role: str | None = None


def _add_role(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    if _role is not None:
        event.setdefault("role", _role)
    return event


def setup_logging(
    level: str = "info", fmt: str = "auto", role: str | None = None, stream: IO[str] | None = None
) -> None:
    """Configure structlog and route stdlib logging through it. Idempotent.

    Services log to stdout; one-shot commands whose stdout is their result (a report,
    ``--json``) pass ``stream=sys.stderr`` so that the two never mix.
    """
    global _configured, _role
    _role = role
    out = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_role,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pika logs every failed connection attempt at ERROR, several lines and a traceback
    # each: during an outage that was ~20 tracebacks per process. common.amqp logs each
    # outage itself (one warning with the reason, one line when it is back) and every
    # channel or connection close it sees, so pika speaks only at debug level.
    logging.getLogger("pika").setLevel(
        logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL
    )
    _configured = True


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A structlog logger, optionally with context bound to it."""
    log = structlog.get_logger(name)
    return log.bind(**context) if context else log


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind job/vm/disk/task context for the current thread or task while in the block."""
    with structlog.contextvars.bound_contextvars(**context):
        yield


def bind(**context: Any) -> None:
    structlog.contextvars.bind_contextvars(**context)


def in_log_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` to run on another thread (``Thread(target=...)``, ``pool.submit``) with the
    log context bound here (job, vm, disk...). One copy per call: wrap each submission."""
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.run(fn, *args, **kwargs)

    return run
