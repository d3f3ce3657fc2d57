"""What the jobs of one coordinator process share: vCenter connections, the catalog, the
broker's publisher, results and reply queues, the snapshot and task limits; and the
requests to the writers on the commits queue (commits, parts, job markers, retention).

Every configured vCenter is kept, reached or not: a vCenter that does not answer at start
is tried again by each job that needs it (a daemon outlives a vCenter outage), and a job
that still cannot reach it says so in its report instead of leaving its VMs out."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from common.amqp import QUEUE_COMMITS, BrokerParams, Publisher, ReplyQueue
from common.logging import get_logger
from common.messages import CommitReply, JobMarker, Message
from common.redact import redact_url
from coordinator import metrics, snapshots
from coordinator.events import EventPublisher
from coordinator.limits import KeyedLimiter, SnapshotSlots
from coordinator.previous_points import History
from coordinator.settings import CoordinatorSettings, VCenterSettings
from coordinator.task_results import ResultRouter
from coordinator.vcenter import Connection, VCenterError

log = get_logger(__name__)
R = TypeVar("R", bound=Message)
EXCHANGE_DEFAULT = ""  # the broker's default exchange routes by queue name


def connect_vcenters(
    vcenters: Iterable[VCenterSettings],
) -> tuple[dict[str, Connection], dict[str, str]]:
    """Log in to every vCenter: (session by name, why by name for those not reached)."""
    connections: dict[str, Connection] = {}
    offline: dict[str, str] = {}
    for vc in vcenters:
        try:
            connections[vc.name] = Connection(vc).connect()
        except Exception as exc:
            offline[vc.name] = unreachable_reason(vc.name, exc)
            log.error("vcenter_unreachable", vcenter=vc.name, error=offline[vc.name])
    return connections, offline


def unreachable_reason(name: str, exc: BaseException) -> str:
    """One line naming the vCenter and what went wrong (the session's errors already
    start with ``vcenter NAME:``; a vSphere fault from the login does not)."""
    text = str(exc) or type(exc).__name__
    prefix = f"vcenter {name}"
    return text if text.startswith(prefix) else f"{prefix}: {type(exc).__name__}: {text}"


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
    # Every configured vCenter in config order, reached or not ([]: those of
    # ``connections``), and why each one without a session was not reached.
    vcenters: list[VCenterSettings] = field(default_factory=list)
    offline: dict[str, str] = field(default_factory=dict)
    connect_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(
        cls,
        settings: CoordinatorSettings,
        connections: dict[str, Connection],
        history: History,
        broker: BrokerParams,
        *,
        vcenters: Iterable[VCenterSettings] | None = None,
        offline: dict[str, str] | None = None,
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
            vcenters=list(vcenters if vcenters is not None else []),
            offline=dict(offline or {}),
        )

    def vcenter_settings(self) -> list[VCenterSettings]:
        """Every configured vCenter, reached or not."""
        if self.vcenters:
            return list(self.vcenters)
        return [c.settings for c in list(self.connections.values())]

    def connection(self, name: str) -> Connection:
        """The session to vCenter ``name``; one not reached before is tried again now.
        Raises VCenterError naming the vCenter and why when it cannot be reached."""
        conn = self.connections.get(name)
        if conn is not None:
            return conn
        with self.connect_lock:  # two jobs needing it at once: one login
            conn = self.connections.get(name)
            if conn is not None:
                return conn
            vc = next((v for v in self.vcenter_settings() if v.name == name), None)
            if vc is None:
                raise VCenterError(f"vcenter {name}: not in the config")
            try:
                conn = Connection(vc).connect()
            except Exception as exc:
                self.offline[name] = unreachable_reason(name, exc)
                log.error("vcenter_unreachable", vcenter=name, error=self.offline[name])
                raise VCenterError(self.offline[name]) from exc
            self.connections[name] = conn  # readers iterate over copies (list(...))
            self.offline.pop(name, None)
            log.info("vcenter_reached", vcenter=name)
            return conn

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
        return self.writer_call(key, build, timeout, what, CommitReply)

    def writer_call(
        self,
        key: str,
        build: Callable[[str], Message],
        timeout: float,
        what: str,
        expect: type[R],
    ) -> R:
        """:meth:`writer_request` for a request whose answer is of kind ``expect``."""
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
            if not isinstance(reply, expect):
                last = f"answered with a {reply.KIND} message, not {expect.KIND}"
                continue
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
