"""The messaging core on the real RabbitMQ: nothing lost, poison parked, heartbeats alive."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from hypothesis import Phase, find, settings
from pika.adapters.blocking_connection import BlockingChannel

from common import amqp
from common import messages as m
from common.amqp import BrokerParams, Consumer, Delivery, Publisher
from tests.common.test_messages import STRATEGIES
from tests.conftest import rabbitmqctl

pytestmark = pytest.mark.integration

Q = "vmbackup.tasks.host.esx-1"


def declare(params: BrokerParams) -> None:
    amqp.declare_topology(params, task_keys=["host.esx-1"])


def queue_depth(params: BrokerParams, queue: str) -> int:
    conn = amqp.open_blocking(params, "test-peek")
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def drain_dlq(params: BrokerParams) -> list[tuple[dict, bytes]]:
    conn = amqp.open_blocking(params, "test-dlq")
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(amqp.QUEUE_DLQ, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers or {}, body))
    finally:
        conn.close()


def wait_until(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def event(i: int) -> m.JobEvent:
    return m.JobEvent(job_id="job", event="e", vm="vm", disk_key=i, ts=1.0)


def test_each_kind_round_trips_through_the_broker(broker: BrokerParams) -> None:
    declare(broker)
    # the first example of each kind, unshrunk (shrinking an always-true find is seconds)
    first = settings(max_examples=1, phases=[Phase.generate], database=None)
    examples = [find(s, lambda _x: True, settings=first) for s in STRATEGIES.values()]
    got: list[m.Message] = []
    with Publisher(broker) as pub:
        pub.flush([pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", msg) for msg in examples])
    c = Consumer(broker, [Q], lambda msg, d: got.append(msg), workers=1).start()
    try:
        wait_until(lambda: len(got) == len(examples), what="all kinds consumed")
    finally:
        c.stop()
    assert got == examples


def test_malformed_message_is_parked_with_reason_and_the_rest_flow(broker: BrokerParams) -> None:
    declare(broker)
    got: list[int] = []
    with Publisher(broker) as pub:
        futs = [pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(0))]
        futs.append(pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", b"\xc1 definitely not msgpack"))
        futs.append(pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", m.HaveReply("q", [True])))
        futs += [pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(i)) for i in (1, 2)]
        pub.flush(futs)
    c = Consumer(
        broker, [Q], lambda msg, d: got.append(msg.disk_key), expect=(m.JobEvent,), workers=1
    ).start()
    try:
        wait_until(lambda: sorted(got) == [0, 1, 2], what="good messages")
        wait_until(lambda: queue_depth(broker, amqp.QUEUE_DLQ) == 2, what="two in the DLQ")
    finally:
        c.stop()
    parked = drain_dlq(broker)
    reasons = sorted(h[amqp.HEADER_ERROR] for h, _ in parked)
    assert reasons[0].startswith("undecodable: not valid msgpack")
    assert "takes job-event, got 'have-reply'" in reasons[1]
    assert all(h[amqp.HEADER_SOURCE_QUEUE] == Q for h, _ in parked)
    assert b"\xc1 definitely not msgpack" in [body for _, body in parked]
    assert queue_depth(broker, Q) == 0


def test_repeatedly_failing_message_reaches_the_dlq_with_its_last_error(
    broker: BrokerParams,
) -> None:
    broker = BrokerParams(**{**broker.__dict__, "delivery_limit": 3})
    declare(broker)
    attempts: list[int] = []
    ok: list[int] = []

    def handler(msg: m.Message, d: Delivery) -> None:
        assert isinstance(msg, m.JobEvent)
        if msg.disk_key == 13:
            attempts.append(d.delivery_count)
            raise OSError("disk on fire")
        ok.append(msg.disk_key)

    with Publisher(broker) as pub:
        pub.flush([pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(i)) for i in (12, 13, 14)])
    c = Consumer(broker, [Q], handler, workers=1).start()
    try:
        wait_until(lambda: queue_depth(broker, amqp.QUEUE_DLQ) == 1, what="poison in the DLQ")
        wait_until(lambda: sorted(ok) == [12, 14], what="the others")
    finally:
        c.stop()
    ((headers, _),) = drain_dlq(broker)
    assert headers[amqp.HEADER_ERROR] == "failed 3 times; last: job-event: OSError: disk on fire"
    assert attempts == [0, 1, 2]


def test_permanent_error_is_parked_at_once(broker: BrokerParams) -> None:
    declare(broker)
    calls: list[int] = []

    def handler(msg: m.Message, d: Delivery) -> None:
        calls.append(1)
        raise amqp.PermanentError("snapshot file is gone")

    with Publisher(broker) as pub:
        pub.publish_sync(amqp.EXCHANGE_TASKS, "host.esx-1", event(1))
    c = Consumer(broker, [Q], handler, workers=1).start()
    try:
        wait_until(lambda: queue_depth(broker, amqp.QUEUE_DLQ) == 1, what="DLQ")
    finally:
        c.stop()
    ((headers, _),) = drain_dlq(broker)
    assert headers[amqp.HEADER_ERROR] == "job-event: snapshot file is gone"
    assert calls == [1]


def test_long_handler_keeps_the_connection_and_is_not_redelivered(broker: BrokerParams) -> None:
    broker = BrokerParams(**{**broker.__dict__, "heartbeat": 2})
    declare(broker)
    seen: list[tuple[int, bool]] = []

    def slow(msg: m.Message, d: Delivery) -> None:
        seen.append((d.delivery_count, d.redelivered))
        time.sleep(6.0)  # three heartbeat intervals

    with Publisher(broker) as pub:
        pub.publish_sync(amqp.EXCHANGE_TASKS, "host.esx-1", event(7))
    c = Consumer(broker, [Q], slow, workers=1).start()
    try:
        wait_until(lambda: len(seen) == 1, what="delivery")
        gen = c._generation
        wait_until(lambda: queue_depth(broker, Q) == 0 and not c._busy(), timeout=30, what="ack")
        time.sleep(3)  # a redelivery would show up here
        assert c._generation == gen, "the connection was lost during the long handler"
    finally:
        c.stop()
    assert seen == [(0, False)]


def test_dropped_connections_lose_nothing(broker: BrokerParams) -> None:
    declare(broker)
    n = 600
    processed: list[int] = []
    lock = threading.Lock()

    def handler(msg: m.Message, d: Delivery) -> None:
        time.sleep(0.003)
        with lock:
            processed.append(msg.disk_key)

    c = Consumer(broker, [Q], handler, prefetch=20, workers=2).start()
    published: list[int] = []

    def publish_all() -> None:
        with Publisher(broker, window=32) as pub:
            futs = []
            for i in range(n):
                futs.append(pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(i)))
                if i % 50 == 0:
                    time.sleep(0.05)
            pub.flush(futs, timeout=120)
            published.extend(range(n))

    t = threading.Thread(target=publish_all)
    t.start()
    try:
        for _ in range(3):
            wait_until(lambda: len(processed) > 50, what="progress")
            rabbitmqctl("close_all_connections", "--vhost", broker.vhost, "test drop")
            time.sleep(0.5)
        t.join(180)
        assert published == list(range(n)), "publisher did not get every confirm"
        wait_until(lambda: set(processed) == set(range(n)), timeout=120, what="all processed")
        wait_until(lambda: queue_depth(broker, Q) == 0, what="queue drained")
    finally:
        c.stop()
    assert queue_depth(broker, amqp.QUEUE_DLQ) == 0
    assert len(processed) >= n  # duplicates are allowed (and harmless), losses are not


def test_sigterm_finishes_in_flight_and_returns_the_rest(
    broker: BrokerParams, tmp_path: Path
) -> None:
    declare(broker)
    with Publisher(broker) as pub:
        pub.flush([pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(i)) for i in range(8)])
    log = tmp_path / "consumer.log"
    log.touch()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.common.sigterm_consumer", broker.url, Q, str(log)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        wait_until(lambda: "start" in log.read_text(), timeout=30, what="first message")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    lines = log.read_text().split()
    started = {int(v) for k, v in zip(lines[::2], lines[1::2], strict=False) if k == "start"}
    done = {int(v) for k, v in zip(lines[::2], lines[1::2], strict=False) if k == "done"}
    assert started and started == done, "an in-flight message was not finished"
    assert lines[-1] == "exited"
    wait_until(lambda: queue_depth(broker, Q) == 8 - len(done), what="unstarted messages returned")
    # The returned ones are all there, none lost.
    rest: list[int] = []
    conn = pika.BlockingConnection(broker.pika_params("test-rest"))
    ch = conn.channel()
    while True:
        method, _props, body = ch.basic_get(Q, auto_ack=True)
        if method is None:
            break
        rest.append(m.decode(body, expect=m.JobEvent).disk_key)
    conn.close()
    assert sorted(rest + sorted(done)) == list(range(8))


def test_waiting_requests_learn_at_once_that_their_reply_queue_is_gone(
    broker: BrokerParams,
) -> None:
    """After a reconnect the exclusive reply queue has a new name: a request still waiting
    fails with ReplyLost (so the caller re-sends now) instead of waiting out its timeout."""
    rq = amqp.ReplyQueue(broker, name="test-replies")
    try:
        first = rq.name
        fut = rq.expect("q-1")
        t0 = time.monotonic()
        rabbitmqctl("close_all_connections", "--vhost", broker.vhost, "test drop")
        with pytest.raises(amqp.ReplyLost):
            fut.result(timeout=60)
        assert time.monotonic() - t0 < 30
        assert rq.name != first
        # the new queue works: a reply to it reaches a new waiter
        again = rq.expect("q-1")
        with Publisher(broker) as pub:
            pub.publish_sync("", rq.name, m.HaveReply("q-1", [True]), persistent=False)
        assert again.result(timeout=30) == m.HaveReply("q-1", [True])
    finally:
        rq.close()


def test_pika_reads_the_socket_in_large_pieces() -> None:
    """common.amqp raises a private pika read size (4 KiB -> 256 KiB: a third of a writer's
    CPU went into receiving chunk batches 4 KiB at a time). Fail loudly if a pika upgrade
    stops reading that attribute, instead of silently losing the gain."""
    import inspect

    from pika.adapters.utils import io_services_utils as io

    assert io._AsyncTransportBase._MAX_RECV_BYTES == amqp.RECV_BYTES >= 256 * 1024
    consume = inspect.getsource(io._AsyncTransportBase._consume)
    assert "self._MAX_RECV_BYTES" in consume and "self._MAX_CONSUME_BYTES" in consume


def test_pumping_a_connection_the_broker_closed_raises_a_connection_error(
    broker: BrokerParams,
) -> None:
    """pika 1.x answers later calls on a connection the broker closed with
    ValueError("Timeout closed before call"); once it killed a consumer's I/O thread (the
    close had been consumed by an ack in a callback). amqp.pump turns it into a connection
    error, which the consumer's loop reconnects on."""
    conn = amqp.open_blocking(broker, "pump-test")
    conn.channel()
    rabbitmqctl("close_all_connections", "--vhost", broker.vhost, "test drop")
    time.sleep(1)
    for _ in range(3):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            amqp.pump(conn, 0.2)


