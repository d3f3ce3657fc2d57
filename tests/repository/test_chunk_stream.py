"""Writers' chunk streams on the real RabbitMQ, real sockets and a real repository:
the address and token come in have-replies, batches sent on the stream are stored and
acked exactly as through the broker, and bad peers are refused without harm."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from common.amqp import BrokerParams, Publisher, ReplyQueue
from common.chunk import compress
from common.chunk_stream.frames import read_message, send_frame, send_message
from common.chunk_stream.tls_socket import TlsSocket, client_context
from common.messages import (
    ChunkAck,
    ChunkBatch,
    CommitReply,
    HaveQuery,
    HaveReply,
    Message,
    StreamHello,
    TaskEntries,
)
from common.packed_entries import entries_digest, pack_entries
from common.sharding import shard_of
from common.tls_pin import PinMismatchError
from proxy_worker import metrics as proxy_metrics
from proxy_worker.chunk_stream_client import Endpoint, StreamLost, WriterStreams, split_address
from proxy_worker.writer_client import PendingBatch, WriterLink
from repository.repository import Repository
from repository.verify import verify
from repository_writer import metrics as writer_metrics
from repository_writer.chunk_stream_server import parse_listen
from repository_writer.service import WriterService
from tests.repository.test_writer_service import Client, Entry

pytestmark = pytest.mark.integration
CS = 256 * 1024
N = 4


@pytest.fixture(params=[False, True], ids=["tcp", "tls"])
def writer(
    broker: BrokerParams, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Repository, WriterService]]:
    """A writer with a chunk stream, in plain TCP and in TLS."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    service = WriterService(
        Repository.open(repo.path),
        broker,
        n_shards=N,
        shards="0-1",
        data_listen="127.0.0.1:0",
        data_tls=request.param,
    )
    service.start()
    yield repo, service
    service.close()


@pytest.fixture
def client(broker: BrokerParams) -> Iterator[Client]:
    c = Client(broker)
    yield c
    c.close()


def _entries(repo: Repository, shard: int, n: int) -> list[Entry]:
    out: list[Entry] = []
    while len(out) < n:
        d = os.urandom(CS)
        cid = repo.chunk_id(d)
        if shard_of(cid, N) == shard:
            payload, comp = compress(d, 1)
            out.append((cid, len(d), comp, payload))
    return out


def _send(streams: WriterStreams, endpoint: Endpoint, chunks: list[Entry]) -> Future[Message]:
    fut: Future[Message] = Future()
    assert streams.send(endpoint, ChunkBatch(uuid.uuid4().hex, "t", "", chunks), fut)
    return fut


def _stream_of(service: WriterService) -> Endpoint:
    """The address, token and pin the writer hands out in its have-replies."""
    cs = service.chunk_stream
    assert cs is not None
    return Endpoint(cs.address, cs.token, cs.pin)


def _open(endpoint: Endpoint) -> socket.socket | TlsSocket:
    """A connection to the stream as a proxy makes it, before its hello."""
    raw = socket.create_connection(split_address(endpoint.addr), timeout=10)
    if not endpoint.pin:
        return raw
    return TlsSocket.client(raw, client_context(), endpoint.pin, 10)


def _closed_by_writer(s: socket.socket | TlsSocket) -> bool:
    """The writer closed without answering (a reset when our bytes were left unread)."""
    try:
        return s.recv_into(bytearray(1)) == 0
    except ConnectionResetError:
        return True


