"""A TLS-terminating relay to the lab: it shows its own certificate (pinned by
``fingerprint``) and forwards every connection to the lab over TLS, recording what it is
told: TCP connections, TLS handshakes completed, and the bytes clients sent inside TLS
(``received``, the first MiB: logins come first), so that a test can prove what a client
leaked to a server it should not have trusted. The first ``answers`` connections whose
first request is a PUT to /folder get an HTTP error once their body is in: what a busy or
refusing hostd answers an upload. A relay that only passes TLS through cannot forge an
answer inside it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
import time

from repository_writer.stream_identity import make_identity

_RECORDED = 1 << 20
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_REASONS = {403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}


class AnsweringRelay:
    def __init__(self, target: tuple[str, int], status: int = 503, answers: int = 0) -> None:
        self.target = target
        self.status = status
        self.answers_left = answers
        self.answered = 0
        self.connections = 0  # TCP connections accepted
        self.handshakes = 0  # of which completed the TLS handshake
        self.finished = 0  # of which the relay is done with
        self.received = bytearray()  # what clients sent inside TLS (the first MiB)
        identity = make_identity("test-relay")
        self.fingerprint = identity.fingerprint
        self._server_ctx = identity.context
        self._client_ctx = ssl.create_default_context()
        self._client_ctx.check_hostname = False
        self._client_ctx.verify_mode = ssl.CERT_NONE  # the lab's own certificate
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)
        self.url = f"https://127.0.0.1:{self.port}/sdk"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await writer.start_tls(self._server_ctx)
            self.handshakes += 1
            head = await reader.readuntil(b"\r\n\r\n")
            _record(self.received, head)
            if head.startswith(b"PUT /folder/") and self._take_answer():
                await self._answer(head, reader, writer)
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target, ssl=self._client_ctx)
            up_writer.write(head)
            await asyncio.gather(
                _pipe(reader, up_writer, self.received), _pipe(up_reader, writer, None)
            )
        except asyncio.IncompleteReadError as exc:  # the client hung up mid-request
            _record(self.received, exc.partial)
        except (OSError, asyncio.LimitOverrunError):
            pass  # a client or the lab hung up: so does the relay
        finally:
            writer.close()
            self.finished += 1

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every connection accepted is over (its bytes all in ``received``);
        False when one is still open after ``timeout`` (a client keeps it alive)."""
        deadline = time.monotonic() + timeout
        while self.finished < self.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.finished == self.connections

    def _take_answer(self) -> bool:
        if self.answers_left <= 0:
            return False
        self.answers_left -= 1
        self.answered += 1
        return True

    async def _answer(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        m = _CONTENT_LENGTH.search(head)
        left = int(m.group(1)) if m else 0
        while left > 0:  # the whole body first: the client reads the answer after it
            piece = await reader.read(min(left, 1 << 16))
            if not piece:
                return
            _record(self.received, piece)
            left -= len(piece)
        body = b"relay says no\n"
        writer.write(
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        with contextlib.suppress(RuntimeError):
            self._loop.close()


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await src.read(1 << 16):
            if record is not None:
                _record(record, data)
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            dst.close()


def _record(into: bytearray, data: bytes) -> None:
    into += data[: max(0, _RECORDED - len(into))]
