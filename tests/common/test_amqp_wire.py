"""common.amqp_wire cuts the byte stream into the same frames as pika's own reader."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import connection, exceptions, frame, spec

from common import amqp_wire


class FakeConnection:
    """The attributes a connection's reader uses; frames are recorded, not processed."""

    def __init__(self) -> None:
        self._frame_buffer: Any = b""
        self.bytes_received = 0
        self.frames: list[tuple[str, Any]] = []

    def _process_frame(self, value: Any) -> None:
        self.frames.append(describe(value))

    # pika's own reader calls these
    _read_frame = connection.Connection._read_frame
    _trim_frame_buffer = connection.Connection._trim_frame_buffer


def describe(value: Any) -> tuple[str, Any]:
    if isinstance(value, frame.Body):
        return ("body", (value.channel_number, value.fragment))
    if isinstance(value, frame.Header):
        return ("header", (value.channel_number, value.body_size, value.properties.message_id))
    if isinstance(value, frame.Method):
        return ("method", (value.channel_number, type(value.method).__name__))
    if isinstance(value, frame.ProtocolHeader):
        return ("protocol", (value.major, value.minor, value.revision))
    raise AssertionError(value)


def marshal(kind: str, channel: int, data: bytes) -> bytes:
    if kind == "body":
        return frame.Body(channel, data).marshal()
    if kind == "header":
        props = spec.BasicProperties(message_id=data.hex()[:32], delivery_mode=2)
        return frame.Header(channel, len(data) * 1000, props).marshal()
    if kind == "method":
        return frame.Method(
            channel, spec.Basic.Ack(delivery_tag=len(data), multiple=True)
        ).marshal()
    return frame.ProtocolHeader().marshal()


frames = st.lists(
    st.tuples(
        st.sampled_from(["body", "body", "header", "method", "protocol"]),
        st.integers(0, 65535),
        st.binary(max_size=3000),
    ),
    max_size=12,
)


def feed(reader: Any, stream: bytes, cuts: list[int]) -> FakeConnection:
    conn = FakeConnection()
    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        reader(conn, stream[last:cut])
        last = cut
    return conn


@settings(max_examples=300, deadline=None)
@given(frames, st.lists(st.integers(0, 1 << 20), max_size=20))
def test_same_frames_as_pikas_reader_for_any_split(
    spec_frames: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(marshal(*f) for f in spec_frames)
    ours = feed(amqp_wire.on_data_available, stream, cuts)
    pikas = feed(amqp_wire.PIKA_ON_DATA_AVAILABLE, stream, cuts)
    assert ours.frames == pikas.frames
    assert len(ours.frames) == len(spec_frames)
    assert ours.bytes_received == pikas.bytes_received == len(stream)
    assert len(ours._frame_buffer) == 0


def test_a_bad_frame_end_is_refused_like_pika_does() -> None:
    bad = bytearray(frame.Body(1, b"x" * 100).marshal())
    bad[-1] = 0
    with pytest.raises(exceptions.InvalidFrameError):
        amqp_wire.on_data_available(FakeConnection(), bytes(bad))


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    whole = frame.Body(3, b"y" * 5000).marshal()
    conn = FakeConnection()
    amqp_wire.on_data_available(conn, whole[:4000])
    assert conn.frames == [] and len(conn._frame_buffer) == 4000
    amqp_wire.on_data_available(conn, whole[4000:])
    assert conn.frames == [("body", (3, b"y" * 5000))]


def test_a_reset_in_a_callback_drops_the_old_buffer() -> None:
    """pika re-initialises the connection state (and its buffer) when a frame closes it."""

    class Resetting(FakeConnection):
        def _process_frame(self, value: Any) -> None:
            super()._process_frame(value)
            self._frame_buffer = b""

    conn = Resetting()
    two = frame.Body(1, b"a").marshal() + frame.Body(1, b"b").marshal()
    amqp_wire.on_data_available(conn, two)
    assert conn.frames == [("body", (1, b"a"))]
    assert conn._frame_buffer == b""


def test_installed_on_every_pika_connection() -> None:
    import common.amqp

    common.amqp.BrokerParams().pika_params("probe")  # what every connection is opened from
    assert common.amqp.RECV_BYTES == amqp_wire.RECV_BYTES
    assert connection.Connection._on_data_available is amqp_wire.on_data_available


class FrameSink:
    """What a connection's writer uses: the negotiated body size and the output."""

    def __init__(self, body_max: int) -> None:
        self._body_max_length = body_max
        self.out: list[bytes] = []
        self.bytes_sent = 0
        self.frames_sent = 0

    def _output_marshaled_frames(self, frames: list[bytes]) -> None:
        self.out.extend(frames)

    def _adapter_emit_data(self, data: bytes) -> None:  # pika's own path
        self.out.append(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 700), st.integers(0, 65535))
def test_messages_are_written_as_the_same_frames_as_pika_writes(
    body: bytes, body_max: int, channel: int
) -> None:
    props = spec.BasicProperties(message_id="m-1", delivery_mode=1, headers={"a": 1})
    method = spec.Basic.Publish(exchange="x", routing_key="k")
    ours, pikas = FrameSink(body_max), FrameSink(body_max)
    amqp_wire.send_message(ours, channel, method, (props, body))
    amqp_wire.PIKA_SEND_MESSAGE(pikas, channel, method, (props, body))
    assert ours.out == pikas.out
    # and what is written reads back as the same message
    reader = FakeConnection()
    amqp_wire.on_data_available(reader, b"".join(ours.out))
    bodies = [v for k, v in reader.frames if k == "body"]
    assert b"".join(f for _, f in bodies) == body


def test_installed_writer() -> None:
    import common.amqp

    common.amqp.BrokerParams().pika_params("probe")
    assert common.amqp.RECV_BYTES == amqp_wire.RECV_BYTES
    assert connection.Connection._send_message is amqp_wire.send_message


def test_pika_internals_are_the_ones_amqp_wire_was_tested_with() -> None:
    # amqp_wire replaces private pika methods: a pika whose internals changed must fail
    # here, not corrupt frames in production.
    got = amqp_wire.pika_source_digests()
    changed = {k: v for k, v in got.items() if v not in amqp_wire.TESTED_PIKA_SOURCES[k]}
    assert not changed, f"pika internals changed since amqp_wire was tested: {changed}"


def test_install_happens_at_the_first_connection_not_on_import() -> None:
    import subprocess
    import sys

    code = (
        "import pika.connection as c\n"
        "import common.amqp\n"
        "from common import amqp_wire\n"
        "assert c.Connection._on_data_available is amqp_wire.PIKA_ON_DATA_AVAILABLE\n"
        "common.amqp.BrokerParams().pika_params('probe')\n"
        "assert c.Connection._on_data_available is amqp_wire.on_data_available\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
