"""Message schemas: one msgpack schema per message kind, encoded and decoded strictly.

Every message is a msgpack map ``{"k": kind, "v": version, <fields>...}``. Decoding
checks the kind, the version, that every field is present with the declared type and
that no extra field is there; any violation (and any malformed or truncated input)
raises :class:`MessageError`, never anything else. Consumers dead-letter such messages
with the error text as reason.

The kinds live by the flow they belong to: ``tasks`` (coordinator <-> proxies),
``chunks`` (proxies <-> writers), ``points`` (the commits queue), ``retention`` (prune
requests, also on the commits queue), ``jobs`` (job reports kept in the repository, on
the commits queue too), ``events``; the strict codec in ``codec``. This
package is the one way in: import names from ``common.messages``, which knows every
kind (``KINDS``).
"""

from __future__ import annotations

import typing

from common.messages import codec
from common.messages.base import (
    ID_LEN,
    MAX_MESSAGE_BYTES,
    Bytes,
    Fields,
    Message,
    MessageError,
    Scalar,
)
from common.messages.chunks import ChunkAck, ChunkBatch, HaveQuery, HaveReply, StreamHello
from common.messages.codec import INLINE_BELOW
from common.messages.events import JobEvent
from common.messages.jobs import MAX_REPORT_BYTES, JobRecord
from common.messages.points import (
    CommitPart,
    CommitReply,
    CommitRequest,
    DiskCommit,
    JobMarker,
    StagedTask,
    part_key,
)
from common.messages.retention import MAX_LISTED, PruneReply, PruneRequest
from common.messages.tasks import BackupTask, TaskEntries, TaskResult, TaskWithdrawal

__all__ = [
    "ID_LEN",
    "INLINE_BELOW",
    "KINDS",
    "MAX_LISTED",
    "MAX_MESSAGE_BYTES",
    "MAX_REPORT_BYTES",
    "BackupTask",
    "Bytes",
    "ChunkAck",
    "ChunkBatch",
    "CommitPart",
    "CommitReply",
    "CommitRequest",
    "DiskCommit",
    "Fields",
    "HaveQuery",
    "HaveReply",
    "JobEvent",
    "JobMarker",
    "JobRecord",
    "Message",
    "MessageError",
    "PruneReply",
    "PruneRequest",
    "Scalar",
    "StagedTask",
    "StreamHello",
    "TaskEntries",
    "TaskResult",
    "TaskWithdrawal",
    "decode",
    "encode",
    "encode_parts",
    "part_key",
]

KINDS: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        BackupTask,
        TaskResult,
        TaskWithdrawal,
        TaskEntries,
        ChunkBatch,
        ChunkAck,
        HaveQuery,
        HaveReply,
        StreamHello,
        CommitRequest,
        CommitReply,
        CommitPart,
        JobMarker,
        JobRecord,
        PruneRequest,
        PruneReply,
        JobEvent,
    )
}

M = typing.TypeVar("M", bound=Message)


def encode(msg: Message) -> bytes:
    """Serialize ``msg``; raises MessageError when a field has the wrong type or it is too big."""
    return codec.encode(msg, KINDS)


def encode_parts(msg: Message) -> list[Bytes]:
    """The same bytes as :func:`encode`, as a list of buffers whose concatenation is the
    message: long byte strings (chunk payloads) are parts of their own, referenced, not
    copied, for a scatter-gather send (a chunk stream frame)."""
    return codec.encode_parts(msg, KINDS)


@typing.overload
def decode(data: Bytes, expect: type[M]) -> M: ...
@typing.overload
def decode(data: Bytes, expect: None = None) -> Message: ...


def decode(data: Bytes, expect: type[Message] | None = None) -> Message:
    """Parse and validate one message; ``expect`` restricts the accepted kind."""
    return codec.decode(data, expect, KINDS)
