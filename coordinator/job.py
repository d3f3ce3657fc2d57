"""One backup job (a policy run): discover, snapshot, plan, publish, collect, commit.

The job: its window, the vCenters of its policy, discovery and selection, the
running-job marker, VMs in parallel (at most ``limits.vms``), the policy's retention
after them (retention.py) and its second copy (copy_after_job.py), the report, metrics
and events, the report kept in the job history (job_record.py). The pieces:
vm_backup.py (one VM's sequence), disk_planning.py (a disk's plan), dispatch.py (tasks
published, bounded, collected, timed out, withdrawn), commits.py (results checked, the
point committed), job_runtime.py (what jobs of one process share, requests to the
writers), snapshots.py (snapshots and their disks).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyVmomi import vmodl

from common import causes
from common.job_ids import new_job_id
from common.logging import bound, get_logger, in_log_context
from common.messages import TaskResult
from coordinator import metrics, report, snapshots
from coordinator.copy_after_job import copy_after_job
from coordinator.discovery import Inventory, VmInfo, discover
from coordinator.disk_work import DiskWork
from coordinator.dispatch import TaskDispatcher
from coordinator.job_progress import JobProgress
from coordinator.job_record import record_job
from coordinator.job_runtime import Runtime, WriterRequestFailed
from coordinator.limits import BackupWindow, Cancelled
from coordinator.policy import lost_selection, select
from coordinator.retention import apply_retention
from coordinator.settings import PolicySettings, vcenters_for
from coordinator.vcenter import VCenterError
from coordinator.vm_backup import VmBackup

log = get_logger(__name__)


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
        progress: JobProgress | None = None,
    ) -> None:
        self.rt = rt
        self.progress = progress
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
        self.dispatcher = TaskDispatcher(
            rt,
            self.job_id,
            policy.routing,
            self.cancel,
            halted=lambda: self._halt,
            halt=self._halt_job,
            on_result=self._task_done,
        )
        self.vm_backup = VmBackup(
            rt,
            policy,
            self.job_id,
            self.cancel,
            clock,
            self.dispatcher,
            self._emit,
            self._may_start,
            self._why_cause,
        )

    # --- the job ----------------------------------------------------------------------

    def run(self) -> report.JobReport:
        rep = self.report
        rt = self.rt
        rt.job_started(self.job_id)
        t0 = time.monotonic()
        rt0 = sum(c.round_trips for c in list(rt.connections.values()))
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
                    unavailable=len(sel.unavailable),
                    out_of_scope=sel.out_of_scope,
                )
                pol = self.policy.name
                metrics.COORD_VMS.labels(pol, "discovered").inc(
                    len(sel.selected) + len(sel.skipped) + len(sel.unavailable)
                )
                for vm in sel.skipped:
                    metrics.COORD_VMS.labels(pol, "skipped").inc()
                    rep.vms.append(self._unbacked_report(vm, report.SKIPPED, vm.skip_reason))
                for vm in sel.unavailable:  # wanted, and vCenter cannot give them now
                    metrics.COORD_VMS.labels(pol, "failed").inc()
                    metrics.COORD_VM_FAILURES.labels(pol, causes.VCENTER).inc()
                    why = f"not backed up: {vm.unavailable}"
                    rep.vms.append(self._unbacked_report(vm, report.FAILED, why, causes.VCENTER))
                wanted = len(sel.selected) + len(sel.unavailable)
                if not wanted and not rep.error:
                    rep.error = lost_selection(pol, wanted, rt.history.last_job(pol))
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
                    # each VM's lines carry this job's context (a pool's thread has none)
                    futs = {
                        ex.submit(in_log_context(self._vm_guarded), vm): i
                        for i, vm in enumerate(sel.selected)
                    }
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
                    # after the window's backups, once the job no longer counts as running
                    rep.retention = apply_retention(rt, self.policy, self.job_id)
                    # then the second copy: what retention removed is not copied
                    rep.copy = copy_after_job(rt, self.policy)
                rt.job_ended(self.job_id)
                rep.vcenter_round_trips = (
                    sum(c.round_trips for c in list(rt.connections.values())) - rt0
                )
                rep.finish()
                seconds = time.monotonic() - t0
                metrics.COORD_JOB_SECONDS.labels(self.policy.name).observe(seconds)
                self._emit("job-done", status=rep.status, seconds=round(seconds, 3))
                metrics.COORD_JOBS.labels(self.policy.name, rep.status).inc()
                record_job(rt, rep)  # the job history (`vmbackup jobs`): best effort
                if self.s.report_dir:
                    try:
                        rep.write(self.s.report_dir)
                    except OSError as exc:
                        log.error("report_write_failed", error=str(exc))
                if rep.error:  # a daemon's job has no exit status: its log line says why
                    log.error(
                        "job_finished", status=rep.status, counts=rep.counts(), error=rep.error
                    )
                else:
                    log.info("job_finished", status=rep.status, counts=rep.counts())
        return rep

    def _emit(self, event: str, *, vm: str = "", disk_key: int = -1, **fields: Any) -> None:
        self.rt.events.emit(self.job_id, event, vm=vm, disk_key=disk_key, **fields)
        if self.progress is not None:
            self.progress.event(event, vm, fields)

    def _window_ended(self) -> None:
        log.warning("backup_window_ended", action="cancel")
        self.cancel.set()

    def _discover(self) -> list[VmInfo]:
        vms: list[VmInfo] = []
        errors = []
        # Every vCenter of the policy, reached or not: one that cannot be reached is a
        # job that did not do all of its work, never a smaller inventory.
        for vc in vcenters_for(self.rt.vcenter_settings(), self.policy):
            try:
                conn = self.rt.connection(vc.name)
            except VCenterError as exc:
                errors.append(str(exc))
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
            self.report.cause = causes.VCENTER
        return vms

    def _unbacked_report(
        self, vm: VmInfo, status: str, reason: str, cause: str = ""
    ) -> report.VmReport:
        """The report of a VM of the policy that no snapshot is taken of: skipped (a
        template) or failed (vCenter cannot give it now)."""
        vr = report.VmReport(
            vm.vcenter,
            vm.name,
            vm.moref,
            vm.instance_uuid or vm.uuid,
            vm.host,
            status=status,
            reason=reason,
            cause=cause,
        )
        skipped = status == report.SKIPPED
        for d in vm.disks:
            why = d.skip_reason or ("VM skipped" if skipped else "VM unavailable")
            vr.disks.append(
                report.DiskReport(
                    d.key, d.label, d.capacity, status=status, reason=why, cause=cause
                )
            )
            metrics.COORD_DISKS.labels(self.policy.name, "skipped" if skipped else "failed").inc()
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
                self.vm_backup.run(vm, vr)
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

    def _why_cause(self) -> str:
        """The cause of what _may_start said."""
        return self._halt[0] if self._halt is not None else causes.CANCELLED

    def _task_done(self, vm: VmInfo, w: DiskWork, r: TaskResult, nbytes: int) -> None:
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
