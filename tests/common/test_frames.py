"""Frames of common/chunk_stream/frames.py over real socket pairs: any message sequence round-trips
whatever the kernel's cuts; truncation, oversize and garbage are named errors."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.chunk_stream.frames import (
    HEADER,
    FrameReader,
    StreamClosed,
    read_message,
    send_frame,
    send_message,
)
from common.messages import MAX_MESSAGE_BYTES, ChunkAck, ChunkBatch, MessageError, encode
from tests.common.test_messages import STRATEGIES

batches = STRATEGIES[ChunkBatch]


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return a, b


@settings(max_examples=40, deadline=None)
@given(st.lists(batches, max_size=6), st.integers(1, 4096))
def test_messages_round_trip_in_order(msgs: list[ChunkBatch], sndbuf: int) -> None:
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # forces partial sendmsg
    try:
        sender = threading.Thread(target=lambda: [send_message(a, m) for m in msgs])
        sender.start()
        got = [read_message(b, ChunkBatch) for _ in msgs]
        sender.join()
        a.shutdown(socket.SHUT_WR)
        assert got == msgs
        assert read_message(b, ChunkBatch) is None  # closed between frames: a clean end
    finally:
        a.close()
        b.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(batches, min_size=2, max_size=8))
def test_one_reader_reuses_its_buffer_and_earlier_messages_stay_intact(
    msgs: list[ChunkBatch],
) -> None:
    """Frames of any sizes, in any order, through one FrameReader: each message decoded
    earlier is unchanged after later frames were received into the same buffer."""
    a, b = _pair()
    try:
        sender = threading.Thread(target=lambda: [send_message(a, m) for m in msgs])
        sender.start()
        frames = FrameReader(b)
        got = [frames.read(ChunkBatch) for _ in msgs]
        sender.join()
        assert got == msgs
    finally:
        a.close()
        b.close()


def test_big_frame_survives_partial_sends() -> None:
    msg = ChunkBatch("b", "t", "", [(bytes(32), 8 << 20, False, bytes(range(256)) * 32768)])
    a, b = _pair()
    try:
        sender = threading.Thread(target=send_message, args=(a, msg))
        sender.start()
        assert read_message(b, ChunkBatch) == msg
        sender.join()
    finally:
        a.close()
        b.close()


def test_frame_of_more_buffers_than_one_sendmsg_takes() -> None:
    """1,200 payload parts (64 KiB chunks): sent in several system calls, arrives whole."""
    chunks: list[tuple[bytes, int, bool, bytes | bytearray]] = [
        (bytes([i % 256]) * 32, 65536, False, bytearray([i % 256]) * 65536) for i in range(600)
    ]
    msg = ChunkBatch("b", "t", "", chunks)
    a, b = _pair()
    try:
        sender = threading.Thread(target=send_message, args=(a, msg))
        sender.start()
        got = read_message(b, ChunkBatch)
        sender.join()
        assert isinstance(got, ChunkBatch)
        assert [bytes(c[3]) for c in chunks] == [c[3] for c in got.chunks]
    finally:
        a.close()
        b.close()


@given(st.data())
@settings(max_examples=30, deadline=None)
def test_truncated_frame_is_stream_closed(data: st.DataObject) -> None:
    body = encode(data.draw(batches))
    frame = HEADER.pack(len(body)) + body
    cut = data.draw(st.integers(1, len(frame) - 1))
    a, b = _pair()
    try:
        a.sendall(frame[:cut])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(StreamClosed, match="connection closed after"):
            read_message(b, ChunkBatch)
    finally:
        a.close()
        b.close()


def test_oversize_length_is_refused_before_reading_it() -> None:
    a, b = _pair()
    try:
        a.sendall(struct.pack(">I", MAX_MESSAGE_BYTES + 1))
        with pytest.raises(MessageError, match="exceeds limit"):
            read_message(b, ChunkBatch)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xc1garbage", "not valid msgpack"),
        (encode(ChunkAck("b", 0, True, "", 1, 0)), "expected a 'chunk-batch' message"),
        (b"", "not valid msgpack"),
    ],
)
def test_bad_bodies_are_message_errors(body: bytes, error: str) -> None:
    a, b = _pair()
    try:
        send_frame(a, [body])
        with pytest.raises(MessageError, match=error):
            read_message(b, ChunkBatch)
    finally:
        a.close()
        b.close()
