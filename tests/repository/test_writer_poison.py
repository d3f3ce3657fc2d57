"""Requests whose answer can never be sent (an over-long reply_to or id) reach a real
writer's shard and commit queues: each is dead-lettered at once with the reason, and the
writer goes on answering normal requests. Real RabbitMQ (own vhost), real repository."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import amqp
from common.amqp import EXCHANGE_SHARDS, HEADER_ERROR, QUEUE_COMMITS, QUEUE_DLQ, BrokerParams
from common.messages import (
    ChunkBatch,
    CommitRequest,
    DiskCommit,
    HaveQuery,
    JobMarker,
    Message,
    decode,
)
from common.sharding import shard_routing_key
from repository.repository import Repository
from repository_writer.service import WriterService
from tests.repository.test_writer_service import CS, Client, N, _chunks, _request

pytestmark = pytest.mark.integration
LONG = "r" * 256  # one byte over AMQP's short string


@pytest.fixture
def writer(broker: BrokerParams, tmp_path: Path) -> Iterator[tuple[Repository, Client]]:
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    service = WriterService(Repository.open(repo.path), broker, n_shards=N, name="w1").start()
    client = Client(broker)
    yield repo, client
    client.close()
    service.close()


def _dead(params: BrokerParams, n: int, timeout: float = 30) -> list[tuple[Message, str]]:
    """The first ``n`` messages of the DLQ, with their reasons."""
    out: list[tuple[Message, str]] = []
    conn = amqp.open_blocking(params, "test-dlq")
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            m, props, body = ch.basic_get(QUEUE_DLQ, auto_ack=True)
            if m is None:
                time.sleep(0.1)
                continue
            out.append((decode(body), props.headers[HEADER_ERROR]))
    finally:
        conn.close()
    return out


def test_unanswerable_requests_are_dead_lettered_and_the_writer_keeps_serving(
    writer: tuple[Repository, Client], broker: BrokerParams
) -> None:
    repo, client = writer
    ((shard, chunks),) = _chunks(repo, [os.urandom(CS)]).items()
    ids = [c[0] for c in chunks]
    key = shard_routing_key(shard)
    poison = [
        (EXCHANGE_SHARDS, key, HaveQuery("q1", LONG, ids)),
        (EXCHANGE_SHARDS, key, HaveQuery("q" * 300, client.replies.name, ids)),
        (EXCHANGE_SHARDS, key, ChunkBatch("b1", "t1", LONG, chunks)),
        ("", QUEUE_COMMITS, CommitRequest(request_id="c1", reply_to=LONG, **_request([]))),
        ("", QUEUE_COMMITS, JobMarker("m" * 256, client.replies.name, "job-1", "begin")),
    ]
    for exchange, rk, msg in poison:
        client.pub.publish_sync(exchange, rk, msg, persistent=False)
    dead = _dead(broker, len(poison))
    assert sorted(type(m).__name__ for m, _ in dead) == sorted(
        type(m).__name__ for _, _, m in poison
    )
    for _msg, why in dead:
        assert "of 256 bytes" in why or "of 300 bytes" in why, why
    # nothing was stored or committed for them, and the writer answers as before
    assert repo.has_chunks(ids) == [False]
    assert client.have(shard, ids).present == [False]
    ack = client.batch(shard, chunks)
    assert ack.ok and ack.stored == 1
    assert client.have(shard, ids).present == [True]
    disk = DiskCommit(
        key=2000, capacity=CS, change_id="", base_point_id="", entries=[(0, ids[0])], info={}
    )
    rep = client.commit(_request([disk]))
    assert rep.ok, rep.error
    assert [p.id for p in repo.points()] == [rep.point_id]
