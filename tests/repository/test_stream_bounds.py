"""Attacks on a real writer's chunk stream (a ``vmbackup writer`` subprocess on the real
broker, real sockets): slow clients that declare huge frames or dribble their hello,
hundreds of idle connections, idle authenticated streams. The writer's memory and
threads stay bounded (read from /proc) and real proxy code keeps getting its batches
stored meanwhile."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.amqp import BrokerParams, Publisher, ReplyQueue
from common.chunk import compress
from common.messages import ChunkAck, ChunkBatch, Message
from common.sharding import shard_of
from proxy_worker import metrics
from proxy_worker.chunk_stream_client import Endpoint, WriterStreams, split_address
from proxy_worker.writer_client import PendingBatch, WriterLink
from repository.repository import Repository
from tests.repository.test_writer_service import Client, Entry

pytestmark = pytest.mark.integration
CS = 256 * 1024
N = 4
MiB = 1 << 20


@dataclass
class Writer:
    proc: subprocess.Popen[bytes]
    repo: Repository
    endpoint: Endpoint
    metrics_port: int

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def rss(self) -> int:
        return self.status("VmRSS") * 1024

    def threads(self) -> int:
        return self.status("Threads")

    def metric(self, name: str) -> float:
        """A sample of the writer's own /metrics (0 when it has none yet)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _writer(broker: BrokerParams, tmp_path: Path, **writer_env: str) -> Iterator[Writer]:
    """``vmbackup writer`` with a chunk stream; its endpoint learnt as a proxy learns it."""
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)
    port = _free_port()
    env = {
        **os.environ,
        "VMBACKUP_BROKER__URL": broker.url,
        "VMBACKUP_BROKER__N_SHARDS": str(N),
        "VMBACKUP_REPOSITORY__PATH": str(repo.path),
        "VMBACKUP_METRICS__PORT": str(port),
        "VMBACKUP_WRITER__DATA_LISTEN": "127.0.0.1:0",
        "VMBACKUP_WRITER__DATA_ADVERTISE": "127.0.0.1",
        **{f"VMBACKUP_WRITER__{k.upper()}": v for k, v in writer_env.items()},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "writer"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(broker)
    try:
        deadline = time.monotonic() + 60
        while True:  # the queues exist once the writer declared them
            assert proc.poll() is None, "the writer exited"
            try:
                rep = client.have(0, [os.urandom(32)])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert rep.data_addr and rep.data_token
        yield Writer(proc, repo, Endpoint(rep.data_addr, rep.data_token, rep.data_pin), port)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=60)


def _entries(repo: Repository, shard: int) -> list[Entry]:
    while True:
        d = os.urandom(CS)
        cid = repo.chunk_id(d)
        if shard_of(cid, N) == shard:
            payload, comp = compress(d, 1)
            return [(cid, len(d), comp, payload)]


def _connect(w: Writer) -> socket.socket:
    return socket.create_connection(split_address(w.endpoint.addr), timeout=30)


def _closed(s: socket.socket) -> bool:
    """Whether the writer closed the connection (without waiting)."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    finally:
        s.setblocking(True)


def _sent(path: str) -> float:
    return metrics.PROXY_BATCHES_SENT.labels(path=path)._value.get()


class Proxy:
    """The real proxy client code: WriterLink over the broker and the chunk stream."""

    def __init__(self, broker: BrokerParams) -> None:
        self.pub = Publisher(broker, name="test-proxy")
        self.replies = ReplyQueue(broker, name="test-proxy-replies")
        self.streams = WriterStreams("test-proxy", connect_timeout=5, retry_after=1.0)
        self.link = WriterLink(
            self.pub, self.replies, persistent_chunks=False, timeout=30, streams=self.streams
        )

    def store(self, w: Writer) -> ChunkAck:
        """One batch, sent as a task would; its ack (stream or broker, whichever works)."""
        chunks = _entries(w.repo, 0)
        self.link.have({0: [chunks[0][0]]})  # learns (or refreshes) the stream
        batch = self.link.send(PendingBatch(0, "task", chunks, len(chunks[0][3])))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ack = self.link.check(batch, 0.5)
            if ack is not None:
                assert ack.ok and w.repo.chunks.exists(chunks[0][0]), ack
                return ack
        raise AssertionError("no ack within 60 s")

    def close(self) -> None:
        self.streams.close()
        self.replies.close()
        self.pub.close()


def test_slow_clients_neither_grow_the_writer_nor_hold_it(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """8 clients declare a 64 MiB frame before any hello and send its bytes slowly, 8 more
    dribble a small hello a byte at a time (each byte well within any per-read time-out):
    the first are closed at once with nothing allocated, the others by the one hello
    deadline (10 s by default); a proxy's batches go straight through the stream all along."""
    proxy = Proxy(broker)
    try:
        with _writer(broker, tmp_path) as w:
            proxy.store(w)  # warm: the writer's own first-batch allocations are counted
            base = w.rss()
            huge = [_connect(w) for _ in range(8)]
            for s in huge:
                s.sendall(struct.pack(">I", 64 * MiB))
            dribblers = [_connect(w) for _ in range(8)]
            for s in dribblers:
                s.sendall(struct.pack(">I", 200))
            t0 = time.monotonic()
            peak = base
            closed_at: dict[int, float] = {}
            direct = _sent("direct")
            stored = 0
            while time.monotonic() - t0 < 40 and len(closed_at) < 16:
                for i, s in enumerate(huge + dribblers):
                    if i in closed_at:
                        continue
                    if _closed(s):
                        closed_at[i] = time.monotonic() - t0
                        continue
                    with contextlib.suppress(OSError):
                        s.sendall(b"\x00" * (64 << 10 if i < 8 else 1))
                peak = max(peak, w.rss())
                if stored < 3:
                    proxy.store(w)
                    stored += 1
                time.sleep(0.5)
            peak = max(peak, w.rss())
            for s in huge + dribblers:
                s.close()
            # well under one 64 MiB frame per client (the old writer grew by 8 x 64 MiB)
            assert peak - base < 48 * MiB, f"writer RSS grew by {(peak - base) / MiB:.0f} MiB"
            assert sorted(closed_at) == list(range(16)), "connections left open"
            assert all(closed_at[i] < 8 for i in range(8)), (
                closed_at
            )  # at once, not by the deadline
            # the dribblers by the hello deadline: one for the whole hello, not per read
            assert all(8 < closed_at[i] < 30 for i in range(8, 16)), closed_at
            assert (
                w.metric(
                    'vmbackup_writer_stream_connections_refused_total{reason="hello_deadline"}'
                )
                == 8
            )
            assert _sent("direct") >= direct + 3  # the proxy was served on the stream
            proxy.store(w)
    finally:
        proxy.close()