def test_have_reply_offers_the_stream_and_batches_on_it_are_durable(
    writer: tuple[Repository, WriterService], client: Client
) -> None:
    repo, service = writer
    chunks = _entries(repo, 1, 3)
    rep = client.have(1, [c[0] for c in chunks])
    assert rep.present == [False] * 3
    assert service.chunk_stream is not None
    offered = Endpoint(rep.data_addr, rep.data_token, rep.data_pin)
    assert offered == _stream_of(service)
    assert rep.data_addr.startswith("127.0.0.1:") and len(rep.data_token) == 32
    assert len(rep.data_pin) == (64 if service.chunk_stream.pin else 0)
    streams = WriterStreams("test", connect_timeout=5)
    try:
        futs = [_send(streams, offered, [c]) for c in chunks]
        acks = [f.result(timeout=30) for f in futs]  # pipelined on one connection
        assert all(isinstance(a, ChunkAck) and a.ok and a.stored == 1 for a in acks)
        assert acks[0].shard == 1
        again = _send(streams, offered, chunks).result(timeout=30)
        assert isinstance(again, ChunkAck) and (again.stored, again.known) == (0, 3)
        fut: Future[Message] = Future()
        query = HaveQuery("q-1", "", [c[0] for c in chunks] + [os.urandom(32)])
        assert streams.send(offered, query, fut)
        have = fut.result(timeout=30)
        assert isinstance(have, HaveReply) and have.query_id == "q-1"
        assert have.present == [True, True, True, False]
        assert have.data_addr == rep.data_addr
    finally:
        streams.close()
    assert client.have(1, [c[0] for c in chunks]).present == [True] * 3
    for cid, _n, _c, _p in chunks:
        assert repo.chunks.exists(cid)
    assert verify(repo).ok


def test_refusals_on_the_stream_are_acks_not_crashes(
    writer: tuple[Repository, WriterService],
) -> None:
    repo, service = writer
    endpoint = _stream_of(service)
    good = _entries(repo, 0, 1)[0]
    forged = (good[0], good[1], good[2], compress(os.urandom(CS), 1)[0])
    stray = _entries(repo, 2, 1)  # shard 2 is not this writer's
    streams = WriterStreams("test", connect_timeout=5)
    try:
        bad = _send(streams, endpoint, [forged]).result(timeout=30)
        assert isinstance(bad, ChunkAck) and not bad.ok and "hash" in bad.error
        other = _send(streams, endpoint, stray).result(timeout=30)
        assert isinstance(other, ChunkAck) and not other.ok and "does not own" in other.error
        ok = _send(streams, endpoint, [good]).result(timeout=30)  # same stream still works
        assert isinstance(ok, ChunkAck) and ok.ok
    finally:
        streams.close()
    assert not repo.chunks.exists(stray[0][0])


def _errors(kind: str) -> float:
    return writer_metrics.WRITER_STREAM_ERRORS.labels(kind=kind)._value.get()


def test_wrong_token_and_garbage_are_dropped_and_store_nothing(
    writer: tuple[Repository, WriterService],
) -> None:
    repo, service = writer
    endpoint = _stream_of(service)
    token = endpoint.token
    chunk = _entries(repo, 0, 1)[0]
    batch = ChunkBatch("b1", "t", "", [chunk])

    before = _errors("token")
    with _open(endpoint) as s:
        send_message(s, StreamHello(token="0" * 32, client="intruder"))
        # the writer may have closed already after the bad hello: then this send fails
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            send_message(s, batch)
        assert _closed_by_writer(s)  # without an ack
    assert _errors("token") == before + 1

    before = _errors("MessageError")
    with _open(endpoint) as s:
        send_message(s, StreamHello(token=token, client="buggy"))
        send_frame(s, [b"\xc1 not msgpack"])
        assert _closed_by_writer(s)
    with _open(endpoint) as s:
        send_message(s, StreamHello(token=token, client="huge"))
        s.sendall(struct.pack(">I", 1 << 31))
        assert _closed_by_writer(s)
    assert _errors("MessageError") == before + 2

    before = _errors("StreamClosed")
    with _open(endpoint) as s:  # killed mid-frame: the half batch is not stored
        send_message(s, StreamHello(token=token, client="killed"))
        body = bytearray(struct.pack(">I", 1 << 20)) + os.urandom(1000)
        s.sendall(body)
    deadline = time.monotonic() + 10
    while _errors("StreamClosed") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _errors("StreamClosed") == before + 1
    assert not repo.chunks.exists(chunk[0])

    with _open(endpoint) as s:  # and a well-behaved stream is served as before
        send_message(s, StreamHello(token=token, client="good"))
        send_message(s, batch)
        ack = read_message(s, ChunkAck)
        assert ack is not None and ack.ok and ack.stored == 1


