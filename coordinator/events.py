"""Job progress events (common.messages.JobEvent) on the ``vmbackup.events`` topic exchange.

Best effort by design: events are for dashboards and the demo, never part of the
backup's correctness. ``emit`` never blocks and never raises; a bounded queue feeds
one background thread that publishes non-persistent, non-mandatory messages (no
listener is a normal state, not an error) with publisher confirms so that a failed
publish is known and counted. When the queue is full or the broker is away, events
are dropped and counted; the thread reconnects with backoff.

Routing key: ``job.<job_id>.<event>``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

import pika
from pika.spec import BasicProperties

from common import metrics
from common.amqp import EXCHANGE_EVENTS, BrokerParams, backoff_delay, open_blocking
from common.logging import get_logger
from common.messages import JobEvent, Scalar, encode

log = get_logger(__name__)

NO_DISK = -1  # disk_key of events that are not about one disk
QUEUE_MAX = 10_000


def routing_key(job_id: str, event: str) -> str:
    # "." and the topic wildcards would split or match the key: keep them out of the parts
    def clean(s: str) -> str:
        return s.replace(".", "_").replace("*", "_").replace("#", "_")

    return f"job.{clean(job_id)}.{clean(event)}"


class EventPublisher:
    def __init__(self, params: BrokerParams | None, *, name: str = "vmbackup-events") -> None:
        self.params = params
        self.name = name
        self._q: queue.Queue[JobEvent | None] = queue.Queue(QUEUE_MAX)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if params is not None:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def emit(
        self,
        job_id: str,
        event: str,
        *,
        vm: str = "",
        disk_key: int = NO_DISK,
        **fields: Scalar,
    ) -> None:
        """Queue one event; never raises, never blocks."""
        if self._thread is None or self._closing.is_set():
            return
        try:
            ev = JobEvent(
                job_id=job_id, event=event, vm=vm, disk_key=disk_key, ts=time.time(), fields=fields
            )
            self._q.put_nowait(ev)
        except queue.Full:
            metrics.COORD_EVENTS.labels("dropped").inc()
        except Exception as exc:  # a bad field is our bug; it must not fail a backup
            metrics.COORD_EVENTS.labels("failed").inc()
            log.warning("job_event_not_queued", event_name=event, error=str(exc))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was handled (tests, and a clean stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self.flush(timeout)
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout)

    # --- background thread ------------------------------------------------------------

    def _run(self) -> None:
        assert self.params is not None
        conn: pika.BlockingConnection | None = None
        ch: Any = None
        attempt = 0
        retry_at = 0.0
        while True:
            ev = self._q.get()
            try:
                if ev is None:
                    break
                if ch is None and time.monotonic() >= retry_at:
                    try:
                        conn = open_blocking(self.params, self.name)
                        ch = conn.channel()
                        # idempotent; a missing exchange would close the channel on publish
                        ch.exchange_declare(EXCHANGE_EVENTS, exchange_type="topic", durable=True)
                        ch.confirm_delivery()
                        attempt = 0
                    except Exception as exc:
                        conn = ch = None
                        retry_at = time.monotonic() + backoff_delay(
                            attempt, self.params.reconnect_max
                        )
                        attempt += 1
                        log.warning("job_events_broker_unreachable", error=str(exc))
                if ch is None:
                    metrics.COORD_EVENTS.labels("failed").inc()
                    continue
                try:
                    ch.basic_publish(
                        EXCHANGE_EVENTS,
                        routing_key(ev.job_id, ev.event),
                        encode(ev),
                        BasicProperties(
                            delivery_mode=1,
                            content_type="application/msgpack",
                            type=JobEvent.KIND,
                            timestamp=int(ev.ts),
                        ),
                    )
                    metrics.COORD_EVENTS.labels("published").inc()
                except Exception as exc:
                    metrics.COORD_EVENTS.labels("failed").inc()
                    log.warning("job_event_publish_failed", event_name=ev.event, error=str(exc))
                    with contextlib.suppress(Exception):
                        if conn is not None:
                            conn.close()
                    conn = ch = None
            finally:
                self._q.task_done()
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()
