"""What every message kind is built from: the Message base, its error, and the checks
that several kinds' schemas share."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from common.packed_entries import PackedEntriesError, check_packed

# RabbitMQ's default max message size is 128 MiB; stay well below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ID_LEN = 32

Scalar = str | int | float | bool | None
Bytes = bytes | bytearray | memoryview


class MessageError(ValueError):
    """A message could not be encoded or decoded; the text says what was wrong."""


Fields = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # Older versions a reader still takes, each with what turns its fields into this
    # version's: a rolling upgrade then works in one order (readers first, see HaveReply).
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {}


def added_fields(fields: Fields, what: str, **added: Any) -> Fields:
    """An older version's fields plus the ones a later version added (which it must not
    carry itself: then it is no message of that version)."""
    extra = [k for k in added if k in fields]
    if extra:
        raise MessageError(f"{what}: unexpected field(s) {', '.join(map(repr, extra))}")
    return {**fields, **added}


def check_ids(ids: Any, what: str) -> None:
    for i, cid in enumerate(ids):
        if len(cid) != ID_LEN:
            raise MessageError(f"{what}[{i}]: chunk id of {len(cid)} bytes, expected {ID_LEN}")


def check_packed_entries(data: bytes) -> None:
    try:
        check_packed(data)
    except PackedEntriesError as exc:
        raise MessageError(str(exc)) from None