def test_a_stream_that_breaks_fails_its_batches_as_lost_and_rests(
    writer: tuple[Repository, WriterService],
) -> None:
    repo, service = writer
    endpoint = _stream_of(service)
    streams = WriterStreams("test", connect_timeout=5, retry_after=30)
    try:
        assert _send(streams, endpoint, _entries(repo, 0, 1)).result(timeout=30)
        service.close()  # the writer goes away: its stream ends
        fut: Future[Message] = Future()
        deadline = time.monotonic() + 10
        sent = True
        while sent and time.monotonic() < deadline:  # until the stream is seen gone
            fut = Future()
            sent = streams.send(endpoint, ChunkBatch("b", "t", "", []), fut)
            time.sleep(0.05)
        assert not sent  # the caller falls back to the broker
        if fut.done():
            with pytest.raises(StreamLost):
                fut.result()
        # resting: no new connection attempt within retry_after
        assert not streams.send(endpoint, ChunkBatch("c", "t", "", []), Future())
    finally:
        streams.close()


def test_unreachable_stream_is_refused_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        streams = WriterStreams("test", connect_timeout=2)
        assert not streams.send(Endpoint(addr, "t"), ChunkBatch("b", "t", "", []), Future())
        streams.close()


@pytest.mark.parametrize("text", ["7000", "host:", "host:70000", "h:x1"])
def test_data_listen_is_checked(text: str) -> None:
    with pytest.raises(ValueError, match="data_listen"):
        parse_listen(text)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen(":7071") == ("0.0.0.0", 7071)


def _sent(path: str) -> float:
    return proxy_metrics.PROXY_BATCHES_SENT.labels(path=path)._value.get()


def _asked(path: str) -> float:
    return proxy_metrics.PROXY_HAVE_QUERIES.labels(path=path)._value.get()


def test_writer_link_uses_the_stream_and_falls_back_to_the_broker(
    writer: tuple[Repository, WriterService], broker: BrokerParams
) -> None:
    repo, service = writer
    assert service.chunk_stream is not None
    pub = Publisher(broker, name="test-link")
    replies = ReplyQueue(broker, name="test-link-replies")
    streams = WriterStreams("test", connect_timeout=5, retry_after=60)
    link = WriterLink(pub, replies, persistent_chunks=False, timeout=30, streams=streams)
    try:
        first, second, third = (_entries(repo, 0, 1) for _ in range(3))
        asked = _asked("broker"), _asked("direct")
        assert link.have({0: [first[0][0]]}) == {0: [False]}  # learns the stream
        assert link.endpoints[0] == _stream_of(service)
        assert link.have({0: [first[0][0]]}) == {0: [False]}  # asked on it
        assert (_asked("broker"), _asked("direct")) == (asked[0] + 1, asked[1] + 1)
        direct, via_broker = _sent("direct"), _sent("broker")
        b = link.send(PendingBatch(0, "task", first, len(first[0][3])))
        assert _wait_ack(link, b).stored == 1
        assert (_sent("direct"), _sent("broker")) == (direct + 1, via_broker)
        # the stream goes away (the writer's consumers stay): the next batch and the
        # re-send of one in flight go through the shard queue
        pending = link.send(PendingBatch(0, "task", second, len(second[0][3])))
        service.chunk_stream.stop()
        assert _wait_ack(link, pending).ok
        b = link.send(PendingBatch(0, "task", third, len(third[0][3])))
        assert _wait_ack(link, b).stored == 1
        assert _sent("broker") >= via_broker + 1
        assert link.have({0: [third[0][0]]}) == {0: [True]}  # through the broker again
        assert _asked("broker") == asked[0] + 2
    finally:
        streams.close()
        replies.close()
        pub.close()
    for chunk in (first, second, third):
        assert repo.chunks.exists(chunk[0][0])


