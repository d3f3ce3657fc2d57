"""Request/reply: an exclusive reply queue with futures keyed by correlation id (have-
queries, chunk acks, commits)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from common.amqp.consumer import Consumer
from common.amqp.delivery import Delivery, PermanentError
from common.amqp.errors import PublishError
from common.amqp.params import BrokerParams
from common.amqp.preflight import name_problem
from common.messages import Message


def check_reply_to(reply_to: str, correlation_id: str = "", what: str = "reply_to") -> None:
    """Refuse a request whose answer could never be sent (a queue name or correlation id
    over AMQP's 255 bytes), before any work is done for it: the consumer dead-letters it
    at once with the reason."""
    problem = name_problem(reply_to, what) or name_problem(correlation_id, "correlation id")
    if problem is not None:
        raise PermanentError(problem)


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
        if not self._consumer.wait_ready(60):
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
