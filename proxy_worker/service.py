"""``vmbackup proxy``: consume block-range tasks, run them through the pipeline, report.

A task is acked only after every one of its chunks is durable at a writer (ChunkAck) or
known to one (HaveReply) and its map entries are staged at the writers (TaskEntries,
unless ``stage_entries`` is off); then its TaskResult is published. A failing task is returned to
its queue with the reason (the Consumer retries it, and dead-letters it after the delivery
limit); on its last attempt, or when the task itself is malformed, a failed TaskResult tells
the coordinator at once instead of letting it wait for a timeout.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import causes
from common.amqp import (
    EXCHANGE_WITHDRAWALS,
    BrokerParams,
    Consumer,
    Delivery,
    PermanentError,
    Publisher,
    ReplyQueue,
    check_reply_to,
    declare_base,
    declare_task_queue,
    task_queue,
)
from common.logging import bound, get_logger
from common.messages import BackupTask, Message, TaskResult, TaskWithdrawal
from proxy_worker import metrics
from proxy_worker.budget import MemoryBudget
from proxy_worker.chunk_stream_client import WriterStreams
from proxy_worker.errors import ProxyError, TaskError, TaskWithdrawnError
from proxy_worker.pipeline import PipelineConfig, TaskPipeline, TaskStats
from proxy_worker.settings import ProxySettings, VCenterDirectory
from proxy_worker.throttle import Throttle, ThrottledReader
from proxy_worker.transports.base import Transport
from proxy_worker.transports.file import FileTransport
from proxy_worker.transports.http import HttpTransport
from proxy_worker.transports.nbd import NbdTransport
from proxy_worker.transports.read_buffers import ReadBuffers
from proxy_worker.withdrawals import Withdrawals
from proxy_worker.writer_client import WriterLink

log = get_logger(__name__)
MiB = 1 << 20


class ProxyService:
    def __init__(
        self,
        settings: ProxySettings,
        params: BrokerParams,
        *,
        n_shards: int,
        vcenters: VCenterDirectory | None = None,
    ) -> None:
        if not settings.queues:
            raise ValueError("proxy.queues is empty: name the host./datastore. task queues")
        self.settings = settings
        self.params = params
        self.n_shards = n_shards
        self.id_key = settings.chunk_id_key()
        vcenters = vcenters or VCenterDirectory([])
        # Chunks read over nbd and http land in these and are reused once dropped: one pool,
        # the size of the memory budget that already bounds chunk bytes in flight.
        buffers = ReadBuffers(settings.memory_limit_mib * MiB)
        self.transports: dict[str, Transport] = {
            "file": FileTransport(settings),
            "nbd": NbdTransport(settings, vcenters, buffers),
            "http": HttpTransport(settings.http_settings(), vcenters, buffers),
        }
        self.throttle = Throttle(settings.throttle)
        self.budget = MemoryBudget(settings.memory_limit_mib * MiB)
        self.pool = ThreadPoolExecutor(settings.pipeline_workers, thread_name_prefix="proxy-cpu")
        self.publisher = Publisher(params, name=f"proxy-{settings.name}")
        self.replies = ReplyQueue(params, name=f"proxy-{settings.name}-replies")
        self.streams = (
            WriterStreams(f"proxy-{settings.name}", connect_timeout=params.connect_timeout)
            if settings.chunk_streams
            else None
        )
        self.link = WriterLink(
            self.publisher,
            self.replies,
            persistent_chunks=settings.persistent_chunks,
            timeout=settings.writer_timeout,
            streams=self.streams,
        )
        queues = [task_queue(k) for k in settings.queues]
        self.consumer = Consumer(
            params,
            queues,
            self.handle,
            expect=(BackupTask,),
            prefetch=settings.tasks_in_parallel,
            workers=settings.tasks_in_parallel,
            declare=self._declare,
            name=f"proxy-{settings.name}",
        )
        self.withdrawals = Withdrawals()
        self.withdrawal_consumer = Consumer(
            params,
            [],
            self.withdrawals.on_message,
            expect=(TaskWithdrawal,),
            workers=1,
            declare=lambda ch: declare_base(ch, params),
            name=f"proxy-{settings.name}-withdrawals",
            exclusive_reply_queue=True,
            exclusive_bindings=[(EXCHANGE_WITHDRAWALS, "")],
        )

    def _declare(self, ch: Any) -> None:
        declare_base(ch, self.params)
        for key in self.settings.queues:
            declare_task_queue(ch, self.params, key)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> ProxyService:
        self.withdrawal_consumer.start()
        self.consumer.start()
        return self

    def run(self) -> None:
        self.consumer.run()

    def stop(self, timeout: float = 60.0) -> None:
        self.consumer.stop(timeout)

    def close(self) -> None:
        self.consumer.stop(10)
        self.withdrawal_consumer.stop(10)
        if self.streams is not None:
            self.streams.close()
        self.replies.close()
        self.publisher.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for t in self.transports.values():
            t.close()

    # --- one task ----------------------------------------------------------------------
    def handle(self, msg: Message, d: Delivery) -> None:
        assert isinstance(msg, BackupTask)
        task = msg
        if d.properties.timestamp:
            metrics.PROXY_QUEUE_WAIT_SECONDS.observe(max(0.0, time.time() - d.properties.timestamp))
        # No result could ever reach an over-long results_to: dead-lettered, nothing read.
        check_reply_to(task.results_to, what="results_to")
        last_attempt = d.delivery_count + 1 >= self.params.delivery_limit
        with bound(task=task.task_id, job=task.job_id, vm=task.vm_name, disk=task.disk_key):
            withdrawn = self.withdrawals.reason(task.task_id)
            if withdrawn is not None:
                self._withdrawn(withdrawn, started=False)
                return  # acked: nobody waits for it, its snapshot may be gone
            try:
                stats = self.run_task(task)
                staged = self._stage_entries(task, stats)
            except Exception as exc:
                # Withdrawn while it ran (stopped), or before it failed (its snapshot removed
                # while it waited for a stream or opened the disk): nobody waits for it.
                withdrawn = self.withdrawals.reason(task.task_id)
                if withdrawn is not None or isinstance(exc, TaskWithdrawnError):
                    self._withdrawn(withdrawn or str(exc), started=True)
                    return
                if isinstance(exc, ProxyError) and exc.permanent:
                    self._failed(task, exc, "failed")
                    raise PermanentError(exc.reason()) from exc
                self._failed(task, exc, "failed" if last_attempt else "retry")
                raise
            result = self._result(task, stats, ok=True, error="", staged=staged)
            self.publisher.publish_sync("", task.results_to, result, persistent=True)
            metrics.PROXY_TASKS.labels(outcome="ok").inc()
            log.info(
                "task_done",
                read=stats.bytes_read,
                zero=stats.bytes_zero,
                known=stats.bytes_known,
                sent=stats.bytes_sent,
                seconds=round(stats.seconds, 3),
            )

    def _withdrawn(self, reason: str, *, started: bool) -> None:
        metrics.PROXY_TASKS.labels(outcome="withdrawn").inc()
        log.info("task_dropped_withdrawn", reason=reason, stopped_while_running=started)

    def _failed(self, task: BackupTask, exc: BaseException, outcome: str) -> None:
        kind = exc.kind if isinstance(exc, ProxyError) else type(exc).__name__
        reason = exc.reason() if isinstance(exc, ProxyError) else f"{kind}: {exc}"
        cause = exc.cause if isinstance(exc, ProxyError) else causes.INTERNAL
        metrics.PROXY_ERRORS.labels(kind=kind).inc()
        metrics.PROXY_TASKS.labels(outcome=outcome).inc()
        log.warning("task_failed", outcome=outcome, cause=cause, error=reason)
        if outcome != "failed":
            return
        failure = self._result(task, TaskStats(), ok=False, error=reason, cause=cause)
        try:
            self.publisher.publish_sync("", task.results_to, failure)
        except Exception as pub_exc:  # the DLQ still holds the task with its reason
            log.error("failure_result_not_published", error=repr(pub_exc))

    def _stage_entries(self, task: BackupTask, st: TaskStats) -> tuple[bytes, int] | None:
        """(digest, count) of the entries staged at the writers; None: they go inline."""
        if not self.settings.stage_entries:
            return None
        entries = st.sorted_entries()
        return self.link.stage_entries(
            task.task_id, task.job_id, task.vm_uuid, task.disk_key, entries
        )

    def _result(
        self,
        task: BackupTask,
        st: TaskStats,
        *,
        ok: bool,
        error: str,
        cause: str = "",
        staged: tuple[bytes, int] | None = None,
    ) -> TaskResult:
        digest, count = staged or (b"", 0)
        return TaskResult(
            task_id=task.task_id,
            job_id=task.job_id,
            vm_uuid=task.vm_uuid,
            disk_key=task.disk_key,
            ok=ok,
            error=error[:2000],
            entries=[] if staged else st.sorted_entries(),
            bytes_read=st.bytes_read,
            bytes_zero=st.bytes_zero,
            bytes_known=st.bytes_known,
            bytes_sent=st.bytes_sent,
            seconds=st.seconds,
            proxy=self.settings.name,
            cause=cause,
            entries_digest=digest,
            entries_count=count,
        )

    def pipeline_config(self, task: BackupTask) -> PipelineConfig:
        window = self.settings.window_bytes(task.chunk_size)
        return PipelineConfig(
            chunk_size=task.chunk_size,
            compression_level=task.compression_level,
            n_shards=self.n_shards,
            id_key=self.id_key,
            batch_bytes=self.settings.batch_bytes,
            have_batch=self.settings.have_batch,
            window_bytes=window,
            partial_cap=window,
        )

    def run_task(self, task: BackupTask) -> TaskStats:
        name = task.transport or self.settings.transport
        transport = self.transports.get(name)
        if transport is None:
            raise TaskError(f"unknown transport {name!r}; known: {sorted(self.transports)}")
        cfg = self.pipeline_config(task)
        disk = task.disk
        lim = self.throttle.host(disk.host)
        read_bytes = metrics.PROXY_READ_BYTES.labels(transport=name, host=disk.host)
        bw_wait = metrics.PROXY_THROTTLE_SECONDS.labels(host=disk.host, cap="bandwidth")
        t0 = time.monotonic()
        with lim.stream() as waited:
            metrics.PROXY_THROTTLE_SECONDS.labels(host=disk.host, cap="streams").inc(waited)
            metrics.PROXY_STREAMS.labels(host=disk.host).inc()
            try:
                reader = ThrottledReader(transport.open(disk), lim, bw_wait.inc)
                with reader:
                    pipe = TaskPipeline(
                        reader,
                        self.link,
                        self.pool,
                        self.budget,
                        cfg,
                        task.task_id,
                        read_bytes.inc,
                        job_id=task.job_id,
                    )
                    with self.withdrawals.running(task.task_id, pipe.cancel):
                        stats = pipe.run(list(task.ranges), disk.capacity)
            finally:
                metrics.PROXY_STREAMS.labels(host=disk.host).dec()
                metrics.PROXY_MEMORY_BYTES.set(self.budget.used)
        metrics.PROXY_TASK_SECONDS.labels(transport=name).observe(time.monotonic() - t0)
        for result, n in (
            ("zero", stats.chunks_zero),
            ("known", stats.chunks_known),
            ("sent", stats.chunks_sent),
        ):
            metrics.PROXY_CHUNKS.labels(result=result).inc(n)
        for kind, n in (
            ("zero", stats.bytes_zero),
            ("known", stats.bytes_known),
            ("sent_raw", stats.bytes_raw_sent),
            ("sent", stats.bytes_sent),
        ):
            metrics.PROXY_BYTES.labels(kind=kind).inc(n)
        return stats
