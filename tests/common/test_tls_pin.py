"""common.tls_pin against a real TLS server with a certificate of its own: a pinned context
refuses another certificate inside the handshake, whoever drives the connection
(http.client over a socket, asyncio over memory BIOs), so the server receives no byte of
the request; the right pin carries it."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from common import tls_pin
from repository_writer.stream_identity import StreamIdentity, make_identity


class RecordingServer:
    """Accepts TLS connections with ``identity`` and records what clients send inside."""

    def __init__(self, identity: StreamIdentity) -> None:
        self.identity = identity
        self.received = bytearray()
        self.connections = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with self.identity.context.wrap_socket(raw, server_side=True) as s:
                while data := s.recv(65536):
                    self.received += data
                    if b"\r\n\r\n" in self.received:
                        s.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        return
        except OSError:
            pass  # the client broke the handshake off, or hung up

    def settle(self) -> None:
        for t in list(self._threads):
            t.join(10)

    def close(self) -> None:
        self._srv.close()


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    s = RecordingServer(make_identity("tls-pin-test"))
    yield s
    s.close()


OTHER = "11" * 32


def test_http_client_with_a_wrong_pin_sends_nothing(server: RecordingServer) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=tls_pin.pinned_context(OTHER), timeout=10
    )
    with pytest.raises(tls_pin.PinMismatchError) as exc:
        conn.request("GET", "/secret?password=hunter2")
    server.settle()
    assert server.connections == 1
    assert server.received == b""
    assert f"certificate SHA-256 {server.identity.fingerprint}" in str(exc.value)
    assert f"does not match the pinned thumbprint {OTHER}" in str(exc.value)
    assert isinstance(exc.value, ssl.SSLCertVerificationError)  # never a "network" error


def test_http_client_with_the_right_pin_gets_through(server: RecordingServer) -> None:
    pin = ":".join(
        server.identity.fingerprint[i : i + 2].upper() for i in range(0, 64, 2)
    )  # the colon form vCenter shows
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=tls_pin.pinned_context(pin), timeout=10
    )
    conn.request("GET", "/ok")
    assert conn.getresponse().status == 204
    conn.close()
    server.settle()
    assert server.received.startswith(b"GET /ok HTTP/1.1")


def test_asyncio_with_a_wrong_pin_sends_nothing(server: RecordingServer) -> None:
    async def attempt() -> None:
        ctx = tls_pin.pinned_context(OTHER)
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writer.write(b"GET /secret HTTP/1.1\r\n\r\n")  # never reached
        await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    with pytest.raises(tls_pin.PinMismatchError, match="does not match the pinned thumbprint"):
        asyncio.run(attempt())
    server.settle()
    assert server.connections == 1
    assert server.received == b""


@pytest.mark.parametrize("bad", ["", "ab" * 20, "zz" * 32, "ab" * 33])
def test_a_pin_must_be_a_sha256(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a SHA-256"):
        tls_pin.pinned_context(bad)
