"""The proxy's chunk streams: chunk batches, have-queries and tasks' map entries straight to
the writers that offer a stream (repository_writer/chunk_stream_server.py), one TCP
connection per writer, shared by the tasks.

A request is sent on the stream and its answer (ChunkAck, HaveReply, CommitReply) comes
back on it, keyed by batch, query or request id; it resolves the same future the broker
path would. When a stream cannot be opened or breaks, every request waiting on it gets
:class:`StreamLost` (a TimeoutError, so WriterLink re-sends it at once, as after a lost
reply) and the writer's address is left alone for ``retry_after`` seconds: those re-sends
go through the broker. A stream the writer closes while nothing waits on it (idle) is
simply opened again by the next send.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from common.chunk_stream.frames import FrameReader, StreamClosed, send_frame, send_message
from common.chunk_stream.tls_socket import TlsSocket, client_context
from common.logging import get_logger
from common.messages import (
    Bytes,
    ChunkAck,
    ChunkBatch,
    CommitReply,
    HaveQuery,
    HaveReply,
    Message,
    MessageError,
    StreamHello,
    TaskEntries,
    encode_parts,
)
from proxy_worker import metrics

log = get_logger(__name__)
_OnLost = Callable[["_Stream", str], None]


class StreamLost(TimeoutError):
    """The chunk stream carrying a batch broke before its ack came."""


StreamRequest = ChunkBatch | HaveQuery | TaskEntries
StreamAnswer = ChunkAck | HaveReply | CommitReply


def _key(msg: StreamRequest | StreamAnswer) -> str:
    """The id that pairs a request with its answer."""
    if isinstance(msg, ChunkBatch | ChunkAck):
        return msg.batch_id
    if isinstance(msg, HaveQuery | HaveReply):
        return msg.query_id
    return msg.request_id


@dataclass(frozen=True)
class Endpoint:
    """A writer's chunk stream as its have-replies describe it."""

    addr: str  # HOST:PORT
    token: str
    pin: str = ""  # hex SHA-256 of its TLS certificate; "" = plain TCP


@functools.cache
def _client_context() -> ssl.SSLContext:
    return client_context()


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class WriterStreams:
    """Thread safe; ``send`` is called by the tasks' sender threads."""

    def __init__(self, client: str, *, connect_timeout: float, retry_after: float = 10.0) -> None:
        self.client = client
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self._streams: dict[str, _Stream] = {}
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def send(self, endpoint: Endpoint, request: StreamRequest, reply: Future[Message]) -> bool:
        """Send ``request`` on the writer's stream; ``reply`` gets its answer (or
        StreamLost). False when the stream is unusable: the caller uses the broker."""
        addr = endpoint.addr
        stream = self._stream(endpoint)
        if stream is None:
            return False
        body = encode_parts(request)
        if stream.send(_key(request), body, reply):
            return True
        self._mark_down(addr, stream, "send")
        return False

    def forget(self, key: str) -> None:
        """Stop waiting for the answer to a batch or query id (it was re-sent)."""
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            s.forget(key)

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for s in streams:
            s.close("proxy closing")

    # --- internals -----------------------------------------------------------------------
    def _stream(self, endpoint: Endpoint) -> _Stream | None:
        addr = endpoint.addr
        with self._lock:
            s = self._streams.get(addr)
            if s is not None and s.alive and s.endpoint == endpoint:
                return s
            if time.monotonic() < self._down_until.get(addr, 0.0):
                return None
        try:
            s = _Stream.open(endpoint, self.client, self.connect_timeout, self._on_lost)
        except (OSError, ValueError) as exc:  # ssl.SSLError and PinMismatchError are OSErrors
            kind = "tls" if isinstance(exc, ssl.SSLError) else "connect"
            metrics.PROXY_CHUNK_STREAM_ERRORS.labels(kind=kind).inc()
            log.warning("chunk_stream_unavailable", writer=addr, error=str(exc))
            with self._lock:
                self._down_until[addr] = time.monotonic() + self.retry_after
            return None
        with self._lock:
            old = self._streams.get(addr)
            if old is not None and old.alive and old.endpoint == endpoint:
                keep: _Stream = old  # another task opened one meanwhile
                drop: _Stream | None = s
            else:
                self._streams[addr] = keep = s
                drop = old
        if drop is not None:
            drop.close("replaced")
        return keep

    def _on_lost(self, stream: _Stream, why: str) -> None:
        if why == "idle":
            # The writer closed a stream nothing waited on (writer.stream_idle_timeout):
            # not a fault, the next send opens a new stream at once.
            with self._lock:
                if self._streams.get(stream.addr) is stream:
                    del self._streams[stream.addr]
            stream.close(why)
            return
        self._mark_down(stream.addr, stream, why)

    def _mark_down(self, addr: str, stream: _Stream, kind: str) -> None:
        metrics.PROXY_CHUNK_STREAM_ERRORS.labels(kind=kind).inc()
        with self._lock:
            if self._streams.get(addr) is stream:
                del self._streams[addr]
            self._down_until[addr] = time.monotonic() + self.retry_after
        stream.close(kind)


