"""One backup job (a policy run): discover, snapshot, plan, publish, collect, commit.

Per VM: a snapshot slot (host + datastores), CBT on, a snapshot (always removed),
per disk a full/incremental plan, tasks published routed by host or datastore with
at most ``tasks_per_host`` in flight, results collected until every chunk of every
range is accounted for, then one CommitRequest to the writers with the snapshot's
changeIds. Any failure of a disk leaves that disk out of the commit, with the reason.

Size: past 400 lines on purpose for now; its split by concern (per-VM sequence,
task dispatch, commits) is issue #21's, done as one move so no behaviour is lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl
from pyVmomi.VmomiJSONEncoder import VmomiJSONEncoder

from common import causes, metrics
from common.amqp import (
    EXCHANGE_WITHDRAWALS,
    QUEUE_COMMITS,
    BrokerParams,
    Consumer,
    Delivery,
    Publisher,
    ReplyQueue,
    UnroutableError,
    declare_base,
    declare_results_queue,
    results_queue,
    task_routing_key,
)
from common.logging import bound, get_logger
from common.messages import (
    BackupTask,
    CommitPart,
    CommitReply,
    CommitRequest,
    DiskCommit,
    JobMarker,
    Message,
    TaskResult,
    TaskWithdrawal,
    pack_entries,
    part_key,
)
from common.redact import redact_url
from coordinator import cbt, planner, report, snapshots
from coordinator import vm_config as vm_config_mod
from coordinator.discovery import DiskInfo, Inventory, VmInfo, _disk_info, discover
from coordinator.events import EventPublisher
from coordinator.limits import BackupWindow, Cancelled, KeyedLimiter, SnapshotSlots
from coordinator.policy import select
from coordinator.previous_points import History
from coordinator.settings import CoordinatorSettings, PolicySettings, vcenters_for
from coordinator.vcenter import Connection

log = get_logger(__name__)
EXCHANGE_DEFAULT = ""  # the broker's default exchange routes by queue name


def new_job_id(policy: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{policy}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def policy_of_job(job_id: str) -> str:
    """The policy name a job id starts with (job ids are ``<policy>-<time>-<hex>``)."""
    parts = job_id.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else ""


class ResultRouter:
    """Consumes this coordinator's results queue and completes per-task futures."""

    def __init__(self, params: BrokerParams, coordinator_id: str) -> None:
        self.queue = results_queue(coordinator_id)
        self._futures: dict[str, Future[TaskResult]] = {}
        self._lock = threading.Lock()
        self.stale = 0

        def declare(ch: Any) -> None:
            declare_base(ch, params)
            declare_results_queue(ch, params, coordinator_id)

        self.consumer = Consumer(
            params,
            [self.queue],
            self._on_result,
            expect=(TaskResult,),
            prefetch=64,
            workers=2,
            declare=declare,
            name=f"vmbackup-results-{coordinator_id}",
        ).start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self.consumer.wait_ready(timeout)

    def expect(self, task_id: str) -> Future[TaskResult]:
        fut: Future[TaskResult] = Future()
        with self._lock:
            self._futures[task_id] = fut
        return fut

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._futures.pop(task_id, None)

    def _on_result(self, msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, TaskResult)
        with self._lock:
            fut = self._futures.pop(msg.task_id, None)
        if fut is None:
            # a duplicate, or a result of a job that ended (e.g. before a restart)
            self.stale += 1
            log.info("stale_task_result", task=msg.task_id, job=msg.job_id)
            return
        if not fut.done():
            fut.set_result(msg)

    def close(self) -> None:
        self.consumer.stop(timeout=10)


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


class DiskFailed(Exception):
    """This disk cannot be part of the point; the text is the reason, ``cause`` its word
    from common/causes.py."""

    def __init__(self, reason: str, cause: str = causes.INTERNAL) -> None:
        super().__init__(reason)
        self.cause = cause


@dataclass
class _DiskWork:
    info: DiskInfo
    plan: planner.DiskPlan
    rep: report.DiskReport
    futures: dict[str, Future[TaskResult]] = field(default_factory=dict)
    results: list[TaskResult] = field(default_factory=list)
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # checked, for the commit
    error: str = ""
    cause: str = ""


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


