"""The writer's chunk stream: chunk batches straight from proxies, beside the broker.

Chunk payloads are most of the bytes a backup moves. Through RabbitMQ each byte is
framed by the proxy's AMQP client, routed by the broker and framed again to the writer:
on the development box the broker alone cost 1.7 CPU s per GB and AMQP framing a large
part of both ends. So a writer may also listen on a TCP port: a proxy opens one stream
per writer, sends ``StreamHello`` with the writer's token and then ``ChunkBatch`` frames
(common/chunk_stream/frames.py), and gets one ``ChunkAck`` per batch on the same connection, sent
only once the batch is durable, exactly as on the broker path (same handler, same
checks). Have-queries go the same way once a proxy knows the stream (``HaveQuery`` ->
``HaveReply``): small messages that cost the broker and both AMQP clients more per byte
than anything else. The first have-query of a proxy goes through the broker, and its
reply carries the stream's address and token: only clients the broker let in learn the
token. A proxy that cannot reach the stream falls back to the shard queue. A task's map
entries go the same way once its chunks are acked (``TaskEntries`` -> ``CommitReply``,
staged exactly as from the commits queue): only proxies learn the token (the writer gives
it in have-replies to proxy accounts only, senders.py), so a stream's peer may stage
entries and nothing else of the commits queue. Tasks, results and commits always go
through the broker.

Memory: at most ``max_inflight`` batches are read and not yet acknowledged, over all
connections (a connection stops reading while none is free: TCP pushes back).

Bounds (docs/security.md, "Bounded endpoints"): at most ``max_connections`` connections
(one thread each) at once, those beyond are closed at once and counted; before its hello
is checked a peer may declare at most HELLO_MAX_BYTES and has ONE deadline for the TCP
connection, the TLS handshake and the hello together (:class:`HelloDeadlines`); an
authenticated stream that sends no frame for ``idle_timeout`` while nothing of it is in
flight is closed (the proxy opens a new one when it next sends).
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from common.chunk_stream.frames import (
    FrameReader,
    StreamClosed,
    StreamIdle,
    read_message,
    send_message,
)
from common.chunk_stream.tls_socket import TlsSocket
from common.logging import get_logger
from common.messages import (
    ChunkBatch,
    HaveQuery,
    Message,
    MessageError,
    StreamHello,
    TaskEntries,
)
from repository_writer import metrics
from repository_writer.stream_deadlines import HelloDeadlines
from repository_writer.stream_identity import StreamIdentity

log = get_logger(__name__)
HELLO_TIMEOUT = 10.0
# A StreamHello is a token and a client name: a few hundred bytes. Nothing larger is
# allocated for a peer that has not shown the token.
HELLO_MAX_BYTES = 4096


def parse_listen(text: str) -> tuple[str, int]:
    """ "HOST:PORT" (port 0: any free port) -> (host, port); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"data_listen {text!r}: expected HOST:PORT with a port within 0..65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def route_address(peer_host: str, peer_port: int) -> str:
    """This machine's address on the route to ``peer`` (no packet is sent): where a
    proxy that reaches the broker most likely reaches this writer too."""
    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer_host, peer_port))
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostname()


