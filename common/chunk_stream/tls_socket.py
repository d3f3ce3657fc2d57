"""TLS for the chunk streams: a connection one thread reads while others write.

A chunk stream is read by one thread and written by others at the same time (batches out
and acks in on the proxy, the reverse on the writer). ``ssl.SSLSocket`` drives its OpenSSL
connection from whichever thread calls it, with the GIL released inside SSL_read and
SSL_write, and an OpenSSL connection must not be used by two threads at once. So here the
TLS state is an ``ssl.SSLObject`` over memory BIOs that is touched only under a lock, held
while encrypting or decrypting and never while waiting on the network; the socket itself
is read by the reading thread and written under a send lock, so that records leave in
the order they were sealed.

Trust is a pin, not a CA: the writer makes a key and self-signed certificate when it
starts (repository_writer/stream_identity.py) and hands the certificate's SHA-256 out with
its stream address and token, in have-replies that come through the broker; a proxy
accepts the stream only when the certificate it is shown has that fingerprint.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence
from typing import cast

from common.messages import Bytes
from common.tls_pin import check_pin, peer_name

_RECV_BYTES = 256 << 10
_SEAL_BYTES = 256 << 10  # plaintext sealed per lock hold: bounds the ciphertext buffered


def client_context() -> ssl.SSLContext:
    """TLS 1.3 client context that checks no CA and no name: the caller checks the pin."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # No session tickets: streams are long-lived, and a ticket is a record the server
    # writes after the handshake, i.e. one more thing the reading side might have to send.
    ctx.num_tickets = 0
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class TlsSocket:
    """The parts of a socket the chunk streams use (recv_into, sendmsg, shutdown, close)
    over a TLS connection. Made by :meth:`client` or :meth:`server`, handshake done."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self.sock = sock
        self._tls = tls
        self._in = incoming
        self._out = outgoing
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()

    @classmethod
    def client(
        cls, sock: socket.socket, ctx: ssl.SSLContext, pin: str, timeout: float
    ) -> TlsSocket:
        """TLS over a connected socket; common.tls_pin.PinMismatchError unless the writer's
        certificate has the SHA-256 fingerprint ``pin`` (checked before a byte is sent)."""
        s = cls._wrap(sock, ctx, server_side=False, timeout=timeout)
        check_pin(s._tls.getpeercert(binary_form=True), pin, f"chunk stream to {peer_name(sock)}")
        return s

    @classmethod
    def server(cls, sock: socket.socket, ctx: ssl.SSLContext, timeout: float) -> TlsSocket:
        return cls._wrap(sock, ctx, server_side=True, timeout=timeout)

    @classmethod
    def _wrap(
        cls, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool, timeout: float
    ) -> TlsSocket:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        s = cls(sock, ctx.wrap_bio(incoming, outgoing, server_side=server_side), incoming, outgoing)
        old = sock.gettimeout()
        sock.settimeout(timeout)
        try:
            while True:
                try:
                    s._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    s._flush()
                    if not s._feed():
                        raise ConnectionError(
                            "peer closed the connection during the TLS handshake"
                        ) from None
            s._flush()
        finally:
            sock.settimeout(old)
        return s

    # --- reading (one thread) --------------------------------------------------------------
    def recv_into(self, view: memoryview | bytearray) -> int:
        """Up to len(view) plaintext bytes; 0 when the peer closed the connection. Opens
        as many buffered records as fit in one go (a record holds at most 16 KiB)."""
        view = memoryview(view).cast("B")
        size = len(view)
        if not size:
            return 0
        while True:
            got = 0
            closed = False
            with self._tls_lock:
                while got < size:
                    try:
                        # with a buffer, read() returns the count (typeshed says bytes)
                        n = cast(int, self._tls.read(size - got, view[got:]))
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        closed = True  # close_notify: a clean end
                        break
                    if n <= 0:
                        break
                    got += n
                pending = self._out.pending
            if pending and self._send_lock.acquire(blocking=False):
                try:  # what reading made (a key update, say) goes out unless a send is on
                    self._flush()  # its way, which takes it along
                finally:
                    self._send_lock.release()
            if got or closed:
                return got
            if not self._feed():
                return 0

    def _feed(self) -> bool:
        """Ciphertext from the socket into the TLS object; False at end of stream."""
        raw = self.sock.recv(_RECV_BYTES)
        if not raw:
            return False
        with self._tls_lock:
            self._in.write(raw)
        return True

    # --- writing (any thread) --------------------------------------------------------------
    def sendmsg(self, buffers: Sequence[Bytes]) -> int:
        """Seal and send all of ``buffers``; returns their length (never a partial send)."""
        total = 0
        with self._send_lock:
            for b in buffers:
                view = memoryview(b).cast("B")
                for i in range(0, len(view), _SEAL_BYTES):
                    piece = view[i : i + _SEAL_BYTES]
                    with self._tls_lock:
                        self._tls.write(piece)
                    self._flush()
                    total += len(piece)
        return total

    def sendall(self, data: Bytes) -> None:
        self.sendmsg([data])

    def _flush(self) -> None:
        """Send what the TLS object has sealed (caller holds the send lock or is the only
        user, as in the handshake)."""
        with self._tls_lock:
            data = self._out.read()
        if data:
            self.sock.sendall(data)

    # --- socket passthrough ----------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TlsSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
