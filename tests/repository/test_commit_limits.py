"""Commits beyond the writer's limits, through the real broker to a real writer service:
refused at once with a reply naming the field and the limit, acked (not retried nor
dead-lettered), nothing allocated, and the writer keeps serving."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import amqp
from common.amqp import QUEUE_COMMITS, BrokerParams
from common.messages import CommitPart, CommitReply, DiskCommit, part_key
from common.packed_entries import pack_entries
from repository.repository import Repository
from repository_writer.service import WriterService
from tests.repository.test_writer_service import Client, _request

pytestmark = pytest.mark.integration
CS = 256 * 1024
N = 4


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def writer(broker: BrokerParams, tmp_path: Path) -> Iterator[tuple[Repository, Client]]:
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    service = WriterService(
        Repository.open(repo.path), broker, n_shards=N, max_disk_capacity=1 << 40
    ).start()
    client = Client(broker)
    yield repo, client
    client.close()
    service.close()


def _disk(capacity: int, entries: list[tuple[int, bytes]], parts: int = 0) -> DiskCommit:
    return DiskCommit(
        key=2000,
        capacity=capacity,
        change_id="",
        base_point_id="",
        entries=entries,
        info={},
        parts=parts,
    )


def _dlq_depth(broker: BrokerParams) -> int:
    conn = amqp.open_blocking(broker, "test-dlq")
    try:
        return int(conn.channel().queue_declare(amqp.QUEUE_DLQ, passive=True).method.message_count)
    finally:
        conn.close()


def _part(client: Client, request_id: str, part: int, packed: bytes) -> CommitReply:
    pid = part_key(request_id, 2000, part)
    reply: CommitReply = client.ask(
        "",
        QUEUE_COMMITS,
        lambda rt: CommitPart(request_id, pid, rt, 2000, part, packed),
        pid,
        timeout=10,
    )
    return reply


def test_a_commit_beyond_the_limits_is_refused_at_once_and_not_retried(
    writer: tuple[Repository, Client], broker: BrokerParams
) -> None:
    repo, client = writer
    rss = _rss()
    t0 = time.monotonic()
    rep = client.commit(_request([_disk(2**62, [])]))
    assert not rep.ok
    assert "disk 2000: capacity 4611686018427387904" in rep.error
    assert "writer.max_disk_capacity" in rep.error and str(1 << 40) in rep.error
    assert time.monotonic() - t0 < 10  # well under a retry cycle (5 deliveries, backoff)

    zero = os.urandom(32)
    rep = client.commit(_request([_disk(CS, [(0, zero), (1, zero)])], job="j2"))
    assert not rep.ok and "2 entries, more than its 1 chunks" in rep.error

    # a staged part whose zero run would reach far beyond any disk (4 billion entries
    # read back at commit time) is refused when it is staged
    rid = uuid.uuid4().hex
    rep = _part(client, rid, 0, pack_entries([(2**40 + k, b"") for k in range(3)]))
    assert not rep.ok and "beyond the largest disk" in rep.error
    assert "writer.max_disk_capacity" in rep.error

    assert _rss() - rss < 64 << 20  # nothing the size of the declared maps was allocated
    time.sleep(1.0)
    assert _dlq_depth(broker) == 0  # acked with its refusal, not dead-lettered
    assert repo.points() == []
    # and the writer keeps serving a commit within the limits
    rep = client.commit(_request([_disk(3 * CS, [(0, b""), (2, b"")])], job="j3"))
    assert rep.ok and rep.point_id
    assert [p.id for p in repo.points()] == [rep.point_id]
