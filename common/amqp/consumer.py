"""The consumer: manual acks after the handler returns, prefetch as the memory bound,
handlers on worker threads so heartbeats keep flowing, reconnect with exponential backoff
and jitter (re-declaring topology), graceful stop that finishes in-flight work and
returns the rest, and dead-lettering with the reason in a header for undecodable or
repeatedly failing messages."""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from common import broker_tls, metrics
from common.amqp.dead_letter import DeadLetters
from common.amqp.delivery import Delivery, FailureCounts, PermanentError
from common.amqp.errors import UnpublishableError
from common.amqp.outage import Outage
from common.amqp.params import BrokerParams, backoff_delay, open_blocking, pump, wait_ready
from common.amqp_wire import BAD_PROPERTIES_HEADER
from common.logging import get_logger
from common.messages import Message, MessageError, decode

log = get_logger(__name__)
# One topology declaration at a time in a process: a role's consumers start together, and
# two channels declaring the same quorum queue at once on a fresh vhost made the broker
# close one of them with 541 INTERNAL_ERROR (it recovered on retry, logging an error).
_DECLARING = threading.Lock()


Handler = Callable[[Message, Delivery], None]


@dataclass
class _Work:
    delivery: Delivery
    done: threading.Event = field(default_factory=threading.Event)


