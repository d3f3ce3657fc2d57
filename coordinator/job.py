"""One backup job (a policy run): discover, snapshot, plan, publish, collect, commit.

Per VM: a snapshot slot (host + datastores), CBT on, a snapshot (always removed),
per disk a full/incremental plan, tasks published routed by host or datastore with
at most ``tasks_per_host`` in flight, results collected until every chunk of every
range is accounted for, then one CommitRequest to the writers with the snapshot's
changeIds. Any failure of a disk leaves that disk out of the commit, with the reason.

The pieces: disk_planning.py (a disk's plan), dispatch.py (tasks published, bounded,
collected, timed out, withdrawn), commits.py (results checked, the point committed),
job_runtime.py (what jobs of one process share, requests to the writers),
snapshots.py (snapshots and their disks). This module holds the sequence.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyVmomi import vim, vmodl

from common import causes, metrics
from common.logging import bound, get_logger
from common.messages import TaskResult
from coordinator import report, snapshots
from coordinator.commits import check_results, commit_point
from coordinator.discovery import Inventory, VmInfo, discover
from coordinator.disk_planning import plan_disk
from coordinator.disk_work import DiskFailed, DiskWork
from coordinator.dispatch import TaskDispatcher
from coordinator.job_ids import new_job_id
from coordinator.job_runtime import Runtime, WriterRequestFailed
from coordinator.limits import BackupWindow, Cancelled
from coordinator.policy import lost_selection, select
from coordinator.settings import PolicySettings, vcenters_for
from coordinator.vcenter import Connection, VCenterError

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
        self.dispatcher = TaskDispatcher(
            rt,
            self.job_id,
            policy.routing,
            self.cancel,
            halted=lambda: self._halt,
            halt=self._halt_job,
            on_result=self._task_done,
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
                rep.vcenter_round_trips = (
                    sum(c.round_trips for c in list(rt.connections.values())) - rt0
                )
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
                if rep.error:  # a daemon's job has no exit status: its log line says why
                    log.error(
                        "job_finished", status=rep.status, counts=rep.counts(), error=rep.error
                    )
                else:
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
        disks, vm_config = snapshots.snapshot_disks(conn, snap)
        uuid = vm.instance_uuid or vm.uuid
        # Read this VM's points afresh for every backup: a point pruned since the last
        # read must never be chosen as the base of this one.
        self.rt.history.forget(uuid)
        works: list[DiskWork] = []
        failed: list[tuple[int, str]] = []
        for d in disks:
            dr = report.DiskReport(d.key, d.label, d.capacity)
            vr.disks.append(dr)
            if d.skip_reason:
                dr.status, dr.reason = report.SKIPPED, d.skip_reason
                continue
            try:
                plan = plan_disk(
                    self.rt,
                    self.policy,
                    self.job_id,
                    self.clock(),
                    vm_mo,
                    snap,
                    uuid,
                    d,
                    cbt_just_enabled,
                )
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
            works.append(DiskWork(d, plan, dr))
        self.dispatcher.run(vm, snap, uuid, works)
        ok: list[DiskWork] = []
        for w in works:
            try:
                check_results(w, self.rt.history.chunk_size)
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
            vr.point_id = commit_point(
                self.rt, self.job_id, vm, uuid, snap, vm_config, ok, failed, status
            )
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

    # --- tasks ------------------------------------------------------------------------

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
