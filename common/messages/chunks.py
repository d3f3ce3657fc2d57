"""Chunks: batches from proxies to the writers that own their shards, have-queries, and
the first frame of a chunk stream."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

from common.messages.base import (
    Fields,
    Message,
    MessageError,
    added_fields,
    check_ids,
)


@dataclass(frozen=True, slots=True)
class ChunkBatch(Message):
    """Chunks of one shard for the writer that owns it."""

    KIND: ClassVar[str] = "chunk-batch"
    # Version 2: ``job_id`` (of the task's job, for the writer's log lines).
    VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(f, "chunk-batch v1", job_id=""),
    }
    batch_id: str
    task_id: str
    reply_to: str
    # (id, raw_len, compressed, payload); a sender may pass the bytearray a chunk was read
    # into as payload (no copy), a decoded batch always holds bytes.
    chunks: list[tuple[bytes, int, bool, bytes | bytearray]]
    job_id: str = ""  # "" from a version-1 sender

    def __post_init__(self) -> None:
        check_ids([c[0] for c in self.chunks], "chunks")


@dataclass(frozen=True, slots=True)
class ChunkAck(Message):
    """Sent by a writer once every chunk of a batch is durable (or already known)."""

    KIND: ClassVar[str] = "chunk-ack"
    # Version 2: ``cause`` (common/causes.py), e.g. "repository_full" when refused.
    VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(f, "chunk-ack v1", cause=""),
    }
    batch_id: str
    shard: int
    ok: bool
    error: str
    stored: int
    known: int
    cause: str = ""


@dataclass(frozen=True, slots=True)
class HaveQuery(Message):
    KIND: ClassVar[str] = "have-query"
    query_id: str
    reply_to: str
    ids: list[bytes]

    def __post_init__(self) -> None:
        check_ids(self.ids, "ids")


@dataclass(frozen=True, slots=True)
class HaveReply(Message):
    """Which of the queried ids the writer holds, and where it takes chunk batches
    directly (its chunk stream, see repository_writer/chunk_stream_server.py): ``data_addr`` is
    "HOST:PORT" or "" for broker only; ``data_token`` must open every stream to it;
    ``data_pin`` is the hex SHA-256 of the certificate the stream shows over TLS, or ""
    for plain TCP (common/chunk_stream/tls_socket.py)."""

    KIND: ClassVar[str] = "have-reply"
    VERSION: ClassVar[int] = 3
    # Version 1 (writers before chunk streams) had no stream: a proxy uses the broker.
    # Version 2 (before TLS on the streams) offered plain TCP only.
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(f, "have-reply v1", data_addr="", data_token="", data_pin=""),
        2: lambda f: added_fields(f, "have-reply v2", data_pin=""),
    }
    query_id: str
    present: list[bool]
    data_addr: str = ""
    data_token: str = ""
    data_pin: str = ""

    def __post_init__(self) -> None:
        pin = self.data_pin
        if pin and (len(pin) != 64 or pin.strip("0123456789abcdef")):
            raise MessageError("have-reply: data_pin must be 64 lowercase hex digits or empty")


@dataclass(frozen=True, slots=True)
class StreamHello(Message):
    """First frame of a chunk stream: the token the writer handed out in its have-replies."""

    KIND: ClassVar[str] = "stream-hello"
    token: str
    client: str
