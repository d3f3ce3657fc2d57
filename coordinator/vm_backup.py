"""One VM's backup within a job: a snapshot slot (host + datastores), CBT on, a snapshot
(always removed), per disk a full/incremental plan, its tasks through the job's
dispatcher, the results checked and the point committed. Any failure of a disk leaves
that disk out of the point, with the reason; the VM's report says what happened."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

from pyVmomi import vim

from common.logging import get_logger
from coordinator import metrics, report, snapshots
from coordinator.commits import check_results, commit_point
from coordinator.discovery import VmInfo
from coordinator.disk_planning import plan_disk
from coordinator.disk_work import DiskFailed, DiskWork
from coordinator.dispatch import TaskDispatcher
from coordinator.job_runtime import Runtime
from coordinator.settings import PolicySettings
from coordinator.vcenter import Connection

log = get_logger(__name__)


class VmBackup:
    """What one job's VMs share: the runtime, the policy, the dispatcher, and the job's
    word on whether a VM may still start (``may_start``: "" or why not;
    ``why_cause``: the cause of that answer)."""

    def __init__(
        self,
        rt: Runtime,
        policy: PolicySettings,
        job_id: str,
        cancel: threading.Event,
        clock: Callable[[], dt.datetime],
        dispatcher: TaskDispatcher,
        emit: Callable[..., None],
        may_start: Callable[[], str],
        why_cause: Callable[[], str],
    ) -> None:
        self.rt = rt
        self.s = rt.settings
        self.policy = policy
        self.job_id = job_id
        self.cancel = cancel
        self.clock = clock
        self.dispatcher = dispatcher
        self.emit = emit
        self.may_start = may_start
        self.why_cause = why_cause

    def run(self, vm: VmInfo, vr: report.VmReport) -> None:
        """Back up one VM into ``vr``: a snapshot slot, CBT on, a snapshot (always
        removed), its disks planned, read and committed."""
        why = self.may_start()
        if why:
            vr.status, vr.reason, vr.cause = report.FAILED, f"not started: {why}", self.why_cause()
            return
        conn = self.rt.connections[vm.vcenter]
        vm_mo = conn.moref("VirtualMachine", vm.moref)
        with self.rt.slots.hold(vm.host or vm.host_moref, vm.datastores, self.cancel):
            why = self.may_start()  # waiting for a slot can take long
            if why:
                vr.status, vr.reason = report.FAILED, f"not started: {why}"
                vr.cause = self.why_cause()
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
            self.emit(
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
