"""Task dispatch for one VM's disks: publish, bound the tasks in flight per host, collect
results, time out late tasks, withdraw what nobody waits for any more."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures

from common import causes
from common.amqp import EXCHANGE_WITHDRAWALS, UnroutableError, task_routing_key
from common.logging import get_logger
from common.messages import BackupTask, TaskResult, TaskWithdrawal
from coordinator import metrics, snapshots
from coordinator.discovery import DiskInfo, VmInfo
from coordinator.disk_work import DiskWork
from coordinator.job_runtime import Runtime
from coordinator.limits import Cancelled, KeyedLimiter

log = get_logger(__name__)


class _Slot:
    """One task's in-flight slot, released exactly once."""

    def __init__(self, limiter: KeyedLimiter, host: str) -> None:
        self.limiter = limiter
        self.host = host
        self._done = False
        self._lock = threading.Lock()
        metrics.COORD_TASKS_IN_FLIGHT.labels(host).inc()

    def release(self, *_: object) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        metrics.COORD_TASKS_IN_FLIGHT.labels(self.host).dec()
        self.limiter.release([self.host])


class TaskDispatcher:
    """Runs the tasks of one job's VMs. ``halted`` says (cause, reason) once the job must
    start nothing more; ``halt`` is how a task's result says so (a full repository);
    ``on_result`` sees every result as it comes."""

    def __init__(
        self,
        rt: Runtime,
        job_id: str,
        routing: str,
        cancel: threading.Event,
        *,
        halted: Callable[[], tuple[str, str] | None],
        halt: Callable[[str, str], None],
        on_result: Callable[[VmInfo, DiskWork, TaskResult, int], None],
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.routing = routing
        self.cancel = cancel
        self.halted = halted
        self.halt = halt
        self.on_result = on_result

    def route(self, vm: VmInfo, d: DiskInfo) -> str:
        if self.routing == "datastore":
            return task_routing_key("datastore", d.datastore)
        return task_routing_key("host", vm.host)

    def run(self, vm: VmInfo, snap: snapshots.Snapshot, uuid: str, works: list[DiskWork]) -> None:
        """Publish every task of these disks, at most ``tasks_per_host`` in flight, and
        collect their results; a disk whose task fails to publish or times out gets its
        error and publishes no more. Withdraws what is left when it stops early."""
        rt = self.rt
        hist = rt.history
        host = vm.host or vm.host_moref
        # future -> (disk, task id, slot, bytes, deadline): each task's timeout counts
        # from its own publish, so a big disk of timely tasks is never timed out
        pending: dict[Future[TaskResult], tuple[DiskWork, str, _Slot, int, float]] = {}
        timeout_s = rt.settings.task_timeout_s

        def collect(wait_s: float) -> None:
            """Take finished results; fail the disks of tasks past their deadline (their
            slots are freed, so the tasks still to publish can go on)."""
            if not pending:
                return
            done, _ = wait_futures(list(pending), timeout=wait_s, return_when=FIRST_COMPLETED)
            for fut in done:
                w, _tid, _slot, nbytes, _due = pending.pop(fut)
                r = fut.result()
                w.results.append(r)
                self.on_result(vm, w, r, nbytes)
                if not r.ok and causes.checked(r.cause) == causes.REPOSITORY_FULL:
                    self.halt(causes.REPOSITORY_FULL, r.error)
            now = time.monotonic()
            late: list[str] = []
            for fut, (w, tid, slot, _n, due) in list(pending.items()):
                if due <= now:
                    if not w.error:
                        w.error = f"no result within {timeout_s:.0f}s for some tasks"
                        w.cause = causes.TASK_TIMEOUT
                    del pending[fut]
                    rt.results.forget(tid)
                    fut.cancel()
                    slot.release()
                    late.append(tid)
            self.withdraw(late, "timeout")

        try:
            for w in works:
                disk = snapshots.disk_to_read(vm, w.info, snap)
                for t in w.plan.tasks:
                    if w.error:
                        break
                    halted = self.halted()
                    if halted is not None:  # the rest would meet the same wall
                        w.cause, w.error = halted
                        break
                    # a lost result holds its slot until its deadline: wait for a slot
                    # while still collecting, or the job waits on itself forever
                    while True:
                        try:
                            rt.tasks_per_host.acquire([host], self.cancel, timeout=0.5)
                            break
                        except Cancelled:
                            if self.cancel.is_set():
                                raise
                        collect(0)
                    slot = _Slot(rt.tasks_per_host, host)
                    if w.error:  # one of its tasks timed out while we waited
                        slot.release()
                        break
                    fut = rt.results.expect(t.task_id)
                    fut.add_done_callback(slot.release)
                    task = BackupTask(
                        task_id=t.task_id,
                        job_id=self.job_id,
                        vm_uuid=uuid,
                        vm_name=vm.name,
                        disk_key=w.info.key,
                        disk=disk,
                        chunk_size=hist.chunk_size,
                        compression_level=hist.compression_level,
                        ranges=[(o, n) for o, n in t.ranges],
                        results_to=rt.results.queue,
                    )
                    try:
                        rt.publisher.publish_sync(
                            "vmbackup.tasks", self.route(vm, w.info), task, timeout=60.0
                        )
                    except UnroutableError:
                        w.error = (
                            f"no proxy takes tasks for {self.route(vm, w.info)}"
                            " (no queue bound to that routing key)"
                        )
                        w.cause = causes.BROKER
                    except Exception as exc:
                        w.error = f"publishing task failed: {type(exc).__name__}: {exc}"
                        w.cause = causes.BROKER
                    if w.error:
                        rt.results.forget(t.task_id)
                        slot.release()
                        break
                    w.futures[t.task_id] = fut
                    due = time.monotonic() + timeout_s
                    pending[fut] = (w, t.task_id, slot, sum(n for _o, n in t.ranges), due)
            while pending:
                if self.cancel.is_set():
                    raise Cancelled("job cancelled while tasks were running")
                left = min(p[4] for p in pending.values()) - time.monotonic()
                collect(min(max(left, 0.0), 0.5))
        finally:
            for fut, (_w, tid, slot, _n, _due) in pending.items():
                rt.results.forget(tid)
                fut.cancel()
                slot.release()
            # Before the snapshot goes: proxies drop these instead of failing them against
            # it, retrying and dead-lettering them (and stop the ones they are reading).
            self.withdraw(
                [p[1] for p in pending.values()],
                "cancelled" if self.cancel.is_set() else "aborted",
            )

    def withdraw(self, task_ids: list[str], reason: str) -> None:
        """Tell the proxies that nobody waits for these tasks any more (best effort: a
        proxy that misses it fails the task as before; nothing is lost either way)."""
        if not task_ids:
            return
        msg = TaskWithdrawal(job_id=self.job_id, task_ids=task_ids, reason=reason)
        counter = metrics.COORD_TASKS_WITHDRAWN
        try:
            fut = self.rt.publisher.publish(
                EXCHANGE_WITHDRAWALS, "", msg, persistent=False, mandatory=False, timeout=5.0
            )
        except Exception as exc:
            counter.labels(reason, "failed").inc(len(task_ids))
            log.warning("withdrawal_not_sent", tasks=len(task_ids), error=str(exc))
            return
        fut.add_done_callback(
            lambda f: counter.labels(reason, "failed" if f.exception() else "published").inc(
                len(task_ids)
            )
        )
        log.info("tasks_withdrawn", tasks=len(task_ids), reason=reason)