def _staged(repo: Repository, task: str, digest: bytes, count: int) -> list[tuple[int, bytes]]:
    return list(repo.staging.load_task("job", "vm", 2000, task, digest, count))


def test_task_entries_go_on_the_stream_and_through_the_broker_once_it_is_gone(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """A writer that takes no commits-queue messages stages a task's entries sent on its
    stream (no broker round trip); once the stream is gone, a writer on the commits queue
    stages them."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    streaming = WriterService(
        Repository.open(repo.path),
        broker,
        n_shards=N,
        shards="0-3",
        data_listen="127.0.0.1:0",
        consume_commits=False,
        name="streaming",
    ).start()
    pub = Publisher(broker, name="test-link")
    replies = ReplyQueue(broker, name="test-link-replies")
    streams = WriterStreams("test", connect_timeout=5, retry_after=60)
    link = WriterLink(pub, replies, persistent_chunks=False, timeout=10, streams=streams)
    committing: WriterService | None = None
    try:
        chunk = _entries(repo, 0, 1)[0]
        assert link.have({0: [chunk[0]]}) == {0: [False]}  # learns the stream
        entries = [(0, chunk[0]), (5, chunk[0])]
        digest, count = link.stage_entries("t1", "job", "vm", 2000, entries)
        assert count == 2 and _staged(repo, "t1", digest, count) == entries
        # the stream goes away: the entries of the next task go through the commits queue
        assert streaming.chunk_stream is not None
        streaming.chunk_stream.stop()
        committing = WriterService(
            Repository.open(repo.path), broker, n_shards=N, shards="0-3", name="committing"
        ).start()
        digest, count = link.stage_entries("t2", "job", "vm", 2000, entries[:1])
        assert _staged(repo, "t2", digest, count) == entries[:1]
    finally:
        streams.close()
        replies.close()
        pub.close()
        streaming.close()
        if committing is not None:
            committing.close()


def test_a_refused_task_entries_on_the_stream_is_an_answer(
    writer: tuple[Repository, WriterService], broker: BrokerParams
) -> None:
    """Entries the writer refuses (a chunk index beyond the largest disk it accepts) come
    back as a refusal on the stream, and the stream stays usable."""
    repo, service = writer
    endpoint = _stream_of(service)
    streams = WriterStreams("test", connect_timeout=5)
    try:
        beyond = service.limits.max_chunks
        fut: Future[Message] = Future()
        msg = TaskEntries("r1", "", "job", "vm", 2000, "t", pack_entries([(beyond, b"\1" * 32)]))
        assert streams.send(endpoint, msg, fut)
        rep = fut.result(timeout=30)
        assert isinstance(rep, CommitReply) and not rep.ok and rep.request_id == "r1"
        assert "beyond the largest disk" in rep.error
        fut = Future()
        msg = TaskEntries("r2", "", "job", "vm", 2000, "t", pack_entries([(1, b"\1" * 32)]))
        assert streams.send(endpoint, msg, fut)
        assert fut.result(timeout=30) == CommitReply("r2", True, "", "")
    finally:
        streams.close()
    assert [
        i for i, _ in repo.staging.load_task("job", "vm", 2000, "t", entries_digest(msg.entries), 1)
    ] == [1]


def _wait_ack(link: WriterLink, batch: PendingBatch) -> ChunkAck:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ack = link.check(batch, 0.5)
        if ack is not None:
            return ack
    raise AssertionError("no ack within 60 s")


def test_proxies_spread_over_writers_sharing_a_shard(broker: BrokerParams, tmp_path: Path) -> None:
    """Scaled out, several writers consume one shard queue: a proxy's endpoint for the
    shard is refreshed through the broker (every ``stream_refresh`` s), which hands each
    refresh to one of them, so the streams' load spreads instead of sticking to one."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    services = [
        WriterService(
            Repository.open(repo.path),
            broker,
            n_shards=N,
            shards="0-1",
            name=f"w{i}",
            consume_commits=False,
            data_listen="127.0.0.1:0",
        ).start()
        for i in range(2)
    ]
    pub = Publisher(broker, name="test-spread")
    replies = ReplyQueue(broker, name="test-spread-replies")
    streams = WriterStreams("test", connect_timeout=5)
    link = WriterLink(
        pub, replies, persistent_chunks=False, timeout=30, streams=streams, stream_refresh=0.0
    )
    try:
        seen = set()
        for _ in range(8):
            link.have({0: [os.urandom(32)]})
            seen.add(link.endpoints[0].addr)
        assert seen == {s.chunk_stream.address for s in services if s.chunk_stream}
    finally:
        streams.close()
        replies.close()
        pub.close()
        for s in services:
            s.close()


