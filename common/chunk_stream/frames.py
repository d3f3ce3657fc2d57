"""Messages over a plain stream socket: the chunk streams between proxies and writers.

A frame is a 4-byte big-endian length and then one message exactly as
:mod:`common.messages` encodes it, so a stream carries the same strictly checked schemas
as the broker does. A length above MAX_MESSAGE_BYTES, a truncated frame or a body that does
not decode is a :class:`~common.messages.MessageError`; the peer closing the connection
between frames is a clean end (``None``), in the middle of one a :class:`StreamClosed`.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from common.messages import (
    MAX_MESSAGE_BYTES,
    Bytes,
    Message,
    MessageError,
    decode,
    encode_parts,
)

HEADER = struct.Struct(">I")


class StreamSocket(Protocol):
    """What frames need of a connection: a socket, or TLS over one (tls_socket.py)."""

    def recv_into(self, buffer: memoryview, /) -> int: ...

    def sendmsg(self, buffers: Sequence[Bytes], /) -> int: ...


class StreamClosed(ConnectionError):
    """The peer closed the connection in the middle of a frame."""


class StreamIdle(TimeoutError):
    """No frame began within the socket's timeout; nothing was half read, so reading may
    go on (a time-out in the middle of a frame is a plain TimeoutError)."""


def send_message(sock: StreamSocket, msg: Message) -> None:
    """Encode and send one frame; OSError when the socket fails."""
    send_frame(sock, encode_parts(msg))


# Linux takes at most 1024 buffers per sendmsg (IOV_MAX).
_MAX_BUFFERS = 512


def send_frame(sock: StreamSocket, body: Sequence[Bytes]) -> None:
    """Header and body (the concatenation of ``body``, see encode_parts) with as few system
    calls as the kernel allows and no copy of the body in user space."""
    size = sum(memoryview(b).nbytes for b in body)
    parts: deque[memoryview] = deque(memoryview(b).cast("B") for b in body if len(b))
    parts.appendleft(memoryview(HEADER.pack(size)))
    while parts:
        sent = sock.sendmsg(list(itertools.islice(parts, _MAX_BUFFERS)))
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.popleft()
        if parts and sent:
            parts[0] = parts[0][sent:]


def read_message(
    sock: StreamSocket, *kinds: type[Message], max_bytes: int = MAX_MESSAGE_BYTES
) -> Message | None:
    """One frame's message, of one of ``kinds``; None when the peer closed the connection
    between frames. A connection that carries many frames reads them with a FrameReader."""
    return FrameReader(sock, max_bytes).read(*kinds)


class FrameReader:
    """Reads the frames of one socket into one reused buffer: decoding copies every value
    out of it, so a frame needs no fresh (zero-filled, faulted-in) buffer of its own."""

    def __init__(self, sock: StreamSocket, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.sock = sock
        # What a peer not yet authenticated may declare is kept small: the buffer for a
        # frame is allocated before its body arrives (docs/security.md).
        self.max_bytes = max_bytes
        self._buf = bytearray(HEADER.size)

    def read(self, *kinds: type[Message]) -> Message | None:
        """The next frame's message, of one of ``kinds``; None when the peer closed the
        connection between frames."""
        header = self._recv_exact(HEADER.size, at_boundary=True)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > self.max_bytes:
            raise MessageError(f"frame of {size} bytes exceeds limit {self.max_bytes}")
        body = self._recv_exact(size, at_boundary=False)
        assert body is not None
        msg = decode(body)
        if not isinstance(msg, kinds):
            expected = " or ".join(repr(k.KIND) for k in kinds)
            raise MessageError(f"expected a {expected} message, got {msg.KIND!r}")
        return msg

    def _recv_exact(self, size: int, *, at_boundary: bool) -> memoryview | None:
        if len(self._buf) < size:
            self._buf = bytearray(size)  # grows to the largest frame seen (<= the limit)
        view = memoryview(self._buf)[:size]
        got = 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if got == 0 and at_boundary:
                    raise StreamIdle("no frame began within the time-out") from None
                raise
            if n == 0:
                if got == 0 and at_boundary:
                    return None
                raise StreamClosed(f"connection closed after {got} of {size} bytes of a frame")
            got += n
        return view
