"""What the jobs of one coordinator process share: vCenter connections, the catalog, the
broker's publisher, results and reply queues, the snapshot and task limits; and the
requests to the writers on the commits queue (commits, parts, job markers)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from common import metrics
from common.amqp import QUEUE_COMMITS, BrokerParams, Publisher, ReplyQueue
from common.logging import get_logger
from common.messages import CommitReply, JobMarker, Message
from common.redact import redact_url
from coordinator import snapshots
from coordinator.events import EventPublisher
from coordinator.limits import KeyedLimiter, SnapshotSlots
from coordinator.previous_points import History
from coordinator.settings import CoordinatorSettings
from coordinator.task_results import ResultRouter
from coordinator.vcenter import Connection

log = get_logger(__name__)
EXCHANGE_DEFAULT = ""  # the broker's default exchange routes by queue name


@dataclass
class Runtime:
    """What jobs share in one coordinator process."""

    settings: CoordinatorSettings
    connections: dict[str, Connection]
    history: History
    broker: BrokerParams
    publisher: Publisher
    results: ResultRouter
    replies: ReplyQueue
    slots: SnapshotSlots
    tasks_per_host: KeyedLimiter
    active_jobs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: EventPublisher = field(default_factory=lambda: EventPublisher(None))

    @classmethod
    def start(
        cls,
        settings: CoordinatorSettings,
        connections: dict[str, Connection],
        history: History,
        broker: BrokerParams,
    ) -> Runtime:
        cid = settings.id
        results = ResultRouter(broker, cid)
        publisher = Publisher(broker, name=f"vmbackup-coordinator-{cid}")
        replies = ReplyQueue(broker, name=f"vmbackup-coordinator-{cid}-replies")
        if not results.wait_ready(30) or not publisher.wait_ready(30):
            results.close()
            publisher.close()
            replies.close()
            raise ConnectionError(f"broker {redact_url(broker.url)} not reachable")
        lim = settings.limits
        return cls(
            settings=settings,
            connections=connections,
            history=history,
            broker=broker,
            publisher=publisher,
            results=results,
            replies=replies,
            slots=SnapshotSlots(lim.snapshots_per_host, lim.snapshots_per_datastore),
            tasks_per_host=KeyedLimiter(lim.tasks_per_host, "tasks per host"),
            events=EventPublisher(broker, name=f"vmbackup-coordinator-{cid}-events"),
        )

    def close(self) -> None:
        self.events.close()
        self.results.close()
        self.replies.close()
        self.publisher.close()

    def writer_request(
        self, key: str, build: Callable[[str], Message], timeout: float, what: str
    ) -> CommitReply:
        """Send a commits-queue request (built for the current reply queue) to the writers
        and wait for its CommitReply; raise WriterRequestFailed when none comes."""
        last = ""
        for _ in range(2):  # the reply queue is re-created after a reconnect: send again once
            fut = self.replies.expect(key)
            try:
                msg = build(self.replies.name)
                self.publisher.publish_sync(
                    EXCHANGE_DEFAULT,
                    QUEUE_COMMITS,
                    msg,
                    correlation_id=key,
                    reply_to=getattr(msg, "reply_to", None),
                    timeout=60.0,
                )
                reply = fut.result(timeout=timeout)
            except Exception as exc:
                self.replies.forget(key)
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("writer_request_attempt_failed", what=what, error=last)
                continue
            assert isinstance(reply, CommitReply)
            return reply
        raise WriterRequestFailed(f"{what}: {last or 'no reply'}")

    def job_marker(self, job_id: str, op: str) -> None:
        """Have a writer begin or end the job's running-backup marker (gc protection)."""
        key = f"m-{op}-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
        try:
            reply = self.writer_request(
                key,
                lambda reply_to: JobMarker(key, reply_to, job_id, op),
                self.settings.commit_timeout_s,
                f"job marker {op}",
            )
            if not reply.ok:
                raise WriterRequestFailed(f"job marker {op} refused by the writer: {reply.error}")
        except WriterRequestFailed:
            metrics.COORD_JOB_MARKERS.labels(op, "error").inc()
            raise
        metrics.COORD_JOB_MARKERS.labels(op, "ok").inc()

    def job_started(self, job_id: str) -> None:
        with self.lock:
            self.active_jobs.add(job_id)

    def job_ended(self, job_id: str) -> None:
        with self.lock:
            self.active_jobs.discard(job_id)

    def running_jobs(self) -> set[str]:
        with self.lock:
            return set(self.active_jobs)

    def sweep(self, conn: Connection) -> snapshots.SweepResult:
        s = self.settings
        return snapshots.sweep(
            conn,
            prefix=s.snapshot_prefix,
            coordinator_id=s.id,
            active_jobs=self.running_jobs(),
            min_age_s=s.orphan_min_age_s,
            timeout_s=s.snapshot_timeout_s,
        )


class WriterRequestFailed(Exception):
    """No writer answered a commits-queue request (or none accepted it)."""
