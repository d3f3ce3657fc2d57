"""A message that can never be published fails at once and blocks nothing behind it;
the consumer parks what it cannot answer in the DLQ. Real RabbitMQ, own vhost per test."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
from pika.spec import FRAME_MAX_SIZE, BasicProperties

from common import amqp, metrics
from common.amqp import (
    HEADER_ERROR,
    QUEUE_DLQ,
    BrokerParams,
    Consumer,
    Delivery,
    Publisher,
    UnpublishableError,
)
from common.messages import JobEvent, Message, encode

pytestmark = pytest.mark.integration
QUEUE = "poison-test"
OUT = "poison-out"  # where the handlers below send their answers


def _declare(params: BrokerParams) -> None:
    conn = amqp.open_blocking(params, "test-declare")
    try:
        ch = conn.channel()
        amqp.declare_base(ch, params)
        ch.queue_declare(QUEUE, durable=True)
        ch.queue_declare(OUT, durable=True)
    finally:
        conn.close()


def _count(params: BrokerParams, queue: str) -> int:
    conn = amqp.open_blocking(params, "test-count")
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def _dropped(reason: str) -> float:
    return metrics.AMQP_PUBLISH_DROPPED.labels(reason=reason)._value.get()


EVENT = JobEvent("job-1", "started", "vm", 0, 1.0)
LONG = "q" * 256  # one byte over AMQP's short string


@pytest.mark.parametrize(
    ("kw", "reason", "text"),
    [
        ({"routing_key": LONG}, "bad_name", "routing key of 256 bytes"),
        ({"exchange": "é" * 128}, "bad_name", "exchange of 256 bytes"),
        ({"correlation_id": LONG}, "bad_properties", "ShortStringTooLong"),
        ({"reply_to": LONG}, "bad_properties", "ShortStringTooLong"),
        ({"headers": {"k" * 300: 1}}, "bad_properties", "ShortStringTooLong"),
        ({"headers": {"x": object()}}, "bad_properties", "UnsupportedAMQPField"),
        ({"headers": {"x": 2**70}}, "bad_properties", "cannot encode"),
        ({"headers": {"x": "\ud800"}}, "bad_properties", "UnicodeEncodeError"),
        ({"headers": {"x": "y" * 200_000}}, "bad_properties", "do not fit"),
        ({"body": b"z" * 4097}, "too_large", "over broker.max_message_bytes 4096"),
    ],
)
def test_unpublishable_message_fails_at_once_and_blocks_nothing(
    broker: BrokerParams, kw: dict[str, Any], reason: str, text: str
) -> None:
    params = BrokerParams(**{**broker.__dict__, "max_message_bytes": 4096})
    _declare(params)
    before = _dropped(reason)
    with Publisher(params, name="test-poison", window=4) as pub:
        assert pub.wait_ready(30)
        exchange = kw.pop("exchange", "")
        key = kw.pop("routing_key", QUEUE)
        body: Message | bytes = kw.pop("body", EVENT)
        bad = pub.publish(exchange, key, body, **kw)
        # at once: never put back at the head of the queue to be retried
        with pytest.raises(UnpublishableError, match=text) as err:
            bad.result(timeout=10)
        assert err.value.reason == reason
        # more than a window's worth of good messages go out behind it
        pub.flush([pub.publish("", QUEUE, EVENT) for _ in range(10)], timeout=30)
    assert _dropped(reason) == before + 1
    assert _count(params, QUEUE) == 10


def test_handler_whose_answer_cannot_be_published_is_dead_lettered(
    broker: BrokerParams,
) -> None:
    """A handler that publishes an answer named by the message (an over-long reply queue)
    gets UnpublishableError: the message goes to the DLQ at once, not back to its queue, and
    the next message is answered."""
    _declare(broker)
    handled: list[str] = []
    pub = Publisher(broker, name="test-answers")

    def handler(msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, JobEvent)
        handled.append(msg.vm)
        pub.publish_sync("", msg.vm, EVENT, timeout=10)  # the "reply queue" is the vm field

    consumer = Consumer(broker, [QUEUE], handler, name="test-poison-consumer").start()
    try:
        assert consumer.ready.wait(30)
        with Publisher(broker, name="test-client") as client:
            client.publish_sync("", QUEUE, JobEvent("job-1", "e", LONG, 0, 1.0))
            client.publish_sync("", QUEUE, JobEvent("job-1", "e", OUT, 0, 1.0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_count(broker, QUEUE_DLQ) + _count(broker, OUT)) < 2:
            time.sleep(0.1)
        assert _count(broker, OUT) == 1  # the good one was answered
        assert sorted(handled) == sorted([LONG, OUT])  # each handled once: no retry
        conn = amqp.open_blocking(broker, "test-dlq")
        try:
            _m, props, body = conn.channel().basic_get(QUEUE_DLQ, auto_ack=True)
        finally:
            conn.close()
        assert body == encode(JobEvent("job-1", "e", LONG, 0, 1.0))
        why = props.headers[HEADER_ERROR]
        assert "cannot be published" in why and "routing key of 256 bytes" in why, why
        assert _count(broker, QUEUE) == 0
    finally:
        consumer.stop(10)
        pub.close()


def test_dead_letter_keeps_a_message_whose_headers_cannot_go_out_again(
    broker: BrokerParams,
) -> None:
    """The DLQ publish adds the reason to the message's own headers; when those leave no
    room in a frame the message is parked with the reason only (before: requeued for ever)."""
    _declare(broker)
    consumer = Consumer(
        broker, [QUEUE], lambda _m, _d: None, name="test-dlq-consumer", expect=(JobEvent,)
    ).start()
    try:
        assert consumer.ready.wait(30)
        conn = amqp.open_blocking(broker, "test-raw")
        try:
            ch = conn.channel()
            # undecodable, with headers that nearly fill a frame: ours no longer fit
            base = sum(len(p) for p in BasicProperties(headers={"pad": ""}).encode())
            pad = "p" * (FRAME_MAX_SIZE - 8 - 12 - base - 16)
            ch.basic_publish("", QUEUE, b"\xc1garbage", BasicProperties(headers={"pad": pad}))
        finally:
            conn.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _count(broker, QUEUE_DLQ) < 1:
            time.sleep(0.1)
        conn = amqp.open_blocking(broker, "test-dlq")
        try:
            _m, props, body = conn.channel().basic_get(QUEUE_DLQ, auto_ack=True)
        finally:
            conn.close()
        assert body == b"\xc1garbage"
        assert "undecodable" in props.headers[HEADER_ERROR] and "pad" not in props.headers
        assert _count(broker, QUEUE) == 0
    finally:
        consumer.stop(10)


class _OutOfRangeTimestamp(BasicProperties):
    """Properties whose one header is a timestamp ('T') pika cannot turn into a datetime:
    the broker accepts it, pika's decoder raises OverflowError."""

    def encode(self) -> list[bytes]:
        table = b"\x01tT" + struct.pack(">Q", 2**63 + 5)
        return [struct.pack(">H", 0x2000), struct.pack(">I", len(table)), table]  # headers only


