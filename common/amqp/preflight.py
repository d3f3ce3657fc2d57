"""Checks a message before it goes to the wire: everything about it that can never
succeed (an exchange or routing key over 255 bytes, properties or headers that pika cannot
encode, a content header over the frame size, a body over the configured maximum) is
found here and raised as :class:`UnpublishableError`, so that such a message never sits
at the head of a publisher's queue being retried."""

from __future__ import annotations

import struct

import pika.exceptions
from pika import spec
from pika.spec import BasicProperties

from common import metrics
from common.amqp.errors import UnpublishableError
from common.logging import get_logger

log = get_logger(__name__)

SHORT_STR_MAX = 255  # AMQP short strings (names, routing keys): 255 bytes of UTF-8
# pika's frame_max, which the broker may only lower: a content header must fit in one frame.
FRAME_MAX = spec.FRAME_MAX_SIZE
_FRAME_OVERHEAD = spec.FRAME_HEADER_SIZE + spec.FRAME_END_SIZE
_CONTENT_HEADER_FIXED = 12  # class id, weight, body size

# What pika raises while encoding a value it cannot carry (bad type, out of range,
# not UTF-8, too long): the message's fault, never the connection's.
ENCODING_ERRORS = (
    pika.exceptions.ShortStringTooLong,
    pika.exceptions.ProtocolSyntaxError,  # UnsupportedAMQPFieldException
    struct.error,
    TypeError,
    ValueError,  # UnicodeEncodeError, OverflowError's kin
    OverflowError,
)


# What basic_publish raises when the channel or connection is down: the message is fine,
# it goes again after the reconnect. Anything else it raises is the message's fault.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    OSError,
)


def name_problem(name: object, what: str) -> str | None:
    """Why ``name`` can never be an exchange, queue or routing key, or None."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} {name[:40]!r}... is not valid UTF-8"
    if size > SHORT_STR_MAX:
        return f"{what} of {size} bytes is longer than AMQP's {SHORT_STR_MAX} ({name[:40]!r}...)"
    return None


def check(
    exchange: str, routing_key: str, body_len: int, props: BasicProperties, max_body: int
) -> None:
    """Raise :class:`UnpublishableError` when this message can never be published."""
    for name, what in ((exchange, "exchange"), (routing_key, "routing key")):
        problem = name_problem(name, what)
        if problem is not None:
            raise UnpublishableError("bad_name", problem)
    if body_len > max_body:
        raise UnpublishableError(
            "too_large", f"body of {body_len} bytes is over broker.max_message_bytes {max_body}"
        )
    try:
        size = sum(len(p) for p in props.encode())
    except ENCODING_ERRORS as exc:
        raise UnpublishableError(
            "bad_properties", f"properties pika cannot encode: {type(exc).__name__}: {exc}"
        ) from exc
    if size + _CONTENT_HEADER_FIXED + _FRAME_OVERHEAD > FRAME_MAX:
        raise UnpublishableError(
            "bad_properties", f"properties of {size} bytes do not fit a {FRAME_MAX}-byte frame"
        )


def dropped(
    publisher: str, exchange: str, routing_key: str, kind: str, exc: UnpublishableError
) -> None:
    """Count and log (once) a message that is failed at once, never sent."""
    metrics.AMQP_PUBLISH_DROPPED.labels(reason=exc.reason).inc()
    log.error(
        "message can never be published, dropped",
        publisher=publisher,
        kind=kind,
        exchange=str(exchange)[:80],
        routing_key=str(routing_key)[:80],
        reason=exc.reason,
        error=str(exc),
    )
