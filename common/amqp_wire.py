"""How pika connections of this process read and write their frames.

Reading: pika 1.x reads its socket 4 KiB at a time and keeps unparsed input in a bytes
object that it re-creates on every append and after every frame (``buf += data``,
``buf = buf[n:]``), and slices each frame out once more: a 4 MiB chunk batch in 128 KiB
frames was copied about four times before the body was even assembled, in the writers'
hottest Python lines (py-spy --gil; bench/RESULTS.md). Here: 256 KiB reads (and up to
1 MiB per event loop turn), unparsed input in one bytearray consumed by offset, and body
frames copied out of it exactly once. Other frames (methods, content headers, the protocol
header) still go through pika's own decoder.

Writing: pika slices each body frame out of the message (a copy), joins it (a copy) and
prepends the frame header by concatenation (a copy). Here each body frame is made with
one copy, from a view of the message.

:func:`install` applies both to every pika connection of the process; it is idempotent,
and ``BrokerParams.pika_params`` (which every connection of ours is opened from) calls it.
The replaced pika internals are private: pyproject pins pika to the versions this was
tested with, and tests/common/test_amqp_wire.py fails when their source changes
(:data:`TESTED_PIKA_SOURCES`).
"""

from __future__ import annotations

import struct
from typing import Any

from pika import connection, exceptions, frame, spec
from pika.adapters.utils import io_services_utils

RECV_BYTES = 256 * 1024

_HEADER = struct.Struct(">BHL")  # frame type, channel, payload size
_HEADER_LEN = spec.FRAME_HEADER_SIZE  # 7
_END_LEN = spec.FRAME_END_SIZE  # 1
_PROTOCOL_HEADER = b"AMQP"  # a server that rejects our version answers with its own

_FRAME_END = bytes([spec.FRAME_END])
_CONTENT_HEADER = struct.Struct(">HHQ")  # class id, weight, body size

# Put in place of the properties of a delivery whose content header pika cannot decode
# (a header value out of range, an unknown field type): the message arrives with only this
# header, naming the error, and the consumer dead-letters it. Before, the decoder's error
# dropped the connection, and the broker redelivered the message to it for ever.
BAD_PROPERTIES_HEADER = "x-vmbackup-bad-properties"

# pika's own reader and writer, before install() replaces them (tests compare)
PIKA_ON_DATA_AVAILABLE = connection.Connection._on_data_available
PIKA_SEND_MESSAGE = connection.Connection._send_message


def on_data_available(conn: Any, data_in: bytes) -> None:
    """Replacement for ``pika.connection.Connection._on_data_available``: same frames, in
    the same order, to ``_process_frame``; same ``bytes_received``; an incomplete frame
    stays buffered for the next read."""
    buf = conn._frame_buffer
    if not isinstance(buf, bytearray):  # pika (re)initialises it as bytes
        buf = conn._frame_buffer = bytearray(buf)
    buf += data_in
    offset = 0
    try:
        while True:
            value, consumed = _next_frame(buf, offset)
            if value is None:
                return
            offset += consumed
            conn.bytes_received += consumed
            conn._process_frame(value)
            if conn._frame_buffer is not buf:  # the connection was reset by a callback
                offset = 0
                return
    finally:
        if offset:
            del buf[:offset]


def _next_frame(buf: bytearray, offset: int) -> tuple[Any, int]:
    """(frame, bytes it used) starting at ``offset``, or (None, 0) while incomplete."""
    avail = len(buf) - offset
    if avail < _HEADER_LEN + _END_LEN:
        if avail >= 4 and buf[offset : offset + 4] == _PROTOCOL_HEADER:
            return _pika_decode(buf, offset, min(avail, 8))
        return None, 0
    if buf[offset : offset + 4] == _PROTOCOL_HEADER:
        return _pika_decode(buf, offset, 8)
    frame_type, channel, size = _HEADER.unpack_from(buf, offset)
    end = offset + _HEADER_LEN + size + _END_LEN
    if end > len(buf):
        return None, 0
    if buf[end - 1] != spec.FRAME_END:
        raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
    if frame_type == spec.FRAME_BODY:
        with memoryview(buf) as view:
            fragment = bytes(view[offset + _HEADER_LEN : end - _END_LEN])
        return frame.Body(channel, fragment), end - offset
    return _pika_decode(buf, offset, end - offset)


def _pika_decode(buf: bytearray, offset: int, length: int) -> tuple[Any, int]:
    data = bytes(buf[offset : offset + length])
    try:
        consumed, value = frame.decode_frame(data)
    except Exception as exc:  # deliberately broad: anything the property decoder raises
        if data[0] != spec.FRAME_HEADER or length < _HEADER_LEN + _CONTENT_HEADER.size:
            raise
        return _unreadable_header(data, exc), length
    if value is None:
        return None, 0
    return value, consumed


def _unreadable_header(data: bytes, exc: Exception) -> frame.Header:
    """A complete content header frame whose properties cannot be decoded: the same body
    size (its body frames follow), properties that say what was wrong."""
    _frame_type, channel, _size = _HEADER.unpack_from(data)
    _class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(data, _HEADER_LEN)
    why = f"{type(exc).__name__}: {exc}"[:500]
    return frame.Header(
        channel, body_size, spec.BasicProperties(headers={BAD_PROPERTIES_HEADER: why})
    )


def send_message(conn: Any, channel_number: int, method: Any, content: tuple[Any, Any]) -> None:
    """Replacement for ``pika.connection.Connection._send_message``: the same frames, bytes
    for bytes (method, content header, body frames of at most the negotiated size)."""
    properties, body = content
    length = len(body)
    out = [
        frame.Method(channel_number, method).marshal(),
        frame.Header(channel_number, length, properties).marshal(),
    ]
    step = conn._body_max_length
    with memoryview(body) as view:
        for start in range(0, length, step):
            piece = view[start : start + step]
            head = _HEADER.pack(spec.FRAME_BODY, channel_number, len(piece))
            out.append(b"".join((head, piece, _FRAME_END)))
            piece.release()
    conn._output_marshaled_frames(out)


# pika internals this module replaces or calls, and the SHA-256 (first 16 hex digits) of
# their source in the pika releases it was tested with (1.4.0 and 1.4.4 are identical;
# 1.3.2 differs). tests/common/test_amqp_wire.py fails when the installed pika's differ:
# then re-read them, re-run the wire tests and the benchmark, and add the new digests.
TESTED_PIKA_SOURCES: dict[str, set[str]] = {
    "Connection._on_data_available": {"4745dcc9c29e66ea"},
    "Connection._send_message": {"306f311f51ed4e53"},
    "Connection._process_frame": {"eabaea15bfa60b8a"},
    "frame.decode_frame": {"fa2babce68b266a0"},
}


def pika_source_digests() -> dict[str, str]:
    """The digests of :data:`TESTED_PIKA_SOURCES`' functions in the pika installed."""
    import hashlib
    import inspect

    funcs = {
        "Connection._on_data_available": PIKA_ON_DATA_AVAILABLE,
        "Connection._send_message": PIKA_SEND_MESSAGE,
        "Connection._process_frame": connection.Connection._process_frame,
        "frame.decode_frame": frame.decode_frame,
    }
    return {
        name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16]
        for name, f in funcs.items()
    }


def install() -> None:
    """Make every pika connection of this process read and write as described above."""
    io_services_utils._AsyncTransportBase._MAX_RECV_BYTES = RECV_BYTES
    io_services_utils._AsyncTransportBase._MAX_CONSUME_BYTES = 4 * RECV_BYTES
    connection.Connection._on_data_available = on_data_available
    connection.Connection._send_message = send_message