class _Stream:
    def __init__(
        self, sock: socket.socket | TlsSocket, endpoint: Endpoint, on_lost: _OnLost
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.addr = endpoint.addr
        self.alive = True
        self._on_lost = on_lost
        self._pending: dict[str, Future[Message]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"chunk-stream-{endpoint.addr}", daemon=True
        )

    @classmethod
    def open(cls, endpoint: Endpoint, client: str, timeout: float, on_lost: _OnLost) -> _Stream:
        raw = socket.create_connection(split_address(endpoint.addr), timeout=timeout)
        sock: socket.socket | TlsSocket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if endpoint.pin:
                sock = TlsSocket.client(raw, _client_context(), endpoint.pin, timeout)
            send_message(sock, StreamHello(token=endpoint.token, client=client))
            raw.settimeout(None)
        except BaseException:
            raw.close()
            raise
        s = cls(sock, endpoint, on_lost)
        s._reader.start()
        log.info("chunk_stream_opened", writer=endpoint.addr, tls=bool(endpoint.pin))
        return s

    def send(self, key: str, body: list[Bytes], reply: Future[Message]) -> bool:
        with self._lock:
            if not self.alive:
                return False
            self._pending[key] = reply
        try:
            with self._send_lock:
                send_frame(self.sock, body)
        except OSError as exc:
            with self._lock:
                self._pending.pop(key, None)
            log.warning("chunk_stream_send_failed", writer=self.addr, error=str(exc))
            return False
        return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def close(self, why: str) -> None:
        with self._lock:
            was_alive, self.alive = self.alive, False
            lost = list(self._pending.values())
            self._pending.clear()
        if was_alive:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
            self.sock.close()
        for fut in lost:
            if not fut.done():
                fut.set_exception(StreamLost(f"chunk stream to {self.addr} lost ({why})"))

    def _read_loop(self) -> None:
        why = "closed by writer"
        frames = FrameReader(self.sock)
        try:
            while True:
                msg = frames.read(ChunkAck, HaveReply, CommitReply)
                if msg is None:
                    break
                assert isinstance(msg, StreamAnswer)
                with self._lock:
                    fut = self._pending.pop(_key(msg), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (MessageError, StreamClosed) as exc:
            why = f"bad frame: {exc}"
        except OSError as exc:
            why = str(exc)
        if self.alive:
            with self._lock:
                idle = why == "closed by writer" and not self._pending
            if idle:
                log.info("chunk_stream_closed_idle", writer=self.addr)
            else:
                log.warning("chunk_stream_lost", writer=self.addr, error=why)
            self._on_lost(self, "idle" if idle else "lost")