class ChunkStreamServer:
    def __init__(
        self,
        handle: Callable[[ChunkBatch | HaveQuery | TaskEntries], Message],
        *,
        listen: str,
        advertise: str,
        workers: int,
        max_inflight: int,
        name: str,
        identity: StreamIdentity | None = None,
        max_connections: int = 64,
        idle_timeout: float = 300.0,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        self.handle = handle
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.hello_timeout = hello_timeout
        self.name = name
        self.token = secrets.token_hex(16)
        self._identity = identity
        self.pin = identity.fingerprint if identity is not None else ""
        host, port = parse_listen(listen)
        self._listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=64
        )
        bound_port = self._listener.getsockname()[1]
        adv_host, _, adv_port = (
            advertise.rpartition(":") if ":" in advertise else (advertise, "", "")
        )
        self.address = f"{adv_host or host}:{adv_port or bound_port}"
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-stream")
        self._slots = threading.Semaphore(max_inflight)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._refused = 0
        self._deadlines = HelloDeadlines(hello_timeout, name)
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{name}-accept")

    def start(self) -> ChunkStreamServer:
        self._deadlines.start()
        self._acceptor.start()
        log.info(
            "chunk_stream_listening", writer=self.name, address=self.address, tls=bool(self.pin)
        )
        return self

    def stop(self) -> None:
        """Stop taking batches; those already read are finished and acknowledged."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RD)  # readers end; in-flight acks still go out
        self._acceptor.join(timeout=10)
        self._deadlines.stop()
        self._pool.shutdown(wait=True)

    # --- connections -------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return  # closed by stop()
                # out of file descriptors or the like: keep the port, try again shortly
                log.warning("chunk_stream_accept_failed", writer=self.name, error=str(exc))
                time.sleep(0.5)
                continue
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                self._refuse(conn, peer)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._deadlines.add(conn)
            threading.Thread(
                target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True
            ).start()

    def _refuse(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Beyond max_connections: closed before anything is read (one thread per
        connection, so this bounds the threads too). The proxy falls back to the broker."""
        conn.close()
        metrics.WRITER_STREAM_REFUSED.labels(reason="max_connections").inc()
        self._refused += 1
        if self._refused % 100 == 1:  # a flood logs a line per 100, not one per connection
            log.warning(
                "chunk_stream_refused",
                writer=self.name,
                peer=f"{peer[0]}:{peer[1]}",
                error=f"{self.max_connections} connections open (writer.stream_max_connections)",
                refused=self._refused,
            )

    def _serve(self, raw: socket.socket, peer: str) -> None:
        metrics.WRITER_STREAMS.inc()
        sock: socket.socket | TlsSocket = raw
        conn = _Conn(sock, peer)
        try:
            if self._identity is not None:
                tls = self._tls(raw, peer)
                if tls is None:
                    return
                sock = conn.sock = tls
            if not self._hello(sock, raw, peer):
                return
            if not self._deadlines.done(raw):  # passed just as the hello came
                self._refused_late(peer)
                return
            sock.settimeout(self.idle_timeout)
            frames = FrameReader(sock)
            while not self._closed.is_set():
                self._slots.acquire()
                try:
                    msg = frames.read(ChunkBatch, HaveQuery, TaskEntries)
                except StreamIdle:
                    self._slots.release()
                    if conn.busy():
                        continue  # the proxy waits for our acks: not idle
                    metrics.WRITER_STREAM_IDLE_CLOSED.inc()
                    log.info("chunk_stream_idle_closed", writer=self.name, peer=peer)
                    return
                except BaseException:
                    self._slots.release()
                    raise
                if msg is None:
                    self._slots.release()
                    return
                conn.begin()
                try:
                    self._pool.submit(self._answer, conn, msg)
                except RuntimeError:  # the pool was shut down by stop()
                    conn.end()
                    self._slots.release()
                    return
        except (MessageError, StreamClosed) as exc:
            # A proxy's bug or a torn connection: drop the stream (it re-sends its unacked
            # batches, through the broker if need be); nothing half-read is stored.
            metrics.WRITER_STREAM_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning("chunk_stream_dropped", writer=self.name, peer=peer, error=str(exc))
        except OSError as exc:
            if not self._closed.is_set():
                metrics.WRITER_STREAM_ERRORS.labels(kind="OSError").inc()
                log.warning("chunk_stream_dropped", writer=self.name, peer=peer, error=str(exc))
        finally:
            self._deadlines.done(raw)
            metrics.WRITER_STREAMS.dec()
            with self._lock:
                self._conns.discard(raw)
            conn.reader_done()  # closes the socket once the last ack is out

    def _refused_late(self, peer: str) -> None:
        metrics.WRITER_STREAM_REFUSED.labels(reason="hello_deadline").inc()
        log.warning(
            "chunk_stream_refused",
            writer=self.name,
            peer=peer,
            error=f"no hello within {self.hello_timeout:g} s (TCP, TLS and hello together)",
        )

    def _tls(self, raw: socket.socket, peer: str) -> TlsSocket | None:
        assert self._identity is not None
        try:
            return TlsSocket.server(raw, self._identity.context, self.hello_timeout)
        except OSError as exc:  # ssl.SSLError and ConnectionError are OSErrors
            if self._deadlines.expired(raw):
                self._refused_late(peer)
                return None
            log.warning("chunk_stream_refused", writer=self.name, peer=peer, error=f"TLS: {exc}")
            metrics.WRITER_STREAM_ERRORS.labels(kind="tls").inc()
            return None

    def _hello(self, conn: socket.socket | TlsSocket, raw: socket.socket, peer: str) -> bool:
        # The per-read time-out is a backstop: HelloDeadlines ends the whole hello.
        conn.settimeout(self.hello_timeout)
        try:
            hello = read_message(conn, StreamHello, max_bytes=HELLO_MAX_BYTES)
        except (MessageError, OSError) as exc:
            if self._deadlines.expired(raw):
                self._refused_late(peer)
            else:
                log.warning("chunk_stream_refused", writer=self.name, peer=peer, error=str(exc))
                metrics.WRITER_STREAM_ERRORS.labels(kind="hello").inc()
            return False
        conn.settimeout(None)
        if not isinstance(hello, StreamHello) or not hmac.compare_digest(
            hello.token.encode(), self.token.encode()
        ):
            log.warning("chunk_stream_refused", writer=self.name, peer=peer, error="bad token")
            metrics.WRITER_STREAM_ERRORS.labels(kind="token").inc()
            return False
        log.info("chunk_stream_opened", writer=self.name, peer=peer, client=hello.client)
        return True

    def _answer(self, conn: _Conn, msg: Message) -> None:
        assert isinstance(msg, ChunkBatch | HaveQuery | TaskEntries)
        try:
            conn.send(self.handle(msg))
        except OSError as exc:
            # The proxy is gone: it re-sends the batch (stored chunks are found as known).
            log.warning("chunk_ack_undelivered", writer=self.name, peer=conn.peer, error=str(exc))
        except Exception as exc:  # a fault the handler did not turn into a refusal
            # Without an answer the proxy would wait writer_timeout: drop the stream so that
            # everything waiting on it is re-sent at once (through the broker).
            metrics.WRITER_STREAM_ERRORS.labels(kind="handler").inc()
            log.error("chunk_stream_request_failed", writer=self.name, error=repr(exc))
            conn.abort()
        finally:
            conn.end()
            self._slots.release()


class _Conn:
    """One proxy's connection: acks go out under one lock; the socket is closed when its
    reader has ended and no batch read from it is still being stored."""

    def __init__(self, sock: socket.socket | TlsSocket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._inflight = 0
        self._reading = True

    def begin(self) -> None:
        with self._lock:
            self._inflight += 1

    def busy(self) -> bool:
        """Whether a batch read from this connection is still being stored."""
        with self._lock:
            return self._inflight > 0

    def send(self, msg: Message) -> None:
        with self._send_lock:
            send_message(self.sock, msg)

    def abort(self) -> None:
        """Break the connection now (its reader ends, the proxy sees the stream lost)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def end(self) -> None:
        with self._lock:
            self._inflight -= 1
            done = not self._reading and self._inflight == 0
        if done:
            self.sock.close()

    def reader_done(self) -> None:
        with self._lock:
            self._reading = False
            done = self._inflight == 0
        if done:
            self.sock.close()