def test_delivery_with_undecodable_properties_is_dead_lettered(broker: BrokerParams) -> None:
    """Before, pika's decoder error dropped the consumer's connection on every delivery of
    it: redelivered for ever, and nothing behind it was consumed."""
    _declare(broker)
    seen: list[str] = []
    conn = amqp.open_blocking(broker, "test-raw")
    try:
        ch = conn.channel()
        ch.basic_publish(
            "", QUEUE, encode(JobEvent("j", "e", "bad", 0, 1.0)), _OutOfRangeTimestamp()
        )
        ch.basic_publish("", QUEUE, encode(JobEvent("j", "e", "good", 0, 1.0)))
    finally:
        conn.close()

    def handler(msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, JobEvent)
        seen.append(msg.vm)

    consumer = Consumer(broker, [QUEUE], handler, name="test-bad-props").start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or _count(broker, QUEUE_DLQ) < 1):
            time.sleep(0.1)
        assert seen == ["good"]
        conn = amqp.open_blocking(broker, "test-dlq")
        try:
            _m, props, body = conn.channel().basic_get(QUEUE_DLQ, auto_ack=True)
        finally:
            conn.close()
        assert body == encode(JobEvent("j", "e", "bad", 0, 1.0))
        why = props.headers[HEADER_ERROR]
        assert why.startswith("undecodable properties: OverflowError"), why
    finally:
        consumer.stop(10)


def test_always_failing_message_on_a_classic_queue_is_dead_lettered(broker: BrokerParams) -> None:
    """A classic queue (the shard queues, by default) keeps no x-delivery-count, and a
    sender may put any value there (here -1000): the consumer counts failures itself, so a
    message whose handler always fails goes to the DLQ after the delivery limit (before:
    round and round for ever)."""
    params = BrokerParams(**{**broker.__dict__, "delivery_limit": 3})
    _declare(params)
    tries: list[str] = []

    def handler(msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, JobEvent)
        tries.append(msg.vm)
        if msg.vm == "bad":
            raise RuntimeError("this one always fails")

    with Publisher(params, name="test-client") as client:
        for vm in ("bad", "good"):
            headers = {"x-delivery-count": -1000}
            client.publish_sync("", QUEUE, JobEvent("j", "e", vm, 0, 1.0), headers=headers)
    consumer = Consumer(params, [QUEUE], handler, name="test-classic").start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _count(params, QUEUE_DLQ) < 1:
            time.sleep(0.1)
        assert _count(params, QUEUE_DLQ) == 1
        time.sleep(1)  # no further attempt after it was parked
        assert tries.count("bad") == 3 and tries.count("good") == 1, tries
    finally:
        consumer.stop(10)
