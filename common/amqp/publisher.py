"""The confirming publisher: publisher confirms with a window of unconfirmed messages,
``mandatory`` routing (unroutable -> :class:`UnroutableError`), persistent messages
where asked, bounded retry across reconnects. Its own I/O thread (SelectConnection), so
any thread may publish."""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic, BasicProperties

from common import metrics
from common.amqp import preflight
from common.amqp.errors import PublishError, UnpublishableError, UnroutableError
from common.amqp.outage import Outage
from common.amqp.params import BrokerParams, backoff_delay, wait_ready
from common.logging import get_logger
from common.messages import Message, encode

log = get_logger(__name__)


__all__ = ["PublishError", "Publisher", "UnpublishableError", "UnroutableError"]


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
    A message that can never be published (see common/amqp/preflight.py) fails at once
    with :class:`UnpublishableError`, counted and logged, and blocks nothing behind it.
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
        # Set when the broker's certificate failed verification: fatal, no more retries.
        self.error: Exception | None = None
        self._closing = False
        self._connect_attempt = 0
        self._outage = Outage("publisher", name)
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
            raise self.error or PublishError("publisher is closed")
        body = encode(msg) if isinstance(msg, Message) else bytes(msg)
        kind = msg.KIND if isinstance(msg, Message) else "raw"
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
        try:
            preflight.check(exchange, routing_key, len(body), props, self.params.max_message_bytes)
        except UnpublishableError as exc:
            preflight.dropped(self.name, exchange, routing_key, kind, exc)
            fut.set_exception(exc)
            return fut
        acquired = self._slots.acquire(blocking=timeout != 0, timeout=timeout or None)
        if not acquired:
            raise PublishError(f"publish window full (waited {timeout or 0}s)")
        fut.add_done_callback(lambda _f: self._slots.release())
        out = _Outgoing(exchange, routing_key, body, props, kind, fut, mandatory)
        with self._lock:
            self._pending.append(out)
        if self.error is not None:  # failed while this one was being queued
            self._fail_all(self.error)
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
        return wait_ready(self._ready, timeout, lambda: self.error)

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
        cert = self.params.certificate_error(err)
        if cert is not None:
            log.error("publisher refuses the broker", error=str(cert))
            with self._lock:
                self.error = cert
                self._closing = True
            self._fail_all(cert)
        elif not self._closing:  # else close() aborted the attempt
            self._outage.failed(str(err) or repr(err))
        conn.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        if not self._closing:
            self._outage.failed(str(reason) or repr(reason))
        conn.ioloop.stop()

    def _on_channel_open(self, ch: Any) -> None:
        self._channel = ch
        self._next_tag = 0
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        self._connect_attempt = 0
        self._outage.connected()
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
                # Nothing went out (frames are all encoded before any is written): the
                # broker did not count this delivery tag.
                self._unconfirmed.pop(self._next_tag, None)
                self._by_message_id.pop(out.properties.message_id, None)
                self._next_tag -= 1
                if not isinstance(exc, preflight.CONNECTION_ERRORS):
                    # Not the connection: sending it again would fail the same way and hold
                    # up every message behind it.
                    err = UnpublishableError("send_failed", f"{type(exc).__name__}: {exc}")
                    preflight.dropped(self.name, out.exchange, out.routing_key, out.kind, err)
                    self._set_exception(out, err)
                    continue
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
                metrics.AMQP_PUBLISHED_BYTES.labels(kind=out.kind).inc(len(out.body))
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
