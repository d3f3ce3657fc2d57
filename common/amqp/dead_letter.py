"""Parking a message in the dead-letter queue (vmbackup.dlq) with the reason in a header."""

from __future__ import annotations

import threading

from common import metrics
from common.amqp.delivery import Delivery
from common.amqp.errors import UnpublishableError
from common.amqp.params import BrokerParams
from common.amqp.publisher import Publisher
from common.amqp.topology import EXCHANGE_DLX, HEADER_ERROR, HEADER_SOURCE_QUEUE
from common.logging import get_logger

log = get_logger(__name__)


class DeadLetters:
    """One consumer's publisher to the dead-letter exchange, opened on first use."""

    def __init__(self, params: BrokerParams, name: str) -> None:
        self.params = params
        self.name = f"{name}-dlq"
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()

    def park(self, d: Delivery, reason: str, label: str) -> bool:
        """Send ``d`` to the DLQ; True: it is parked (or can never be), ack it; False:
        the broker is away, requeue it so that it is not lost."""
        log.error("dead-lettering message", queue=d.queue, reason=reason)
        with self._lock:
            if self._publisher is None:
                self._publisher = Publisher(self.params, name=self.name, window=8)
            pub = self._publisher
        ours = {HEADER_ERROR: reason[:1000], HEADER_SOURCE_QUEUE: d.queue}
        try:
            try:
                pub.publish_sync(EXCHANGE_DLX, d.queue, d.body, headers={**d.headers, **ours})
            except UnpublishableError as exc:
                # Its own headers cannot go out again (pika decodes values it cannot
                # encode, or they leave no room for ours): park it with ours only.
                log.warning("dead-lettering without the message's headers", error=str(exc))
                pub.publish_sync(EXCHANGE_DLX, d.queue, d.body, headers=ours)
        except UnpublishableError as exc:
            # Not even that (a body over broker.max_message_bytes): requeueing would hand
            # it back for ever, blocking the queue; it is dropped, loudly.
            log.error(
                "cannot dead-letter, message dropped",
                queue=d.queue,
                bytes=len(d.body),
                reason=reason,
                error=str(exc),
            )
            metrics.AMQP_REJECTED.labels(queue=d.queue, reason="dropped").inc()
            return True
        except Exception as exc:
            # Could not park it (the broker is away): give it back so it is not lost.
            log.error("cannot dead-letter, requeueing", queue=d.queue, error=repr(exc))
            return False
        metrics.AMQP_DEAD_LETTERED.labels(queue=d.queue, reason=label).inc()
        return True

    def close(self) -> None:
        with self._lock:
            pub, self._publisher = self._publisher, None
        if pub is not None:
            pub.close()
