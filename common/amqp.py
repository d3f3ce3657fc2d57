"""RabbitMQ plumbing (pika) for a pipeline that must lose nothing.

* :func:`declare_topology` and the ``declare_*`` helpers: idempotent exchanges and
  durable quorum queues with a delivery limit and a dead-letter exchange.
* :class:`Publisher`: publisher confirms with a window of unconfirmed messages,
  ``mandatory`` routing (unroutable -> :class:`UnroutableError`), persistent messages
  where asked, bounded retry across reconnects. Its own I/O thread
  (SelectConnection), so any thread may publish.
* :class:`Consumer`: manual acks after the handler returns, prefetch as the memory
  bound, handlers on worker threads so heartbeats keep flowing, reconnect with
  exponential backoff and jitter (re-declaring topology), graceful stop that finishes
  in-flight work and returns the rest, and dead-lettering with the reason in a
  header for undecodable or repeatedly failing messages.
* :class:`ReplyQueue`: an exclusive reply queue with futures keyed by correlation id
  for request/reply (have-queries, chunk acks, commits).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from common import amqp_wire, metrics
from common.logging import get_logger
from common.messages import Message, MessageError, decode, encode
from common.redact import redact_url

log = get_logger(__name__)

# Every pika connection of this process reads 256 KiB at a time and cuts frames without
# re-copying its input (common/amqp_wire.py).
amqp_wire.install()
RECV_BYTES = amqp_wire.RECV_BYTES

# --- names ---------------------------------------------------------------------------
EXCHANGE_TASKS = "vmbackup.tasks"
EXCHANGE_SHARDS = "vmbackup.shards"
EXCHANGE_EVENTS = "vmbackup.events"
# Fanout of TaskWithdrawal messages: every proxy binds its own exclusive queue.
EXCHANGE_WITHDRAWALS = "vmbackup.withdrawals"
EXCHANGE_DLX = "vmbackup.dlx"
QUEUE_DLQ = "vmbackup.dlq"
QUEUE_COMMITS = "vmbackup.commits"

HEADER_ERROR = "x-vmbackup-error"
HEADER_SOURCE_QUEUE = "x-vmbackup-queue"


def task_routing_key(scope: str, name: str) -> str:
    """Routing key of tasks for a host or a datastore: ``host.<name>`` / ``datastore.<name>``."""
    if scope not in ("host", "datastore"):
        raise ValueError(f"task routing scope must be host or datastore, got {scope!r}")
    if not name:
        raise ValueError("task routing needs a host or datastore name")
    return f"{scope}.{name}"


def task_queue(routing_key: str) -> str:
    return f"vmbackup.tasks.{routing_key}"


def results_queue(coordinator_id: str) -> str:
    return f"vmbackup.results.{coordinator_id}"


# --- connection parameters -----------------------------------------------------------


@dataclass(frozen=True)
class BrokerParams:
    """Everything needed to open a connection (built from ``BrokerSettings``)."""

    url: str = "amqp://guest@127.0.0.1:5672/%2F"
    password: str = "guest"
    # The account; "" = the user named in ``url`` (else guest). One account per role
    # (docs/security.md "Broker accounts").
    user: str = ""
    heartbeat: int = 30
    connect_timeout: float = 10.0
    delivery_limit: int = 5
    reconnect_max: float = 30.0
    confirm_window: int = 64
    publish_retries: int = 5

    @classmethod
    def from_settings(cls, s: Any) -> BrokerParams:
        return cls(
            url=s.url,
            password=s.password.value,
            user=s.user.value,
            heartbeat=s.heartbeat_seconds,
            connect_timeout=s.connect_timeout_seconds,
            delivery_limit=s.delivery_limit,
            reconnect_max=s.reconnect_max_seconds,
            confirm_window=s.confirm_window,
            publish_retries=s.publish_retries,
        )

    def __repr__(self) -> str:
        # Never the password, neither the field nor one inside the URL.
        return f"BrokerParams(url={redact_url(self.url)!r}, password=<hidden>)"

    __str__ = __repr__

    @property
    def account(self) -> str:
        """The broker user this process connects as (and stamps as ``user_id``)."""
        return self.user or unquote(urlsplit(self.url).username or "guest")

    @property
    def vhost(self) -> str:
        path = urlsplit(self.url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or (
            5671 if parts.scheme == "amqps" else 5672
        )

    def with_vhost(self, vhost: str) -> BrokerParams:
        parts = urlsplit(self.url)
        url = parts._replace(path="/" + quote(vhost, safe="")).geturl()
        return BrokerParams(**{**self.__dict__, "url": url})

    def pika_params(self, name: str) -> pika.ConnectionParameters:
        parts = urlsplit(self.url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"broker.url must start with amqp:// or amqps://, got {redact_url(self.url)!r}"
            )
        password = unquote(parts.password) if parts.password else self.password
        host, port = self.host_port()
        params = pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.account, password),
        )
        if parts.scheme == "amqps":
            import ssl

            params.ssl_options = pika.SSLOptions(ssl.create_default_context(), parts.hostname)
        params.heartbeat = self.heartbeat
        params.blocked_connection_timeout = max(60.0, 4.0 * self.heartbeat)
        params.socket_timeout = self.connect_timeout
        params.stack_timeout = self.connect_timeout * 2
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name, "product": "vmbackup"}
        return params


def backoff_delay(attempt: int, cap: float, base: float = 0.25) -> float:
    """Exponential backoff with full jitter around the exponential step."""
    step = min(cap, base * (2 ** min(attempt, 16)))
    return step * random.uniform(0.5, 1.0)


def open_blocking(params: BrokerParams, name: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(params.pika_params(name))


def pump(conn: pika.BlockingConnection, time_limit: float) -> None:
    """Run the connection's I/O for up to ``time_limit`` seconds.

    When the broker closes the connection while a callback scheduled from another thread
    (an ack) runs, pika 1.x may raise ``ValueError("Timeout closed before call")`` from
    its closed ioloop instead of a connection error: report it as the connection loss it
    is, so the caller reconnects instead of its thread dying.
    """
    try:
        conn.process_data_events(time_limit=time_limit)
    except ValueError as exc:
        if conn.is_open:
            raise
        raise pika.exceptions.AMQPConnectionError(f"connection closed: {exc}") from exc


# --- topology ------------------------------------------------------------------------


def quorum_args(delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": EXCHANGE_DLX,
    }


def declare_base(ch: BlockingChannel, params: BrokerParams) -> None:
    """Exchanges, the dead-letter queue and the commits queue. Idempotent."""
    ch.exchange_declare(EXCHANGE_DLX, exchange_type="fanout", durable=True)
    ch.queue_declare(QUEUE_DLQ, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(QUEUE_DLQ, EXCHANGE_DLX)
    ch.exchange_declare(EXCHANGE_TASKS, exchange_type="direct", durable=True)
    ch.exchange_declare(EXCHANGE_SHARDS, exchange_type="direct", durable=True)
    ch.exchange_declare(EXCHANGE_EVENTS, exchange_type="topic", durable=True)
    ch.exchange_declare(EXCHANGE_WITHDRAWALS, exchange_type="fanout", durable=True)
    ch.queue_declare(QUEUE_COMMITS, durable=True, arguments=quorum_args(params.delivery_limit))


def declare_task_queue(ch: BlockingChannel, params: BrokerParams, routing_key: str) -> str:
    name = task_queue(routing_key)
    ch.queue_declare(name, durable=True, arguments=quorum_args(params.delivery_limit))
    ch.queue_bind(name, EXCHANGE_TASKS, routing_key=routing_key)
    return name


def declare_shard_queue(
    ch: BlockingChannel, params: BrokerParams, shard: int, *, quorum: bool = True
) -> str:
    """A writer shard queue (chunk batches and have-queries).

    ``quorum=False`` gives a classic durable queue: faster for bulk chunk data that
    needs no broker-side durability (the proxy re-sends on a missing chunk ack).
    """
    from common.sharding import shard_queue, shard_routing_key

    name = shard_queue(shard)
    args = (
        quorum_args(params.delivery_limit)
        if quorum
        else {"x-queue-type": "classic", "x-dead-letter-exchange": EXCHANGE_DLX}
    )
    ch.queue_declare(name, durable=True, arguments=args)
    ch.queue_bind(name, EXCHANGE_SHARDS, routing_key=shard_routing_key(shard))
    return name


def declare_results_queue(ch: BlockingChannel, params: BrokerParams, coordinator_id: str) -> str:
    name = results_queue(coordinator_id)
    ch.queue_declare(name, durable=True, arguments=quorum_args(params.delivery_limit))
    return name


def declare_topology(
    params: BrokerParams,
    *,
    task_keys: Iterable[str] = (),
    shards: Iterable[int] = (),
    shard_quorum: bool = True,
    coordinator_ids: Iterable[str] = (),
) -> None:
    """Declare everything once over a short-lived connection (idempotent)."""
    conn = open_blocking(params, "vmbackup-topology")
    try:
        ch = conn.channel()
        declare_base(ch, params)
        for key in task_keys:
            declare_task_queue(ch, params, key)
        for shard in shards:
            declare_shard_queue(ch, params, shard, quorum=shard_quorum)
        for cid in coordinator_ids:
            declare_results_queue(ch, params, cid)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --- publisher -----------------------------------------------------------------------


class PublishError(RuntimeError):
    """A message could not be confirmed by the broker."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