def test_a_handler_fault_drops_the_stream_so_requests_go_again_at_once(
    writer: tuple[Repository, WriterService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the handler does not turn into a refusal (a bug, an unexpected OSError
    from below) must not leave the proxy waiting writer_timeout for an answer."""
    repo, service = writer
    endpoint = _stream_of(service)

    def broken(items: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(service.repo, "store_chunks", broken)
    before = _errors("handler")
    streams = WriterStreams("test", connect_timeout=5)
    try:
        fut = _send(streams, endpoint, _entries(repo, 0, 1))
        with pytest.raises(StreamLost):
            fut.result(timeout=10)
    finally:
        streams.close()
    assert _errors("handler") == before + 1


def test_tls_stream_refuses_a_wrong_pin_and_plain_peers(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """A proxy shown another certificate than the pinned one does not send (its batches
    go through the broker); a writer speaking TLS drops a plain-TCP peer, and the other
    way round."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    tls, plain = (
        WriterService(
            Repository.open(repo.path),
            broker,
            n_shards=N,
            shards="0-1",
            name=name,
            consume_commits=False,
            data_listen="127.0.0.1:0",
            data_tls=on,
        ).start()
        for name, on in (("w-tls", True), ("w-plain", False))
    )
    try:
        good = _stream_of(tls)
        assert len(good.pin) == 64 and _stream_of(plain).pin == ""
        wrong = Endpoint(good.addr, good.token, "0" * 64)
        with pytest.raises(PinMismatchError, match="does not match"):
            _open(wrong)
        before = proxy_metrics.PROXY_CHUNK_STREAM_ERRORS.labels(kind="tls")._value.get()
        streams = WriterStreams("test", connect_timeout=5)
        try:
            assert not streams.send(wrong, ChunkBatch("b", "t", "", []), Future())
            after = proxy_metrics.PROXY_CHUNK_STREAM_ERRORS.labels(kind="tls")._value.get()
            assert after == before + 1
        finally:
            streams.close()

        refused = _errors("tls")
        with _open(Endpoint(good.addr, good.token)) as s:  # plain TCP to the TLS stream
            send_message(s, StreamHello(token=good.token, client="plain"))
            assert _closed_by_writer(s)
        deadline = time.monotonic() + 10
        while _errors("tls") == refused and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _errors("tls") == refused + 1

        p = _stream_of(plain)
        with pytest.raises((OSError, ConnectionError)):  # TLS to the plain stream
            _open(Endpoint(p.addr, p.token, good.pin))
        # both still serve the peers they expect
        chunk = _entries(repo, 0, 1)
        streams = WriterStreams("test", connect_timeout=5)
        try:
            for e in (good, p):
                ack = _send(streams, e, chunk).result(timeout=30)
                assert isinstance(ack, ChunkAck) and ack.ok
        finally:
            streams.close()
    finally:
        tls.close()
        plain.close()
