"""TlsSocket over real sockets: frames both ways at once, exact bytes, pins, bad peers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest

from common.chunk_stream.frames import FrameReader, send_frame, send_message
from common.chunk_stream.tls_socket import TlsSocket, client_context
from common.messages import ChunkAck, ChunkBatch, StreamHello
from common.tls_pin import PinMismatchError
from repository_writer.stream_identity import StreamIdentity, make_identity


@pytest.fixture(scope="module")
def identity() -> StreamIdentity:
    return make_identity("test")


def _pair(identity: StreamIdentity, pin: str | None = None) -> tuple[TlsSocket, TlsSocket]:
    a, b = socket.socketpair()
    server: list[TlsSocket] = []
    t = threading.Thread(target=lambda: server.append(TlsSocket.server(b, identity.context, 10)))
    t.start()
    client = TlsSocket.client(a, client_context(), pin or identity.fingerprint, 10)
    t.join(10)
    return client, server[0]


@pytest.fixture
def pair(identity: StreamIdentity) -> Iterator[tuple[TlsSocket, TlsSocket]]:
    c, s = _pair(identity)
    yield c, s
    c.close()
    s.close()


def _batch(i: int, size: int) -> ChunkBatch:
    payload = os.urandom(size)
    return ChunkBatch(f"b{i}", "t", "", [(hashlib.sha256(payload).digest(), size, False, payload)])


def test_frames_flow_both_ways_at_once_and_arrive_exact(
    pair: tuple[TlsSocket, TlsSocket],
) -> None:
    """The proxy's pattern: two threads send batches while another reads acks; the writer
    reads batches while its workers send acks. Every payload arrives as sent."""
    client, server = pair
    n_per_thread, sizes = 40, [1, 100, 70_000, 1 << 20, 3 << 20]
    got_batches: list[ChunkBatch] = []
    got_acks: list[ChunkAck] = []
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        return t

    def send_batches(tag: int) -> None:
        for i in range(n_per_thread):
            send_message(client, _batch(tag * 1000 + i, sizes[i % len(sizes)]))

    def serve() -> None:
        frames = FrameReader(server)
        for _ in range(2 * n_per_thread):
            msg = frames.read(ChunkBatch)
            assert isinstance(msg, ChunkBatch)
            got_batches.append(msg)
            send_message(server, ChunkAck(msg.batch_id, 0, True, "", 1, 0))

    def read_acks() -> None:
        frames = FrameReader(client)
        for _ in range(2 * n_per_thread):
            ack = frames.read(ChunkAck)
            assert isinstance(ack, ChunkAck)
            got_acks.append(ack)

    threads = [guarded(serve), guarded(read_acks)]
    threads += [guarded(lambda t=t: send_batches(t)) for t in (1, 2)]
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(got_batches) == len(got_acks) == 2 * n_per_thread
    for b in got_batches:
        cid, size, _, payload = b.chunks[0]
        assert len(payload) == size and hashlib.sha256(payload).digest() == cid
    assert {a.batch_id for a in got_acks} == {b.batch_id for b in got_batches}


def test_a_wrong_pin_is_refused(identity: StreamIdentity) -> None:
    with pytest.raises(PinMismatchError, match="does not match"):
        _pair(identity, pin="00" * 32)


class _Wire:
    """A TLS pair through a relay that records (and may alter) what the client sends."""

    def __init__(self, identity: StreamIdentity, flip_at: int = -1) -> None:
        a, self._b = socket.socketpair()
        tap, self._b_end = socket.socketpair()
        self.seen = bytearray()
        self._flip_at = flip_at
        server: list[TlsSocket] = []
        for f in (self._forward, self._back):
            threading.Thread(target=f, daemon=True).start()
        t = threading.Thread(
            target=lambda: server.append(TlsSocket.server(tap, identity.context, 10))
        )
        t.start()
        self.client = TlsSocket.client(a, client_context(), identity.fingerprint, 10)
        t.join(10)
        self.server = server[0]

    def _forward(self) -> None:
        with contextlib.suppress(OSError):
            while data := self._b.recv(65536):
                at = self._flip_at - len(self.seen)
                self.seen.extend(data)
                if 0 <= at < len(data):
                    data = bytearray(data)
                    data[at] ^= 0x01
                self._b_end.sendall(data)
            self._b_end.shutdown(socket.SHUT_WR)

    def _back(self) -> None:
        with contextlib.suppress(OSError):
            while data := self._b_end.recv(65536):
                self._b.sendall(data)

    def close(self) -> None:
        for s in (self.client, self.server, self._b, self._b_end):
            s.close()


def test_the_wire_carries_no_plaintext(identity: StreamIdentity) -> None:
    """What travels is ciphertext: a marker in a frame is not on the socket."""
    wire = _Wire(identity)
    marker = b"plaintext-marker-" * 100
    send_frame(wire.client, [marker])
    got = FrameReader(wire.server)._recv_exact(4 + len(marker), at_boundary=False)
    assert got is not None and bytes(got)[4:] == marker
    assert b"plaintext-marker" not in wire.seen
    wire.close()


def test_a_peer_that_is_not_tls_fails_the_handshake(identity: StreamIdentity) -> None:
    a, b = socket.socketpair()
    with a:
        send_message(a, StreamHello(token="t", client="plain"))
        a.shutdown(socket.SHUT_WR)
        with pytest.raises((OSError, ConnectionError)):
            TlsSocket.server(b, identity.context, 5)
    b.close()


def test_end_of_stream_reads_as_zero(pair: tuple[TlsSocket, TlsSocket]) -> None:
    client, server = pair
    send_frame(client, [b"last"])
    client.close()
    frames = FrameReader(server)
    assert frames._recv_exact(8, at_boundary=False) is not None
    assert frames.read(ChunkBatch) is None  # the peer closed between frames


def test_a_changed_byte_on_the_wire_fails_the_read(identity: StreamIdentity) -> None:
    """Ciphertext altered in transit (past the handshake) is an error, never data."""
    wire = _Wire(identity, flip_at=200_000)  # inside the first 1 MiB frame

    def send() -> None:
        with contextlib.suppress(OSError):
            send_message(wire.client, _batch(1, 1 << 20))

    sender = threading.Thread(target=send)
    sender.start()
    with pytest.raises(ssl.SSLError):
        FrameReader(wire.server).read(ChunkBatch)
    wire.close()  # the sender's sendall fails now instead of waiting for a reader
    sender.join(10)
    assert not sender.is_alive()