def test_hundreds_of_idle_connections_are_capped_and_counted(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """300 connections that never say hello: at most stream_max_connections (64) are
    held, with a thread each; the rest are closed at once and counted. A proxy's batches
    are stored meanwhile (through the broker while the stream is full), and on the
    stream again once the hello deadline has freed it."""
    proxy = Proxy(broker)
    try:
        with _writer(broker, tmp_path) as w:
            proxy.store(w)
            threads_before = w.threads()
            idle = [_connect(w) for _ in range(300)]
            refused_metric = (
                'vmbackup_writer_stream_connections_refused_total{reason="max_connections"}'
            )
            t0 = time.monotonic()  # until the acceptor has seen all 300 (before the deadline)
            while w.metric(refused_metric) < 300 - 64 and time.monotonic() - t0 < 8:
                time.sleep(0.2)
            threads = w.threads()
            closed = sum(_closed(s) for s in idle)
            refused = w.metric(refused_metric)
            assert threads <= threads_before + 64 + 4, f"{threads} threads"
            assert closed >= 300 - 64 and refused == closed, (closed, refused)
            assert w.metric("vmbackup_writer_chunk_streams") <= 64
            proxy.store(w)  # a normal batch is stored while the stream is full
            deadline = time.monotonic() + 20
            while sum(_closed(s) for s in idle) < 300 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert sum(_closed(s) for s in idle) == 300  # the hello deadline ended the rest
            for s in idle:
                s.close()
            time.sleep(1.5)  # the proxy's rest after the refused stream (retry_after)
            direct = _sent("direct")
            proxy.store(w)
            assert _sent("direct") == direct + 1  # and the stream serves it again
            assert w.threads() <= threads_before + 4
    finally:
        proxy.close()


def test_an_idle_stream_is_closed_and_the_proxy_reopens_it(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """An authenticated stream that sends nothing for stream_idle_timeout is closed; the
    proxy's next batch opens a new stream at once instead of resting on the broker."""
    proxy = Proxy(broker)
    try:
        with _writer(broker, tmp_path, stream_idle_timeout="1") as w:
            direct, via_broker = _sent("direct"), _sent("broker")
            proxy.store(w)
            assert w.metric("vmbackup_writer_chunk_streams") == 1
            deadline = time.monotonic() + 15
            while w.metric("vmbackup_writer_chunk_streams") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert w.metric("vmbackup_writer_chunk_streams") == 0
            assert w.metric("vmbackup_writer_chunk_streams_idle_closed_total") == 1
            time.sleep(0.5)  # the proxy has read the end of its stream
            proxy.store(w)
            assert (_sent("direct"), _sent("broker")) == (direct + 2, via_broker)
            fut: Future[Message] = Future()
            assert proxy.streams.send(
                w.endpoint, ChunkBatch("b", "t", "", _entries(w.repo, 0)), fut
            )
            assert isinstance(fut.result(timeout=30), ChunkAck)
    finally:
        proxy.close()


def test_a_dribbled_tls_handshake_is_ended_by_the_hello_deadline(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """Over TLS the one deadline covers the handshake too: clients that announce a 16 KiB
    handshake record and send it a byte every half second (each read well within its
    time-out) are closed by it, while a proxy's batches go over TLS as usual."""
    proxy = Proxy(broker)
    try:
        with _writer(broker, tmp_path, data_tls="on") as w:
            assert len(w.endpoint.pin) == 64
            proxy.store(w)
            slow = [_connect(w) for _ in range(4)]
            for s in slow:
                s.sendall(b"\x16\x03\x01\x40\x00")  # TLS handshake record of 16384 bytes
            t0 = time.monotonic()
            closed_at: dict[int, float] = {}
            direct = _sent("direct")
            while time.monotonic() - t0 < 40 and len(closed_at) < 4:
                for i, s in enumerate(slow):
                    if i not in closed_at and _closed(s):
                        closed_at[i] = time.monotonic() - t0
                    elif i not in closed_at:
                        with contextlib.suppress(OSError):
                            s.sendall(b"\x01")
                if _sent("direct") < direct + 2:
                    proxy.store(w)
                time.sleep(0.5)
            for s in slow:
                s.close()
            assert sorted(closed_at) == [0, 1, 2, 3], "handshakes left open"
            assert all(8 < t < 30 for t in closed_at.values()), closed_at
            assert (
                w.metric(
                    'vmbackup_writer_stream_connections_refused_total{reason="hello_deadline"}'
                )
                == 4
            )
            assert _sent("direct") >= direct + 2
    finally:
        proxy.close()