def test_close_right_after_start_leaves_no_connection_thread(broker: BrokerParams) -> None:
    """close() racing the I/O thread's (re)connect: the connection the thread is opening
    must be shut down too, not left running with its thread."""
    leaked = 0
    for _ in range(20):
        pub = Publisher(broker, name="test-close-race")
        pub.close(timeout=3)
        leaked += pub._thread.is_alive()
    assert leaked == 0


def test_a_process_declares_its_topology_one_consumer_at_a_time(broker: BrokerParams) -> None:
    """A role's consumers start together; on a fresh vhost two channels declaring the same
    quorum queues at once made the broker close one with 541 INTERNAL_ERROR."""
    spans: list[tuple[float, float]] = []

    def declare(ch: BlockingChannel) -> None:
        t0 = time.monotonic()
        amqp.declare_base(ch, broker)
        time.sleep(0.2)  # a slow declaration: the others must wait for it
        spans.append((t0, time.monotonic()))

    consumers = [
        Consumer(broker, [amqp.QUEUE_COMMITS], lambda _m, _d: None, declare=declare, name=f"c{i}")
        for i in range(3)
    ]
    try:
        for c in consumers:
            c.start()
        assert all(c.wait_ready(30) for c in consumers)
    finally:
        for c in consumers:
            c.stop(10)
    spans.sort()
    assert len(spans) == 3
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_a_writer_stopped_while_it_starts_returns_cleanly(tmp_path: Path) -> None:
    """SIGTERM while the broker is not yet reachable: the writer stops (exit 0), it does
    not fail with "broker not reachable"."""
    from repository.repository import Repository
    from repository_writer.service import WriterService

    nowhere = BrokerParams(url="amqp://guest:guest@127.0.0.1:1/", reconnect_max=0.5)
    svc = WriterService(Repository.init(tmp_path / "repo"), nowhere, n_shards=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            svc.start(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    svc.close()  # stops the consumers, and the reply publisher still trying to connect
    t.join(30)
    assert not t.is_alive() and errors == []