@dataclass
class _Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    kind: str
    future: Future[None]
    mandatory: bool = True
    attempts: int = 0
    returned: bool = False


class Publisher:
    """Publishes with confirms, keeping up to ``window`` messages unconfirmed.

    ``publish`` returns a Future that completes when the broker confirmed the message
    (or fails with :class:`PublishError`); it blocks only while the window is full.
    Messages in flight when the connection drops are re-sent after reconnecting, up
    to ``publish_retries`` times: consumers must be idempotent (they are, by design).
    """

    def __init__(
        self, params: BrokerParams, *, name: str = "vmbackup-publisher", window: int | None = None
    ) -> None:
        self.params = params
        self.name = name
        self.window = window or params.confirm_window
        self._slots = threading.BoundedSemaphore(self.window)
        self._pending: collections.deque[_Outgoing] = collections.deque()
        self._unconfirmed: dict[int, _Outgoing] = {}
        self._by_message_id: dict[str, _Outgoing] = {}
        self._next_tag = 0
        self._conn: Any = None
        self._channel: Any = None
        self._ready = threading.Event()
        self._closing = False
        self._connect_attempt = 0
        self._lock = threading.Lock()
        self._pump_scheduled = False
        # Unique per message (returns are matched by it); cheaper than a uuid each.
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-"
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- API (any thread) --
    def publish(
        self,
        exchange: str,
        routing_key: str,
        msg: Message | bytes,
        *,
        persistent: bool = True,
        mandatory: bool = True,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        timeout: float | None = None,
    ) -> Future[None]:
        """Queue ``msg``; the future completes on the broker's confirm.

        ``mandatory=False`` is for messages nobody may be listening to (job events):
        the broker then drops an unroutable message instead of returning it as an error.
        ``timeout=0`` never blocks: a full window raises :class:`PublishError`.
        """
        if self._closing:
            raise PublishError("publisher is closed")
        body = encode(msg) if isinstance(msg, Message) else bytes(msg)
        kind = msg.KIND if isinstance(msg, Message) else "raw"
        acquired = self._slots.acquire(blocking=timeout != 0, timeout=timeout or None)
        if not acquired:
            raise PublishError(f"publish window full (waited {timeout or 0}s)")
        props = BasicProperties(
            delivery_mode=2 if persistent else 1,
            content_type="application/msgpack",
            type=kind,
            message_id=f"{self._id_prefix}{next(self._ids)}",
            headers=headers,
            correlation_id=correlation_id,
            reply_to=reply_to,
            timestamp=int(time.time()),
            # The broker refuses a user_id that is not the connection's user, so receivers
            # can trust it to name the sender (writers accept commits only from the
            # coordinator's account).
            user_id=self.params.account,
        )
        fut: Future[None] = Future()
        fut.add_done_callback(lambda _f: self._slots.release())
        out = _Outgoing(exchange, routing_key, body, props, kind, fut, mandatory)
        with self._lock:
            self._pending.append(out)
        self._wake()
        return fut

    def publish_sync(
        self, exchange: str, routing_key: str, msg: Message | bytes, **kw: Any
    ) -> None:
        timeout = kw.pop("timeout", 60.0)
        self.publish(exchange, routing_key, msg, **kw).result(timeout=timeout)

    def flush(self, futures: Iterable[Future[None]], timeout: float | None = None) -> None:
        """Wait for ``futures``; raises the first failure."""
        t0 = time.monotonic()
        for f in futures:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))
            f.result(timeout=left)
        metrics.AMQP_CONFIRM_WAIT_SECONDS.observe(time.monotonic() - t0)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self._ready.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` for outstanding confirms, then close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending and not self._unconfirmed:
                    break
            time.sleep(0.01)
        # Under the lock: the I/O thread either sees _closing before it opens a connection,
        # or has stored that connection here, so its loop gets the shutdown.
        with self._lock:
            self._closing = True
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.ioloop.add_callback_threadsafe(self._shutdown)
        self._thread.join(timeout=timeout)
        self._fail_all(PublishError("publisher closed before the broker confirmed"))

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O thread --
    def _wake(self) -> None:
        # One scheduled pump drains everything queued: no wake-up per message.
        with self._lock:
            if self._pump_scheduled:
                return
            self._pump_scheduled = True
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(self._pump)
                return
            except Exception:  # loop gone: the reconnect pumps what is pending
                pass
        with self._lock:
            self._pump_scheduled = False

    def _run(self) -> None:
        while True:
            self._ready.clear()
            try:
                with self._lock:
                    if self._closing:
                        break
                    self._conn = conn = pika.SelectConnection(
                        self.params.pika_params(self.name),
                        on_open_callback=self._on_open,
                        on_open_error_callback=self._on_open_error,
                        on_close_callback=self._on_closed,
                    )
                conn.ioloop.start()
            except Exception as exc:  # pragma: no cover - defensive: keep the thread alive
                log.warning("publisher loop error", error=repr(exc))
            self._channel = None
            if self._closing:
                break
            self._requeue_unconfirmed()
            delay = backoff_delay(self._connect_attempt, self.params.reconnect_max)
            self._connect_attempt += 1
            time.sleep(delay)

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, conn: Any, err: BaseException) -> None:
        if not self._closing:  # else close() aborted the attempt
            log.warning("publisher cannot connect", error=str(err) or repr(err))
        conn.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        if not self._closing:
            log.warning("publisher connection closed", reason=str(reason))
            metrics.AMQP_RECONNECTS.labels(role=self.name).inc()
        conn.ioloop.stop()

    def _on_channel_open(self, ch: Any) -> None:
        self._channel = ch
        self._next_tag = 0
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        self._connect_attempt = 0
        self._ready.set()
        self._pump()

    def _on_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self._channel = None
        self._ready.clear()
        if self._closing:
            return
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # The channel went down with its connection: the unconfirmed messages are
            # re-sent after the reconnect (_requeue_unconfirmed), not failed here.
            return
        # A channel error (e.g. publishing to a missing exchange) closes only the channel;
        # sending the same messages again would fail the same way.
        log.warning("publisher channel closed by the broker", reason=str(reason))
        text = str(reason)
        with self._lock:
            failed = list(self._unconfirmed.values())
            self._unconfirmed.clear()
        for out in failed:
            self._by_message_id.pop(out.properties.message_id, None)
            self._set_exception(out, PublishError(f"channel closed by broker: {text}"))
        if self._conn is not None and self._conn.is_open:
            self._conn.channel(on_open_callback=self._on_channel_open)

    def _pump(self) -> None:
        with self._lock:
            self._pump_scheduled = False
        ch = self._channel
        if ch is None or not ch.is_open or not self._ready.is_set():
            return
        while True:
            with self._lock:
                if not self._pending:
                    return
                out = self._pending.popleft()
            if out.future.done():  # cancelled by the caller
                continue
            out.attempts += 1
            self._next_tag += 1
            self._unconfirmed[self._next_tag] = out
            self._by_message_id[out.properties.message_id] = out
            try:
                ch.basic_publish(
                    out.exchange, out.routing_key, out.body, out.properties, mandatory=out.mandatory
                )
            except Exception as exc:
                self._unconfirmed.pop(self._next_tag, None)
                self._by_message_id.pop(out.properties.message_id, None)
                with self._lock:
                    self._pending.appendleft(out)
                log.warning("publish failed, will retry", error=repr(exc))
                return

    def _on_return(self, _ch: Any, _method: Any, props: BasicProperties, _body: bytes) -> None:
        out = self._by_message_id.get(props.message_id)
        if out is not None:
            out.returned = True

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ack = isinstance(method, Basic.Ack)
        tags = (
            [t for t in self._unconfirmed if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            out = self._unconfirmed.pop(tag, None)
            if out is None:
                continue
            self._by_message_id.pop(out.properties.message_id, None)
            if out.returned:
                metrics.AMQP_PUBLISH_FAILURES.labels(reason="unroutable").inc()
                self._set_exception(
                    out,
                    UnroutableError(
                        f"no queue bound for {out.kind} to exchange {out.exchange!r} "
                        f"with routing key {out.routing_key!r}"
                    ),
                )
            elif ack:
                metrics.AMQP_PUBLISHED.labels(kind=out.kind).inc()
                self._set_result(out)
            else:
                metrics.AMQP_PUBLISH_FAILURES.labels(reason="nack").inc()
                self._retry_or_fail(out, "nacked by the broker")
        self._pump()

    def _retry_or_fail(self, out: _Outgoing, why: str) -> None:
        if out.attempts >= self.params.publish_retries:
            self._set_exception(out, PublishError(f"{why} after {out.attempts} attempts"))
        else:
            with self._lock:
                self._pending.appendleft(out)

    def _requeue_unconfirmed(self) -> None:
        # Lost with the connection: nobody knows if the broker took them; send again.
        with self._lock:
            lost = [self._unconfirmed[t] for t in sorted(self._unconfirmed)]
            self._unconfirmed.clear()
        self._by_message_id.clear()
        for out in reversed(lost):
            metrics.AMQP_PUBLISH_FAILURES.labels(reason="connection_lost").inc()
            out.returned = False
            self._retry_or_fail(out, "connection lost before confirm")

    def _shutdown(self) -> None:
        conn = self._conn
        if conn.is_closed:
            conn.ioloop.stop()
        elif not conn.is_closing:  # (a closing one stops its loop when closed)
            conn.close()  # open: a clean close; still opening: pika aborts the attempt

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            outs = list(self._pending) + list(self._unconfirmed.values())
            self._pending.clear()
            self._unconfirmed.clear()
        for out in outs:
            self._set_exception(out, exc)

    @staticmethod
    def _set_result(out: _Outgoing) -> None:
        if not out.future.done():
            with contextlib.suppress(Exception):
                out.future.set_result(None)

    @staticmethod
    def _set_exception(out: _Outgoing, exc: Exception) -> None:
        if not out.future.done():
            with contextlib.suppress(Exception):
                out.future.set_exception(exc)


# --- consumer ------------------------------------------------------------------------


class PermanentError(Exception):
    """The message can never be handled: dead-letter it at once with this reason."""


@dataclass
class Delivery:
    """A message as delivered, for handlers that need more than the decoded body."""

    queue: str
    routing_key: str
    redelivered: bool
    delivery_count: int
    headers: dict[str, Any]
    properties: BasicProperties
    body: bytes
    tag: int = 0
    generation: int = 0

    @property
    def sender(self) -> str:
        """The account that published it: its ``user_id``, which the broker checked
        against the publisher's connection, or "none" when the publisher set none."""
        return str(self.properties.user_id or "none")


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
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._work: queue.Queue[_Work | None] = queue.Queue()
        self._generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._dlq_publisher: Publisher | None = None
        self._dlq_lock = threading.Lock()
        self._settle_queue: collections.deque[tuple[Delivery, bool]] = collections.deque()
        self._settle_lock = threading.Lock()
        self._settle_scheduled = False
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    # -- lifecycle --
    def start(self) -> Consumer:
        """Run in a background thread; returns self."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

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
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    self._connect_and_consume()
                    attempt = 0
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self.ready.clear()
                    self._drop_connection()
                    if self._stop.is_set():
                        break
                    metrics.AMQP_RECONNECTS.labels(role=self.name).inc()
                    delay = backoff_delay(attempt, self.params.reconnect_max)
                    attempt += 1
                    log.warning(
                        "consumer lost broker, reconnecting",
                        consumer=self.name,
                        error=str(exc) or type(exc).__name__,
                        retry_in=round(delay, 2),
                    )
                    self._stop.wait(delay)
        finally:
            for _ in self._workers:
                self._work.put(None)
            for w in self._workers:
                w.join(timeout=60)
            if self._dlq_publisher is not None:
                self._dlq_publisher.close()

    # -- I/O thread --
    def _connect_and_consume(self) -> None:
        conn = open_blocking(self.params, self.name)
        self._generation += 1
        gen = self._generation
        self._conn = conn
        ch = conn.channel()
        self._channel = ch
        if self.declare is not None:
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
        except Exception as exc:
            reason = f"{msg.KIND}: {type(exc).__name__}: {exc}"
            # x-delivery-count counts earlier deliveries; this one makes one more.
            if d.delivery_count + 1 >= self.params.delivery_limit:
                why = f"failed {d.delivery_count + 1} times; last: {reason}"
                self._dead_letter(d, why, "limit")
                return
            log.warning(
                "handler failed, message will be retried",
                queue=d.queue,
                kind=msg.KIND,
                attempt=d.delivery_count + 1,
                error=reason,
            )
            metrics.AMQP_REJECTED.labels(queue=d.queue, reason="retry").inc()
            self._stop.wait(min(5.0, 0.1 * 2**d.delivery_count))
            self._settle(d, ack=False)
            return
        metrics.AMQP_HANDLER_SECONDS.labels(queue=d.queue).observe(time.monotonic() - t0)
        metrics.AMQP_CONSUMED.labels(queue=d.queue, kind=msg.KIND).inc()
        self._settle(d, ack=True)

    def _dead_letter(self, d: Delivery, reason: str, label: str) -> None:
        log.error("dead-lettering message", queue=d.queue, reason=reason)
        with self._dlq_lock:
            if self._dlq_publisher is None:
                self._dlq_publisher = Publisher(self.params, name=f"{self.name}-dlq", window=8)
        headers = {**d.headers, HEADER_ERROR: reason[:1000], HEADER_SOURCE_QUEUE: d.queue}
        try:
            self._dlq_publisher.publish_sync(EXCHANGE_DLX, d.queue, d.body, headers=headers)
        except Exception as exc:
            # Could not park it: give it back so it is not lost.
            log.error("cannot dead-letter, requeueing", queue=d.queue, error=repr(exc))
            self._settle(d, ack=False)
            return
        metrics.AMQP_DEAD_LETTERED.labels(queue=d.queue, reason=label).inc()
        self._settle(d, ack=True)


def stop_on_signals(*stoppables: Any) -> None:
    """On SIGTERM/SIGINT call ``stop()`` on each (main thread only)."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        for s in stoppables:
            threading.Thread(target=s.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- request / reply -----------------------------------------------------------------


def _reply_key(msg: Message) -> str | None:
    for attr in ("query_id", "batch_id", "request_id"):
        value = getattr(msg, attr, None)
        if isinstance(value, str):
            return value
    return None


class ReplyLost(TimeoutError):
    """The reply queue was re-created (the connection dropped): a reply sent to the old
    queue is gone. A TimeoutError, so callers re-send at once as after a time-out."""


class ReplyQueue:
    """An exclusive reply queue; callers wait on futures keyed by correlation id.

    The queue is re-created (with a new name) after a reconnect; every request still
    waiting then fails with :class:`ReplyLost` instead of waiting out its time-out, and
    the caller re-sends it with the current :attr:`name` (requests are idempotent).
    Replies for keys nobody waits for are dropped (a late duplicate).
    """

    def __init__(self, params: BrokerParams, *, name: str = "vmbackup-replies") -> None:
        self._futures: dict[str, Future[Message]] = {}
        self._lock = threading.Lock()
        self._consumer = Consumer(
            params,
            [],
            self._on_reply,
            prefetch=256,
            workers=1,
            name=name,
            exclusive_reply_queue=True,
            on_connected=self._on_connected,
        )
        self._consumer.start()

    @property
    def name(self) -> str:
        if not self._consumer.ready.wait(60):
            raise PublishError("reply queue not ready: broker unreachable")
        assert self._consumer.reply_queue_name is not None
        return self._consumer.reply_queue_name

    def expect(self, key: str) -> Future[Message]:
        fut: Future[Message] = Future()
        with self._lock:
            self._futures[key] = fut
        return fut

    def forget(self, key: str) -> None:
        with self._lock:
            self._futures.pop(key, None)

    def _on_connected(self, generation: int) -> None:
        if generation == 1:
            return
        with self._lock:
            lost = list(self._futures.values())
            self._futures.clear()
        for fut in lost:
            if not fut.done():
                fut.set_exception(ReplyLost("reply queue re-created after a reconnect"))

    def _on_reply(self, msg: Message, _d: Delivery) -> None:
        key = _reply_key(msg)
        with self._lock:
            fut = self._futures.pop(key, None) if key else None
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def close(self) -> None:
        self._consumer.stop(timeout=10)
