"""A disk's plan: what to read of it, full or incremental, cut in tasks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from common import causes
from coordinator import cbt, metrics, planner, snapshots
from coordinator.discovery import DiskInfo
from coordinator.disk_work import DiskFailed
from coordinator.job_runtime import Runtime
from coordinator.settings import PolicySettings


def plan_disk(
    rt: Runtime,
    policy: PolicySettings,
    job_id: str,
    now: dt.datetime,
    vm_mo: Any,
    snap: snapshots.Snapshot,
    uuid: str,
    d: DiskInfo,
    cbt_just_enabled: bool,
) -> planner.DiskPlan:
    """Full or incremental (the previous point, CBT, the policy's periodic full), the
    areas to read (CBT's changed or allocated areas, else the whole disk), cut in tasks."""
    hist = rt.history
    prev = hist.previous(uuid, d.key)
    force = ""
    days = policy.full_every_days
    if days and prev is not None:
        last = hist.last_full_time(uuid, d.key)
        if last is None or now.timestamp() - last >= days * 86400:
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
            max_bytes=rt.settings.task_max_bytes,
            job_id=job_id,
            vm_uuid=uuid,
        )
    except ValueError as exc:
        raise DiskFailed(f"planning failed: {exc}") from exc
