"""Job progress events (common.messages.JobEvent) on the ``vmbackup.events`` topic exchange.

Best effort by design: events are for dashboards and the demo, never part of the
backup's correctness. ``emit`` never blocks and never raises. Events go out through
the project's confirming publisher as non-persistent, non-mandatory messages (no
listener is a normal state, not an error); the outcome of each is counted in
``vmbackup_coordinator_job_events_total``: published (confirmed), failed (refused,
or still unconfirmed at close) or dropped (the window was full: the broker is away
or slow).

Routing key: ``job.<job_id>.<event>``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from common.amqp import EXCHANGE_EVENTS, BrokerParams, Publisher, PublishError
from common.logging import get_logger
from common.messages import JobEvent, Scalar
from coordinator import metrics

log = get_logger(__name__)

NO_DISK = -1  # disk_key of events that are not about one disk
WINDOW = 1024  # events in flight at most; past that they are dropped, never waited for


def routing_key(job_id: str, event: str) -> str:
    # "." and the topic wildcards would split or match the key: keep them out of the parts
    def clean(s: str) -> str:
        return s.replace(".", "_").replace("*", "_").replace("#", "_")

    return f"job.{clean(job_id)}.{clean(event)}"


class EventPublisher:
    def __init__(self, params: BrokerParams | None, *, name: str = "vmbackup-events") -> None:
        self._pub = Publisher(params, name=name, window=WINDOW) if params is not None else None
        self._in_flight: set[Future[None]] = set()
        self._lock = threading.Lock()

    def emit(
        self,
        job_id: str,
        event: str,
        *,
        vm: str = "",
        disk_key: int = NO_DISK,
        **fields: Scalar,
    ) -> None:
        """Send one event; never raises, never blocks."""
        if self._pub is None:
            return
        try:
            ev = JobEvent(
                job_id=job_id, event=event, vm=vm, disk_key=disk_key, ts=time.time(), fields=fields
            )
            fut = self._pub.publish(
                EXCHANGE_EVENTS,
                routing_key(job_id, event),
                ev,
                persistent=False,
                mandatory=False,
                timeout=0,
            )
        except PublishError:
            metrics.COORD_EVENTS.labels("dropped").inc()
            return
        except Exception as exc:  # a bad field is our bug; it must not fail a backup
            metrics.COORD_EVENTS.labels("failed").inc()
            log.warning("job_event_not_sent", event_name=event, error=str(exc))
            return
        with self._lock:
            self._in_flight.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(fut)
        metrics.COORD_EVENTS.labels("failed" if fut.exception() else "published").inc()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event sent so far is confirmed or failed (tests, clean stop)."""
        with self._lock:
            pending = list(self._in_flight)
        _done, not_done = wait_futures(pending, timeout=timeout)
        return not not_done

    def close(self, timeout: float = 5.0) -> None:
        """Give in-flight events ``timeout`` to be confirmed; the rest count as failed."""
        if self._pub is not None:
            self._pub.close(timeout=timeout)
