"""The writer service on the real RabbitMQ (own vhost per test) and a real repository."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import amqp
from common.amqp import EXCHANGE_SHARDS, QUEUE_COMMITS, BrokerParams, Publisher, ReplyQueue
from common.chunk import compress
from common.messages import (
    ChunkAck,
    ChunkBatch,
    CommitReply,
    CommitRequest,
    DiskCommit,
    HaveQuery,
    HaveReply,
    Message,
)
from common.sharding import shard_of, shard_routing_key
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from repository_writer.service import WriterService

pytestmark = pytest.mark.integration
CS = 256 * 1024
N = 4
Entry = tuple[bytes, int, bool, bytes]  # a ChunkBatch entry: id, raw length, compressed, payload


class Client:
    """A proxy/coordinator stand-in: publishes requests, waits for replies."""

    def __init__(self, params: BrokerParams) -> None:
        self.pub = Publisher(params, name="test-client")
        self.replies = ReplyQueue(params, name="test-client-replies")

    def ask(
        self,
        exchange: str,
        key: str,
        build: Callable[[str], Message],
        corr: str,
        timeout: float = 30.0,
    ) -> Any:
        fut = self.replies.expect(corr)
        self.pub.publish_sync(exchange, key, build(self.replies.name), persistent=False)
        return fut.result(timeout=timeout)

    def have(self, shard: int, ids: list[bytes]) -> HaveReply:
        q = uuid.uuid4().hex
        return self.ask(
            EXCHANGE_SHARDS, shard_routing_key(shard), lambda rt: HaveQuery(q, rt, ids), q
        )

    def batch(self, shard: int, chunks: list[Entry]) -> ChunkAck:
        b = uuid.uuid4().hex
        return self.ask(
            EXCHANGE_SHARDS,
            shard_routing_key(shard),
            lambda rt: ChunkBatch(b, "task-1", rt, chunks),
            b,
        )

    def commit(self, req: dict[str, Any]) -> CommitReply:
        r = uuid.uuid4().hex
        return self.ask(
            "", QUEUE_COMMITS, lambda rt: CommitRequest(request_id=r, reply_to=rt, **req), r
        )

    def close(self) -> None:
        self.replies.close()
        self.pub.close()


Setup = tuple[Repository, list[WriterService], Client]


def _chunks(repo: Repository, datas: list[bytes]) -> dict[int, list[Entry]]:
    by_shard: dict[int, list[Entry]] = {}
    for d in datas:
        cid = repo.chunk_id(d)
        payload, comp = compress(d, 1)
        by_shard.setdefault(shard_of(cid, N), []).append((cid, len(d), comp, payload))
    return by_shard


def _request(disks: list[DiskCommit], job: str = "job-1") -> dict[str, Any]:
    return dict(
        job_id=job,
        vcenter="vc1",
        vm_uuid="4200-aa",
        vm_moref="vm-7",
        vm_name="db",
        vm_config=b"cfg",
        status="complete",
        snapshot_time=1700000000.5,
        disks=disks,
        failed_disks=[],
    )


@pytest.fixture
def setup(broker: BrokerParams, tmp_path: Path) -> Iterator[Setup]:
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    services = [
        WriterService(Repository.open(repo.path), broker, n_shards=N, shards="0-1", name="w1"),
        WriterService(
            Repository.open(repo.path),
            broker,
            n_shards=N,
            shards="2-3",
            name="w2",
            consume_commits=False,
        ),
    ]
    for s in services:
        s.start()
    client = Client(broker)
    yield repo, services, client
    client.close()
    for s in services:
        s.close()


def test_store_have_commit_restore(setup: Setup, tmp_path: Path) -> None:
    repo, _services, client = setup
    rnd = __import__("random").Random(3)
    datas = [rnd.randbytes(CS) for _ in range(6)] + [b"text " * (CS // 5) + b"x" * (CS % 5)]
    by_shard = _chunks(repo, datas)
    for shard, chunks in by_shard.items():
        ids = [c[0] for c in chunks]
        assert client.have(shard, ids).present == [False] * len(ids)
        ack = client.batch(shard, chunks)
        assert (ack.ok, ack.stored, ack.known, ack.shard) == (True, len(chunks), 0, shard)
        ack = client.batch(shard, chunks)  # a re-sent batch stores nothing new
        assert (ack.ok, ack.stored, ack.known) == (True, 0, len(chunks))
        assert client.have(shard, ids).present == [True] * len(ids)
    ids = [repo.chunk_id(d) for d in datas]
    disk = DiskCommit(
        key=2000,
        capacity=8 * CS,
        change_id="52 aa/1",
        base_point_id="",
        entries=[(i, cid) for i, cid in enumerate(ids)] + [(7, b"")],
        info={"label": "Hard disk 1"},
    )
    rep = client.commit(_request([disk]))
    assert rep.ok, rep.error
    again = client.commit(_request([disk]))  # redelivered / repeated commit: same point
    assert again.ok and again.point_id == rep.point_id
    point = repo.get_point(rep.point_id)
    assert point.disks[0].change_id == "52 aa/1" and point.vm_moref == "vm-7"
    restore_disk(repo, rep.point_id, 2000, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"".join(datas) + bytes(CS)
    # incremental on top: one chunk changed
    new = rnd.randbytes(CS)
    ((shard, chunks),) = _chunks(repo, [new]).items()
    assert client.batch(shard, chunks).ok
    inc = DiskCommit(
        key=2000,
        capacity=8 * CS,
        change_id="52 aa/2",
        base_point_id=rep.point_id,
        entries=[(3, repo.chunk_id(new))],
        info={},
    )
    rep2 = client.commit(_request([inc], job="job-2"))
    assert rep2.ok and rep2.point_id != rep.point_id
    restore_disk(repo, rep2.point_id, 2000, tmp_path / "out2")
    expect = b"".join(datas[:3]) + new + b"".join(datas[4:]) + bytes(CS)
    assert (tmp_path / "out2").read_bytes() == expect
    assert verify(repo).ok


def test_bad_input_is_refused_cleanly(setup: Setup, broker: BrokerParams) -> None:
    repo, _services, client = setup
    data = os.urandom(CS)
    ((shard, chunks),) = _chunks(repo, [data]).items()
    cid, raw_len, comp, _payload = chunks[0]
    forged = (cid, raw_len, comp, compress(os.urandom(CS), 1)[0])
    ack = client.batch(shard, [forged])
    assert not ack.ok and cid.hex() in ack.error and "hash" in ack.error
    wrong_shard = (shard + 2) % N  # owned by the other writer
    ack = client.batch(wrong_shard, chunks)
    assert not ack.ok and "does not own" in ack.error
    missing = os.urandom(32)
    disk = DiskCommit(
        key=1, capacity=CS, change_id="", base_point_id="", entries=[(0, missing)], info={}
    )
    rep = client.commit(_request([disk]))
    assert not rep.ok and missing.hex() in rep.error and repo.points() == []
    # an undecodable message goes to the DLQ, the writer keeps serving
    conn = amqp.open_blocking(broker, "test-raw")
    conn.channel().basic_publish(EXCHANGE_SHARDS, shard_routing_key(shard), b"\x00garbage")
    deadline = time.monotonic() + 20
    n = 0
    while time.monotonic() < deadline and n == 0:
        n = conn.channel().queue_declare(amqp.QUEUE_DLQ, passive=True).method.message_count
        time.sleep(0.1)
    conn.close()
    assert n == 1
    assert client.batch(shard, chunks).ok
    assert verify(repo).ok


def _writer_process(
    broker: BrokerParams, repo: Repository, **settings: str
) -> subprocess.Popen[bytes]:
    """`vmbackup writer` on ``repo`` as its own process; ``settings`` are VMBACKUP_* env."""
    env = {
        **os.environ,
        "VMBACKUP_BROKER__URL": broker.url,
        "VMBACKUP_BROKER__N_SHARDS": str(N),
        "VMBACKUP_REPOSITORY__PATH": str(repo.path),
        "VMBACKUP_METRICS__PORT": "0",
        "VMBACKUP_LOG__FORMAT": "json",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "writer"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _stopped(proc: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM, then its output once it exited 0."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    return out


def _once_declared(ask: Callable[[], Any]) -> Any:
    """``ask()`` once the writer process has declared its queues (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return ask()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_writer_cli_runs_and_stops_on_sigterm(broker: BrokerParams, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", chunk_size=CS)
    proc = _writer_process(broker, repo)
    client = Client(broker)
    try:
        ids = [os.urandom(32) for _ in range(3)]
        rep = _once_declared(lambda: client.have(shard_of(ids[0], N), ids))
        assert rep.present == [False, False, False]
    finally:
        client.close()
        out = _stopped(proc)
    assert b"writer_started" in out


def test_a_running_writer_seals_an_idle_open_pack(broker: BrokerParams, tmp_path: Path) -> None:
    """A writer process that stored a batch and then got nothing for pack_idle_seal
    seconds seals the pack while it keeps running (not only at its exit)."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS)  # 128 MiB packs: never full
    proc = _writer_process(broker, repo, VMBACKUP_WRITER__PACK_IDLE_SEAL="1")
    client = Client(broker)
    datas = [os.urandom(CS) for _ in range(6)]
    by_shard = _chunks(repo, datas)
    try:
        shard, chunks = next(iter(by_shard.items()))
        ack = _once_declared(lambda: client.batch(shard, chunks))
        assert ack.ok
        ids = [c[0] for c in chunks]
        deadline = time.monotonic() + 60  # a loaded machine: the seal comes within seconds
        while list((repo.path / "packs" / "open").glob("*.pack")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None  # still running: the idle seal did it, not the exit
        assert not list((repo.path / "packs" / "open").glob("*.pack"))
        sealed = list((repo.path / "packs").glob("??/*"))
        assert len(sealed) == 1
        reader = Repository.open(repo.path)
        for cid in ids:
            assert reader.chunks.locations(cid)[0].pack.hex() == sealed[0].name
        assert reader.read_chunk(ids[0]) in datas
    finally:
        client.close()
        out = _stopped(proc)
    assert b"packs_sealed_idle" in out