class Job:
    def __init__(
        self,
        rt: Runtime,
        policy: PolicySettings,
        *,
        job_id: str | None = None,
        ignore_window: bool = False,
        sweep_first: bool = True,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.rt = rt
        self.s = rt.settings
        self.policy = policy
        self.job_id = job_id or new_job_id(policy.name)
        self.cancel = threading.Event()
        self.clock = clock
        self.window = (
            BackupWindow()
            if ignore_window
            else BackupWindow(policy.window.start, policy.window.end)
        )
        self.deadline: dt.datetime | None = None
        self.sweep_first = sweep_first
        self.report = report.JobReport(
            job_id=self.job_id, policy=policy.name, coordinator=self.s.id
        )
        self.inventories: list[Inventory] = []
        self._lock = threading.Lock()
        self._vm_bytes: dict[str, tuple[int, int]] = {}  # VM moref -> bytes read, sent
        # (cause, reason) once the job must start nothing more: every later task and VM
        # would meet the same wall (a writer's repository is full)
        self._halt: tuple[str, str] | None = None

    # --- the job ----------------------------------------------------------------------

    def run(self) -> report.JobReport:
        rep = self.report
        rt = self.rt
        rt.job_started(self.job_id)
        t0 = time.monotonic()
        rt0 = sum(c.round_trips for c in rt.connections.values())
        timer: threading.Timer | None = None
        marked = False
        self._emit("job-started", policy=self.policy.name)
        with bound(job=self.job_id, policy=self.policy.name):
            try:
                now = self.clock()
                if not self.window.is_open(now):
                    rep.error = (
                        f"outside the backup window {self.policy.window.start}-"
                        f"{self.policy.window.end}; no VM started"
                    )
                    return rep
                self.deadline = self.window.closes_at(now)
                if self.deadline is not None and self.policy.window.on_end == "cancel":
                    secs = (self.deadline - now).total_seconds()
                    timer = threading.Timer(secs, self._window_ended)
                    timer.daemon = True
                    timer.start()
                vms = self._discover()
                sel = select(vms, self.policy)
                log.info(
                    "job_started",
                    selected=len(sel.selected),
                    skipped=len(sel.skipped),
                    out_of_scope=sel.out_of_scope,
                )
                pol = self.policy.name
                metrics.COORD_VMS.labels(pol, "discovered").inc(
                    len(sel.selected) + len(sel.skipped)
                )
                for vm in sel.skipped:
                    metrics.COORD_VMS.labels(pol, "skipped").inc()
                    rep.vms.append(self._skipped_report(vm))
                self._emit("job-planned", vms=len(sel.selected))
                if sel.selected:
                    # before the first task: from now on gc keeps every chunk this job
                    # may deduplicate against (repository/gc.py)
                    try:
                        rt.job_marker(self.job_id, "begin")
                    except WriterRequestFailed as exc:
                        raise WriterRequestFailed(
                            f"cannot mark the job as running in the repository, no VM"
                            f" started: {exc}"
                        ) from None
                    marked = True
                reports: list[report.VmReport | None] = [None] * len(sel.selected)
                with ThreadPoolExecutor(self.s.limits.vms, thread_name_prefix="vm") as ex:
                    futs = {ex.submit(self._vm_guarded, vm): i for i, vm in enumerate(sel.selected)}
                    for fut, i in futs.items():
                        reports[i] = fut.result()
                rep.vms.extend(r for r in reports if r is not None)
            except Exception as exc:
                log.exception("job_failed")
                rep.error = f"{type(exc).__name__}: {exc}"
            finally:
                if timer is not None:
                    timer.cancel()
                if marked:
                    try:  # after the last commit; a marker left behind only delays gc
                        rt.job_marker(self.job_id, "end")
                    except WriterRequestFailed as exc:
                        log.error("job_marker_end_failed", error=str(exc))
                rt.job_ended(self.job_id)
                rep.vcenter_round_trips = sum(c.round_trips for c in rt.connections.values()) - rt0
                rep.finish()
                seconds = time.monotonic() - t0
                metrics.COORD_JOB_SECONDS.labels(self.policy.name).observe(seconds)
                self._emit("job-done", status=rep.status, seconds=round(seconds, 3))
                metrics.COORD_JOBS.labels(self.policy.name, rep.status).inc()
                if self.s.report_dir:
                    try:
                        rep.write(self.s.report_dir)
                    except OSError as exc:
                        log.error("report_write_failed", error=str(exc))
                log.info("job_finished", status=rep.status, counts=rep.counts())
        return rep

    def _emit(self, event: str, *, vm: str = "", disk_key: int = -1, **fields: Any) -> None:
        self.rt.events.emit(self.job_id, event, vm=vm, disk_key=disk_key, **fields)

    def _window_ended(self) -> None:
        log.warning("backup_window_ended", action="cancel")
        self.cancel.set()

    def _discover(self) -> list[VmInfo]:
        vms: list[VmInfo] = []
        errors = []
        for vc in vcenters_for(list(self._vcenter_settings()), self.policy):
            conn = self.rt.connections.get(vc.name)
            if conn is None:
                errors.append(f"vcenter {vc.name}: not connected")
                continue
            try:
                if self.sweep_first:
                    res = self.rt.sweep(conn)
                    self.report.orphans_removed += len(res.removed)
                inv = discover(conn)
            except Exception as exc:
                log.exception("discovery_failed", vcenter=vc.name)
                errors.append(f"vcenter {vc.name}: {type(exc).__name__}: {exc}")
                continue
            self.inventories.append(inv)
            vms.extend(inv.vms)
        if errors:
            self.report.error = "; ".join(errors)
        return vms

    def _vcenter_settings(self) -> list[Any]:
        return [c.settings for c in self.rt.connections.values()]

    def _skipped_report(self, vm: VmInfo) -> report.VmReport:
        vr = report.VmReport(
            vm.vcenter,
            vm.name,
            vm.moref,
            vm.instance_uuid or vm.uuid,
            vm.host,
            status=report.SKIPPED,
            reason=vm.skip_reason,
        )
        for d in vm.disks:
            vr.disks.append(
                report.DiskReport(
                    d.key,
                    d.label,
                    d.capacity,
                    status=report.SKIPPED,
                    reason=d.skip_reason or "VM skipped",
                )
            )
            metrics.COORD_DISKS.labels(self.policy.name, "skipped").inc()
        return vr

    # --- one VM -----------------------------------------------------------------------

    def _vm_guarded(self, vm: VmInfo) -> report.VmReport:
        with bound(vm=vm.name, vm_moref=vm.moref):
            vr = report.VmReport(
                vm.vcenter, vm.name, vm.moref, vm.instance_uuid or vm.uuid, vm.host
            )
            t0 = time.monotonic()
            self._emit("vm-started", vm=vm.name)
            try:
                self._vm(vm, vr)
            except snapshots.SnapshotError as exc:
                vr.status, vr.reason, vr.cause = report.FAILED, str(exc), causes.VCENTER
            except Cancelled as exc:
                vr.status, vr.reason = report.FAILED, f"cancelled: {exc}"
                vr.cause = causes.CANCELLED
            except vmodl.MethodFault as exc:
                log.exception("vm_failed")
                vr.status, vr.reason = report.FAILED, f"{type(exc).__name__}: {exc}"
                vr.cause = causes.VCENTER
            except Exception as exc:
                log.exception("vm_failed")
                vr.status, vr.reason = report.FAILED, f"{type(exc).__name__}: {exc}"
                vr.cause = causes.INTERNAL
            vr.seconds = round(time.monotonic() - t0, 3)
            pol = self.policy.name
            if vr.status == report.OK:
                metrics.COORD_VMS.labels(pol, "protected").inc()
            elif vr.status in (report.FAILED, report.PARTIAL):
                metrics.COORD_VMS.labels(pol, "failed").inc()
                metrics.COORD_VM_FAILURES.labels(pol, vr.cause or causes.INTERNAL).inc()
            for d in vr.disks:
                metrics.COORD_DISKS.labels(pol, "discovered").inc()
                metrics.COORD_DISKS.labels(
                    pol, {report.OK: "protected", report.SKIPPED: "skipped"}.get(d.status, "failed")
                ).inc()
            log.info("vm_finished", status=vr.status, reason=vr.reason, seconds=vr.seconds)
            with self._lock:
                read, sent = self._vm_bytes.pop(vm.moref, (0, 0))
            modes = {d.mode for d in vr.disks if d.mode}
            self._emit(
                "vm-done",
                vm=vm.name,
                status=vr.status,
                mode=modes.pop() if len(modes) == 1 else ("mixed" if modes else ""),
                bytes_read=read,
                bytes_sent=sent,
                seconds=vr.seconds,
            )
            return vr

    def _halt_job(self, cause: str, reason: str) -> None:
        with self._lock:
            if self._halt is not None:
                return
            self._halt = (cause, reason)
            self.report.stopped, self.report.cause = reason, cause
        log.error("job_stopping", cause=cause, reason=reason)

    def _may_start(self) -> str:
        if self._halt is not None:
            return self._halt[1]
        if self.cancel.is_set():
            return "job cancelled"
        if self.deadline is not None and self.clock() >= self.deadline:
            return "backup window closed before this VM started"
        return ""

    def _vm(self, vm: VmInfo, vr: report.VmReport) -> None:
        why = self._may_start()
        if why:
            vr.status, vr.reason, vr.cause = report.FAILED, f"not started: {why}", self._why_cause()
            return
        conn = self.rt.connections[vm.vcenter]
        vm_mo = conn.moref("VirtualMachine", vm.moref)
        with self.rt.slots.hold(vm.host or vm.host_moref, vm.datastores, self.cancel):
            why = self._may_start()  # waiting for a slot can take long
            if why:
                vr.status, vr.reason = report.FAILED, f"not started: {why}"
                vr.cause = self._why_cause()
                return
            just_enabled, note = self._ensure_cbt(conn, vm, vm_mo)
            with snapshots.held(
                conn,
                vm_mo,
                prefix=self.s.snapshot_prefix,
                job_id=self.job_id,
                coordinator_id=self.s.id,
                quiesce=self.policy.quiesce,
                fallback=self.policy.quiesce_fallback,
                timeout_s=self.s.snapshot_timeout_s,
            ) as snap:
                vr.snapshot = snap.moref
                vr.consistency = "quiesced" if snap.quiesced else "crash-consistent"
                notes = [n for n in (note, snap.note) if n]
                self._backup_snapshot(conn, vm, vm_mo, snap, vr, just_enabled)
                if notes:  # after the failure's reason, which is what an operator needs first
                    vr.reason = "; ".join([vr.reason, *notes] if vr.reason else notes)

    def _why_cause(self) -> str:
        """The cause of what _may_start said."""
        return self._halt[0] if self._halt is not None else causes.CANCELLED

    def _ensure_cbt(self, conn: Connection, vm: VmInfo, vm_mo: Any) -> tuple[bool, str]:
        if vm.cbt_enabled:
            return False, ""
        try:
            task = vm_mo.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True))
            conn.wait_task(task, f"enable CBT on {vm.name}", self.s.snapshot_timeout_s)
        except Exception as exc:
            log.warning("cbt_enable_failed", error=str(exc))
            return False, f"could not enable CBT ({exc})"
        log.info("cbt_enabled")
        return True, "CBT enabled by this backup"

    def _backup_snapshot(
        self,
        conn: Connection,
        vm: VmInfo,
        vm_mo: Any,
        snap: snapshots.Snapshot,
        vr: report.VmReport,
        cbt_just_enabled: bool,
    ) -> None:
        disks, vm_config = snapshot_disks(conn, snap)
        uuid = vm.instance_uuid or vm.uuid
        # Read this VM's points afresh for every backup: a point pruned since the last
        # read must never be chosen as the base of this one.
        self.rt.history.forget(uuid)
        works: list[_DiskWork] = []
        failed: list[tuple[int, str]] = []
        for d in disks:
            dr = report.DiskReport(d.key, d.label, d.capacity)
            vr.disks.append(dr)
            if d.skip_reason:
                dr.status, dr.reason = report.SKIPPED, d.skip_reason
                continue
            try:
                plan = self._plan_disk(vm_mo, snap, uuid, d, cbt_just_enabled)
            except DiskFailed as exc:
                dr.status, dr.error, dr.cause = report.FAILED, str(exc), exc.cause
                failed.append((d.key, str(exc)))
                continue
            dr.mode, dr.reason = plan.decision.mode, plan.reason
            dr.bytes_planned, dr.tasks, dr.change_id = (
                plan.bytes_planned,
                len(plan.tasks),
                plan.change_id,
            )
            pol = self.policy.name
            metrics.COORD_BYTES_PLANNED.labels(pol, "changed").inc(plan.bytes_planned)
            metrics.COORD_BYTES_PLANNED.labels(pol, "capacity").inc(plan.capacity)
            self._emit(
                "disk-planned",
                vm=vm.name,
                disk_key=d.key,
                mode=plan.decision.mode,
                reason=plan.reason,
                bytes_planned=plan.bytes_planned,
                capacity=plan.capacity,
            )
            works.append(_DiskWork(d, plan, dr))
        self._run_tasks(vm, snap, uuid, works)
        ok: list[_DiskWork] = []
        for w in works:
            try:
                self._check_results(w)
                ok.append(w)
            except DiskFailed as exc:
                w.rep.status, w.rep.error, w.rep.cause = report.FAILED, str(exc), exc.cause
                failed.append((w.info.key, str(exc)))
        if not ok:
            vr.status = report.FAILED
            first = next((dr for dr in vr.disks if dr.status == report.FAILED), None)
            if first is None:
                vr.reason = "no disk to back up"
            else:
                vr.reason = f"no disk could be backed up: disk {first.key}: {first.error}"
                vr.cause = first.cause
            return
        status = "complete" if not failed else "partial"
        try:
            vr.point_id = self._commit(vm, uuid, snap, vm_config, ok, failed, status)
        except DiskFailed as exc:
            for w in ok:
                w.rep.status, w.rep.error, w.rep.cause = report.FAILED, str(exc), exc.cause
            vr.status, vr.reason, vr.cause = report.FAILED, str(exc), exc.cause
            return
        for w in ok:
            w.rep.status = report.OK
        vr.status = report.OK if status == "complete" else report.PARTIAL
        if vr.status == report.PARTIAL:
            vr.reason = f"{len(failed)} disk(s) failed"
        else:
            metrics.COORD_LAST_SUCCESS.labels(vm.vcenter, vm.name).set(snap.created)
        self.rt.history.forget(uuid)

    # --- planning ---------------------------------------------------------------------

    def _plan_disk(
        self, vm_mo: Any, snap: snapshots.Snapshot, uuid: str, d: DiskInfo, cbt_just_enabled: bool
    ) -> planner.DiskPlan:
        hist = self.rt.history
        prev = hist.previous(uuid, d.key)
        force = ""
        days = self.policy.full_every_days
        if days and prev is not None:
            last = hist.last_full_time(uuid, d.key)
            if last is None or self.clock().timestamp() - last >= days * 86400:
                force = f"periodic full (policy: every {days} day(s))"
        decision = planner.decide(
            prev,
            d.change_id,
            d.capacity,
            cbt_just_enabled=cbt_just_enabled,
            force_full_reason=force,
        )
        plan = planner.DiskPlan(d.key, d.capacity, decision, d.change_id)
        areas: list[tuple[int, int]]
        if decision.mode == planner.INCREMENTAL:
            try:
                areas = cbt.changed_areas(
                    cbt.vm_query(vm_mo, snap.mo, d.key, decision.base_change_id), d.capacity
                )
            except cbt.CbtInconsistent as exc:
                raise DiskFailed(f"CBT replies inconsistent: {exc.reason}", causes.VCENTER) from exc
            except cbt.CbtError as exc:
                metrics.COORD_CBT_FALLBACKS.labels("query_failed").inc()
                plan.decision = planner.Decision(
                    planner.FULL, f"incremental not possible: {exc.reason}", code="query_failed"
                )
                decision = plan.decision
        if decision.mode == planner.FULL:
            if decision.code:
                metrics.COORD_CBT_FALLBACKS.labels(decision.code).inc()
            try:
                areas = cbt.changed_areas(
                    cbt.vm_query(vm_mo, snap.mo, d.key, cbt.ALL_AREAS), d.capacity
                )
                plan.notes.append("allocated areas")
            except cbt.CbtInconsistent as exc:
                raise DiskFailed(f"CBT replies inconsistent: {exc.reason}", causes.VCENTER) from exc
            except cbt.CbtError as exc:
                metrics.COORD_CBT_FALLBACKS.labels("whole_disk").inc()
                plan.notes.append(f"whole disk: {exc.reason}")
                areas = [(0, d.capacity)]
        try:
            return planner.plan_ranges(
                plan,
                areas,
                chunk_size=hist.chunk_size,
                max_bytes=self.s.task_max_bytes,
                job_id=self.job_id,
                vm_uuid=uuid,
            )
        except ValueError as exc:
            raise DiskFailed(f"planning failed: {exc}") from exc

    # --- tasks ------------------------------------------------------------------------

    def _route(self, vm: VmInfo, d: DiskInfo) -> str:
        if self.policy.routing == "datastore":
            return task_routing_key("datastore", d.datastore)
        return task_routing_key("host", vm.host)

    def _run_tasks(
        self, vm: VmInfo, snap: snapshots.Snapshot, uuid: str, works: list[_DiskWork]
    ) -> None:
        rt = self.rt
        hist = rt.history
        host = vm.host or vm.host_moref
        # future -> (disk, task id, slot, bytes, deadline): each task's timeout counts
        # from its own publish, so a big disk of timely tasks is never timed out
        pending: dict[Future[TaskResult], tuple[_DiskWork, str, _Slot, int, float]] = {}
        timeout_s = self.s.task_timeout_s

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
                self._task_done(vm, w, r, nbytes)
                if not r.ok and causes.checked(r.cause) == causes.REPOSITORY_FULL:
                    self._halt_job(causes.REPOSITORY_FULL, r.error)
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
            self._withdraw(late, "timeout")

        try:
            for w in works:
                for t in w.plan.tasks:
                    if w.error:
                        break
                    if self._halt is not None:  # the rest would meet the same wall
                        w.cause, w.error = self._halt
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
                        vcenter=vm.vcenter,
                        datacenter=vm.datacenter,
                        host=vm.host,
                        datastore=w.info.datastore,
                        vm_uuid=uuid,
                        vm_moref=vm.moref,
                        vm_name=vm.name,
                        disk_key=w.info.key,
                        snapshot_moref=snap.moref,
                        disk_file=w.info.file,
                        capacity=w.info.capacity,
                        chunk_size=hist.chunk_size,
                        compression_level=hist.compression_level,
                        ranges=[(o, n) for o, n in t.ranges],
                        results_to=rt.results.queue,
                    )
                    try:
                        rt.publisher.publish_sync(
                            "vmbackup.tasks", self._route(vm, w.info), task, timeout=60.0
                        )
                    except UnroutableError:
                        w.error = (
                            f"no proxy takes tasks for {self._route(vm, w.info)}"
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
            self._withdraw(
                [p[1] for p in pending.values()],
                "cancelled" if self.cancel.is_set() else "aborted",
            )

    def _withdraw(self, task_ids: list[str], reason: str) -> None:
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

    def _task_done(self, vm: VmInfo, w: _DiskWork, r: TaskResult, nbytes: int) -> None:
        with self._lock:
            read, sent = self._vm_bytes.get(vm.moref, (0, 0))
            self._vm_bytes[vm.moref] = (read + r.bytes_read, sent + r.bytes_sent)
        self._emit(
            "task-done",
            vm=vm.name,
            disk_key=w.info.key,
            ok=r.ok,
            bytes=nbytes,
            bytes_read=r.bytes_read,
            bytes_sent=r.bytes_sent,
            bytes_known=r.bytes_known,
            bytes_zero=r.bytes_zero,
        )

    def _check_results(self, w: _DiskWork) -> None:
        # a task's own failure first: it names the cause a time-out of its siblings hides
        failures = [r for r in w.results if not r.ok]
        if failures:
            cause = causes.checked(failures[0].cause) or causes.INTERNAL
            for r in failures:
                metrics.COORD_TASK_FAILURES.labels(causes.checked(r.cause) or causes.INTERNAL).inc()
            raise DiskFailed(
                f"{len(failures)} task(s) failed: {failures[0].error or 'failed'}", cause
            )
        if w.error:
            raise DiskFailed(w.error, w.cause or causes.INTERNAL)
        cs = self.rt.history.chunk_size
        expected = planner.chunk_indexes(w.plan.ranges, cs)
        entries: dict[int, bytes] = {}
        for r in w.results:
            w.rep.bytes_read += r.bytes_read
            w.rep.bytes_sent += r.bytes_sent
            for idx, cid in r.entries:
                entries[int(idx)] = bytes(cid)
        if sorted(entries) != expected:
            missing = len(set(expected) - set(entries))
            extra = len(set(entries) - set(expected))
            raise DiskFailed(
                f"task results do not match the plan ({missing} missing, {extra} extra)"
            )
        for idx, cid in entries.items():
            if cid and len(cid) != 32:
                raise DiskFailed(f"chunk {idx}: id of {len(cid)} bytes")
        w.entries = sorted(entries.items())

    # --- commit -----------------------------------------------------------------------

    def _commit(
        self,
        vm: VmInfo,
        uuid: str,
        snap: snapshots.Snapshot,
        vm_config: bytes,
        ok: list[_DiskWork],
        failed: list[tuple[int, str]],
        status: str,
    ) -> str:
        rt = self.rt
        request_id = "c-" + hashlib.sha256(f"{self.job_id}\0{uuid}".encode()).hexdigest()[:32]
        # controller type and bus per disk, for restore-vm and `repo list` (additive)
        ctrl = vm_config_mod.disk_controllers(vm_config)
        per_part = self.s.commit_part_entries
        parts = {w.info.key: self._stage_parts(request_id, w, per_part) for w in ok}
        disks = [
            DiskCommit(
                key=w.info.key,
                capacity=w.info.capacity,
                change_id=w.plan.change_id,
                base_point_id=w.plan.decision.base_point_id
                if w.plan.decision.mode == planner.INCREMENTAL
                else "",
                entries=[] if parts[w.info.key] else w.entries,
                info={
                    "label": w.info.label,
                    "file": w.info.file,
                    "datastore": w.info.datastore,
                    "controller_key": w.info.controller_key,
                    "unit_number": w.info.unit_number,
                    "disk_mode": w.info.disk_mode,
                    **ctrl.get(w.info.key, {}),
                    "mode": w.plan.decision.mode,
                    "reason": w.plan.reason,
                },
                parts=parts[w.info.key],
            )
            for w in ok
        ]

        def build(reply_to: str) -> CommitRequest:
            return CommitRequest(
                request_id=request_id,
                reply_to=reply_to,
                job_id=self.job_id,
                vcenter=vm.vcenter,
                vm_uuid=uuid,
                vm_moref=vm.moref,
                vm_name=vm.name,
                vm_config=vm_config,
                status=status,
                snapshot_time=snap.created,
                disks=disks,
                failed_disks=failed,
            )

        try:
            reply = rt.writer_request(request_id, build, self.s.commit_timeout_s, "commit")
        except WriterRequestFailed as exc:
            raise DiskFailed(f"commit failed: {exc}", causes.WRITER_UNREACHABLE) from None
        if not reply.ok:
            raise DiskFailed(f"commit refused by the writer: {reply.error}", causes.COMMIT_REFUSED)
        log.info("point_committed", point=reply.point_id, status=status, disks=len(disks))
        return reply.point_id

    def _stage_parts(self, request_id: str, w: _DiskWork, per_part: int) -> int:
        """Send a large disk's entries as staged CommitParts; return how many (0 = inline)."""
        if len(w.entries) <= per_part:
            return 0
        key = w.info.key
        slices = [w.entries[i : i + per_part] for i in range(0, len(w.entries), per_part)]

        def send(n: int) -> None:
            pid = part_key(request_id, key, n)
            packed = pack_entries(slices[n])
            reply = self.rt.writer_request(
                pid,
                lambda reply_to: CommitPart(request_id, pid, reply_to, key, n, packed),
                self.s.commit_timeout_s,
                f"commit part {n} of disk {key}",
            )
            if not reply.ok:
                raise DiskFailed(
                    f"commit part {n} of disk {key} refused: {reply.error}", causes.COMMIT_REFUSED
                )

        # a few parts in flight: writers stage them in parallel, memory stays bounded
        with ThreadPoolExecutor(4, thread_name_prefix="commit-part") as ex:
            for fut in [ex.submit(send, n) for n in range(len(slices))]:
                try:
                    fut.result()
                except WriterRequestFailed as exc:
                    raise DiskFailed(f"commit failed: {exc}", causes.WRITER_UNREACHABLE) from None
        log.info("commit_parts_staged", disk=key, parts=len(slices), entries=len(w.entries))
        return len(slices)


def snapshot_disks(conn: Connection, snap: snapshots.Snapshot) -> tuple[list[DiskInfo], bytes]:
    props = conn.get_properties(snap.mo, ["config"])
    config = props.get("config")
    if config is None:
        raise snapshots.SnapshotError(f"snapshot {snap.moref} has no configuration")
    devices = config.hardware.device if config.hardware else []
    disks = [_disk_info(d, {}) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    vm_config = json.dumps(config, cls=VmomiJSONEncoder, sort_keys=True).encode()
    return disks, vm_config