class Consumer:
    """Consume ``queues`` with a handler that runs on worker threads.

    A message is acked only after the handler returned. Undecodable messages and
    :class:`PermanentError` go to the DLQ at once with the reason in the
    ``x-vmbackup-error`` header; other handler errors are retried (requeued after a
    short backoff) until the delivery limit, then dead-lettered with the last reason.
    """

    def __init__(
        self,
        params: BrokerParams,
        queues: Sequence[str],
        handler: Handler,
        *,
        expect: tuple[type[Message], ...] | None = None,
        prefetch: int = 8,
        workers: int = 2,
        declare: Callable[[BlockingChannel], None] | None = None,
        name: str = "vmbackup-consumer",
        exclusive_reply_queue: bool = False,
        exclusive_bindings: Sequence[tuple[str, str]] = (),
        on_connected: Callable[[int], None] | None = None,
    ) -> None:
        if not queues and not exclusive_reply_queue:
            raise ValueError("a consumer needs at least one queue")
        self.params = params
        self.queues = list(queues)
        self.handler = handler
        self.expect = expect
        self.prefetch = max(prefetch, 1)
        self.n_workers = max(workers, 1)
        self.declare = declare
        self.name = name
        self.exclusive_reply_queue = exclusive_reply_queue
        self.exclusive_bindings = list(exclusive_bindings)  # (exchange, routing key)
        # Called on the I/O thread after each (re)connect, with the connection number.
        self.on_connected = on_connected
        self.reply_queue_name: str | None = None
        self.error: Exception | None = None  # the fatal error that ended run(), if any
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._work: queue.Queue[_Work | None] = queue.Queue()
        self._generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._dlq = DeadLetters(params, name)
        self._settle_queue: collections.deque[tuple[Delivery, bool]] = collections.deque()
        self._settle_lock = threading.Lock()
        self._settle_scheduled = False
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._outage = Outage("consumer", name)
        self._failures = FailureCounts()
        self._attempt = 0
        self._started = False

    # -- lifecycle --
    def start(self) -> Consumer:
        """Run in a background thread; returns self. A fatal error ends up in ``error``."""
        self._thread = threading.Thread(target=self._run_caught, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Wait until consuming; raises the fatal error at once if ``run`` ended with one;
        False at once when stopped meanwhile."""
        return wait_ready(self.ready, timeout, lambda: self.error, self._stop)

    def _run_caught(self) -> None:
        with contextlib.suppress(broker_tls.BrokerCertificateError):  # kept in self.error
            self.run()

    @property
    def stopping(self) -> bool:
        """stop() was called (a signal during start-up, say)."""
        return self._stop.is_set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking messages, finish in-flight work, return the rest. Any thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM via :func:`stop_on_signals`)."""
        self._workers = [
            threading.Thread(target=self._worker_loop, name=f"{self.name}-w{i}", daemon=True)
            for i in range(self.n_workers)
        ]
        for w in self._workers:
            w.start()
        try:
            while not self._stop.is_set():
                try:
                    self._connect_and_consume()
                except broker_tls.BrokerCertificateError as exc:
                    # Will not verify on a retry either: surface it instead of looping.
                    log.error("consumer refuses the broker", consumer=self.name, error=str(exc))
                    self.error = exc
                    raise
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self.ready.clear()
                    self._drop_connection()
                    if self._stop.is_set():
                        break
                    delay = backoff_delay(self._attempt, self.params.reconnect_max)
                    self._attempt += 1
                    self._outage.failed(str(exc) or repr(exc), retry_in=delay)
                    self._stop.wait(delay)
        finally:
            for _ in self._workers:
                self._work.put(None)
            for w in self._workers:
                w.join(timeout=60)
            self._dlq.close()

    # -- I/O thread --
    def _connect_and_consume(self) -> None:
        conn = open_blocking(self.params, self.name)
        self._generation += 1
        gen = self._generation
        self._conn = conn
        ch = conn.channel()
        self._channel = ch
        if self.declare is not None:
            with _DECLARING:
                self.declare(ch)
        ch.basic_qos(prefetch_count=self.prefetch)
        queues = list(self.queues)
        if self.exclusive_reply_queue:
            res = ch.queue_declare("", exclusive=True, auto_delete=True)
            self.reply_queue_name = res.method.queue
            for exchange, key in self.exclusive_bindings:
                ch.queue_bind(self.reply_queue_name, exchange, routing_key=key)
            queues.append(self.reply_queue_name)
        tags = []
        for q in queues:
            tags.append(
                ch.basic_consume(
                    q, lambda c, m, p, b, q=q: self._on_message(q, gen, m, p, b), auto_ack=False
                )
            )
        if self.on_connected is not None:
            self.on_connected(gen)
        self.ready.set()
        self._attempt = 0
        back = self._outage.connected()  # after an outage: that one line is the news
        if not back or not self._started:
            self._started = True  # (lab/stack.py waits for this line)
            log.info("consumer started", consumer=self.name, queues=queues, prefetch=self.prefetch)
        while not self._stop.is_set():
            pump(conn, 0.2)
        # Graceful stop: no new deliveries, finish what runs, give back the rest.
        for tag in tags:
            with contextlib.suppress(Exception):
                ch.basic_cancel(tag)
        self._return_queued(gen)
        deadline = time.monotonic() + 300
        while self._busy() and time.monotonic() < deadline:
            pump(conn, 0.1)
        pump(conn, 0)
        with contextlib.suppress(Exception):
            conn.close()
        self._conn = None
        self._channel = None

    def _busy(self) -> bool:
        with self._in_flight_lock:
            return self._in_flight > 0

    def _take_queued(self, each: Callable[[_Work], None] = lambda _item: None) -> None:
        """Take every message still waiting for a worker, ``each`` before it counts as done
        (the stop sentinel stays queued for the workers)."""
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._work.put(None)
                return
            each(item)
            with self._in_flight_lock:
                self._in_flight -= 1

    def _return_queued(self, gen: int) -> None:
        returned = 0

        def nack(item: _Work) -> None:
            nonlocal returned
            d = item.delivery
            if d.generation == gen and self._channel is not None:
                with contextlib.suppress(Exception):
                    self._channel.basic_nack(d.tag, requeue=True)
                    returned += 1

        self._take_queued(nack)
        if returned:
            log.info("returned unstarted messages", consumer=self.name, count=returned)

    def _drop_connection(self) -> None:
        conn = self._conn
        self._conn = None
        self._channel = None
        # Settles queued for the dead connection will never run there: count them done.
        self._flush_settles(io_thread=False)
        # Everything delivered on the old connection will be redelivered by the broker.
        self._take_queued()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _on_message(
        self, q: str, gen: int, method: Any, props: BasicProperties, body: bytes
    ) -> None:
        headers = dict(props.headers or {})
        count = headers.get("x-delivery-count", 0)
        d = Delivery(
            queue=q,
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
            delivery_count=int(count) if isinstance(count, int) else 0,
            headers=headers,
            properties=props,
            body=body,
            tag=method.delivery_tag,
            generation=gen,
        )
        with self._in_flight_lock:
            self._in_flight += 1
        self._work.put(_Work(d))

    def _settle(self, d: Delivery, ack: bool) -> None:
        """Ack or requeue on the I/O thread, if the delivery's connection still lives.

        Settles are queued and flushed by one I/O-thread callback, so a burst of small
        messages costs one wake-up, not one per message.
        """
        with self._settle_lock:
            self._settle_queue.append((d, ack))
            if self._settle_scheduled:
                return
            self._settle_scheduled = True
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(self._flush_settles)
                return
            except Exception:  # connection already gone: the broker redelivers
                pass
        self._flush_settles(io_thread=False)

    def _flush_settles(self, io_thread: bool = True) -> None:
        with self._settle_lock:
            batch = list(self._settle_queue)
            self._settle_queue.clear()
            self._settle_scheduled = False
        ch = self._channel if io_thread else None
        for d, ack in batch:
            try:
                if d.generation == self._generation and ch is not None and ch.is_open:
                    if ack:
                        ch.basic_ack(d.tag)
                    else:
                        ch.basic_nack(d.tag, requeue=True)
            except Exception as exc:  # the broker redelivers what we could not settle
                log.warning("cannot settle delivery", queue=d.queue, error=repr(exc))
            finally:
                with self._in_flight_lock:
                    self._in_flight -= 1

    # -- worker threads --
    def _worker_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            d = item.delivery
            if d.generation != self._generation:
                with self._in_flight_lock:
                    self._in_flight -= 1
                continue
            self._handle(d)

    def _handle(self, d: Delivery) -> None:
        t0 = time.monotonic()
        bad = d.headers.get(BAD_PROPERTIES_HEADER)
        if bad is not None:  # see common/amqp_wire.py
            self._dead_letter(d, f"undecodable properties: {bad}", "undecodable")
            return
        try:
            msg = decode(d.body)
            if self.expect is not None and not isinstance(msg, self.expect):
                wanted = ", ".join(k.KIND for k in self.expect)
                raise MessageError(f"queue {d.queue} takes {wanted}, got {msg.KIND!r}")
        except MessageError as exc:
            self._dead_letter(d, f"undecodable: {exc}", "undecodable")
            return
        try:
            self.handler(msg, d)
        except PermanentError as exc:
            self._dead_letter(d, f"{msg.KIND}: {exc}", "permanent")
            return
        except UnpublishableError as exc:
            # Its reply or result can never be sent (e.g. an over-long reply_to): the same
            # every time, so it goes to the DLQ at once instead of being retried.
            self._dead_letter(d, f"{msg.KIND}: its answer cannot be published: {exc}", "permanent")
            return
        except Exception as exc:
            reason = f"{msg.KIND}: {type(exc).__name__}: {exc}"
            attempt = self._failures.failed(d)
            if attempt >= self.params.delivery_limit:
                why = f"failed {attempt} times; last: {reason}"
                self._dead_letter(d, why, "limit")
                return
            log.warning(
                "handler failed, message will be retried",
                queue=d.queue,
                kind=msg.KIND,
                attempt=attempt,
                error=reason,
            )
            metrics.AMQP_REJECTED.labels(queue=d.queue, reason="retry").inc()
            self._stop.wait(min(5.0, 0.1 * 2**d.delivery_count))
            self._settle(d, ack=False)
            return
        metrics.AMQP_HANDLER_SECONDS.labels(queue=d.queue).observe(time.monotonic() - t0)
        metrics.AMQP_CONSUMED.labels(queue=d.queue, kind=msg.KIND).inc()
        metrics.AMQP_CONSUMED_BYTES.labels(queue=d.queue, kind=msg.KIND).inc(len(d.body))
        self._settle(d, ack=True)

    def _dead_letter(self, d: Delivery, reason: str, label: str) -> None:
        self._settle(d, ack=self._dlq.park(d, reason, label))


def stop_on_signals(*stoppables: Any) -> None:
    """On SIGTERM/SIGINT call ``stop()`` on each (main thread only)."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        for s in stoppables:
            threading.Thread(target=s.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
