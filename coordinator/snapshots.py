"""Backup snapshots: create (quiesce policy + crash-consistent fallback), always remove,
sweep orphans, consolidate.

A snapshot is named ``<prefix>-<job id>`` and its description names the coordinator
and the creation time, so that any coordinator (restarted anywhere: there is no
private database) can tell whose it is and whether its job is still running.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl
from pyVmomi.VmomiJSONEncoder import VmomiJSONEncoder

from common.logging import get_logger
from common.snapshot_disk import SnapshotDisk
from coordinator import metrics
from coordinator.discovery import (
    SWEEP_PROPERTIES,
    DiskInfo,
    VmInfo,
    disk_info,
    retrieve_paged,
)
from coordinator.vcenter import Connection, TaskFailed, VCenterError

log = get_logger(__name__)
_DESC = re.compile(r"coordinator=(?P<coord>\S+)")


class SnapshotError(Exception):
    """The snapshot could not be taken; the VM fails with this reason."""


def snapshot_name(prefix: str, job_id: str) -> str:
    return f"{prefix}-{job_id}"


def job_of(name: str, prefix: str) -> str | None:
    """The job id in one of our snapshot names, None when it is not ours."""
    head = f"{prefix}-"
    if name.startswith(head) and len(name) > len(head):
        return name[len(head) :]
    return None


def description(job_id: str, coordinator_id: str) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"vmbackup backup snapshot job={job_id} coordinator={coordinator_id} created={now}"


class OpenSnapshots:
    """Snapshots held right now (for the open/oldest-age gauges and the sweep)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, float] = {}
        metrics.COORD_SNAPSHOT_OLDEST_AGE.set_function(self.oldest_age)

    def add(self, key: str) -> None:
        with self._lock:
            self._open[key] = time.time()
            metrics.COORD_SNAPSHOTS_OPEN.set(len(self._open))

    def discard(self, key: str) -> None:
        with self._lock:
            self._open.pop(key, None)
            metrics.COORD_SNAPSHOTS_OPEN.set(len(self._open))

    def oldest_age(self) -> float:
        with self._lock:
            return time.time() - min(self._open.values()) if self._open else 0.0


OPEN = OpenSnapshots()


@dataclass
class Snapshot:
    vcenter: str
    vm_moref: str
    moref: str
    mo: Any
    name: str
    quiesced: bool
    note: str = ""  # e.g. quiesce failed, fell back to crash-consistent
    created: float = field(default_factory=time.time)


def create(
    conn: Connection,
    vm: Any,
    *,
    prefix: str,
    job_id: str,
    coordinator_id: str,
    quiesce: bool,
    fallback: str,
    timeout_s: float,
) -> Snapshot:
    name = snapshot_name(prefix, job_id)
    desc = description(job_id, coordinator_id)
    note = ""

    def take(q: bool) -> Any:
        task = vm.CreateSnapshot_Task(name=name, description=desc, memory=False, quiesce=q)
        return conn.wait_task(task, f"snapshot of {vm._moId}", timeout_s)

    try:
        try:
            snap = take(quiesce)
            quiesced = quiesce
        except TaskFailed as exc:
            if not quiesce or fallback != "crash":
                raise
            note = f"quiesced snapshot failed ({exc}); took a crash-consistent one"
            log.warning("quiesce_fallback", vm=vm._moId, error=str(exc))
            snap = take(False)
            quiesced = False
    except (TaskFailed, VCenterError, vmodl.MethodFault) as exc:
        metrics.COORD_SNAPSHOT_FAILURES.labels(conn.name, "create").inc()
        msg = getattr(exc, "msg", "") or str(exc)
        raise SnapshotError(f"snapshot failed: {msg}") from exc
    if snap is None:
        raise SnapshotError("snapshot task succeeded but named no snapshot")
    s = Snapshot(conn.name, vm._moId, snap._moId, snap, name, quiesced, note)
    OPEN.add(f"{conn.name}/{s.moref}")
    log.info("snapshot_created", vm=vm._moId, snapshot=s.moref, name=name, quiesced=quiesced)
    return s


def remove(conn: Connection, snap: Any, timeout_s: float) -> None:
    """RemoveSnapshot_Task(removeChildren=False, consolidate=True); gone already is fine."""
    try:
        task = snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
        conn.wait_task(task, f"remove snapshot {snap._moId}", timeout_s)
    except vmodl.fault.ManagedObjectNotFound:
        log.info("snapshot_already_gone", snapshot=snap._moId)
    except TaskFailed as exc:
        if isinstance(exc.fault, vmodl.fault.ManagedObjectNotFound):
            return
        metrics.COORD_SNAPSHOT_FAILURES.labels(conn.name, "remove").inc()
        raise
    except Exception:
        metrics.COORD_SNAPSHOT_FAILURES.labels(conn.name, "remove").inc()
        raise


@contextmanager
def held(conn: Connection, vm: Any, *, timeout_s: float, **kw: Any) -> Iterator[Snapshot]:
    """A snapshot for the block; removed whatever happens in it."""
    s = create(conn, vm, timeout_s=timeout_s, **kw)
    try:
        yield s
    finally:
        try:
            remove(conn, s.mo, timeout_s)
            log.info("snapshot_removed", vm=s.vm_moref, snapshot=s.moref)
        except Exception as exc:  # the orphan sweep gets another go at it
            log.error("snapshot_remove_failed", vm=s.vm_moref, snapshot=s.moref, error=str(exc))
        finally:
            OPEN.discard(f"{conn.name}/{s.moref}")


# --- orphans and consolidation ------------------------------------------------------


@dataclass
class OurSnapshot:
    vm: Any
    vm_name: str
    snapshot: Any
    name: str
    job_id: str
    coordinator: str
    created: dt.datetime | None


@dataclass
class SweepResult:
    found: list[OurSnapshot] = field(default_factory=list)
    removed: list[OurSnapshot] = field(default_factory=list)
    failed: list[tuple[OurSnapshot, str]] = field(default_factory=list)
    kept: list[OurSnapshot] = field(default_factory=list)  # job still running
    consolidated: list[str] = field(default_factory=list)
    consolidate_failed: list[tuple[str, str]] = field(default_factory=list)


def walk_tree(trees: list[Any] | None) -> Iterator[Any]:
    """Every node of snapshot trees (``vm.snapshot.rootSnapshotList``), parents first."""
    for t in trees or []:
        yield t
        yield from walk_tree(t.childSnapshotList)


def find_ours(conn: Connection, prefix: str) -> tuple[list[OurSnapshot], list[tuple[Any, str]]]:
    """Our snapshots on every VM, and the VMs that need consolidation (one paged pass)."""
    ours: list[OurSnapshot] = []
    consolidate: list[tuple[Any, str]] = []
    types: dict[type, list[str]] = {vim.VirtualMachine: SWEEP_PROPERTIES}
    for vm, p in retrieve_paged(conn, types, conn.settings.page_size):
        name = p.get("name", "")
        if p.get("runtime.consolidationNeeded"):
            consolidate.append((vm, name))
        info = p.get("snapshot")
        if info is None:
            continue
        for node in walk_tree(info.rootSnapshotList):
            job = job_of(node.name or "", prefix)
            if job is None:
                continue
            m = _DESC.search(node.description or "")
            ours.append(
                OurSnapshot(
                    vm=vm,
                    vm_name=name,
                    snapshot=node.snapshot,
                    name=node.name,
                    job_id=job,
                    coordinator=m.group("coord") if m else "",
                    created=node.createTime,
                )
            )
    return ours, consolidate


def _age(s: OurSnapshot, now: dt.datetime) -> float:
    """Seconds since the snapshot was taken (infinite when vCenter did not say)."""
    return (now - s.created).total_seconds() if s.created is not None else float("inf")


def sweep(
    conn: Connection,
    *,
    prefix: str,
    coordinator_id: str,
    active_jobs: set[str],
    min_age_s: float,
    timeout_s: float,
    now: dt.datetime | None = None,
) -> SweepResult:
    """Remove our snapshots that outlived their job; consolidate VMs that need it.

    A snapshot is an orphan when its job is not running here and either this
    coordinator made it (same id: the job died with an earlier run of us) or it is
    older than ``min_age_s`` (another coordinator's, surely dead by now).
    """
    now = now or dt.datetime.now(dt.UTC)
    res = SweepResult()
    ours, needs_consolidation = find_ours(conn, prefix)
    for s in ours:
        if s.job_id in active_jobs:
            res.kept.append(s)
            continue
        age = _age(s, now)
        if s.coordinator != coordinator_id and age < min_age_s:
            res.kept.append(s)
            continue
        res.found.append(s)
        metrics.COORD_ORPHANS_FOUND.labels(conn.name).inc()
        log.warning(
            "orphan_snapshot", vm=s.vm_name, snapshot=s.snapshot._moId, name=s.name, age_s=age
        )
        try:
            remove(conn, s.snapshot, timeout_s)
        except Exception as exc:
            res.failed.append((s, str(exc)))
            log.error(
                "orphan_remove_failed", vm=s.vm_name, snapshot=s.snapshot._moId, error=str(exc)
            )
            continue
        res.removed.append(s)
        metrics.COORD_ORPHANS_REMOVED.labels(conn.name).inc()
    # Orphans still on a VM after this sweep: the alert watches their age.
    metrics.COORD_ORPHAN_OLDEST_AGE.labels(conn.name).set(
        max((_age(s, now) for s, _ in res.failed), default=0.0)
    )
    for vm, name in needs_consolidation:
        try:
            conn.wait_task(vm.ConsolidateVMDisks_Task(), f"consolidate {name}", timeout_s)
        except Exception as exc:
            res.consolidate_failed.append((name, str(exc)))
            metrics.COORD_CONSOLIDATIONS.labels(conn.name, "failed").inc()
            log.error("consolidation_failed", vm=name, error=str(exc))
            continue
        res.consolidated.append(name)
        metrics.COORD_CONSOLIDATIONS.labels(conn.name, "ok").inc()
        log.info("consolidated", vm=name)
    log.info(
        "orphan_sweep",
        vcenter=conn.name,
        found=len(res.found),
        removed=len(res.removed),
        failed=len(res.failed),
        kept=len(res.kept),
        consolidated=len(res.consolidated),
    )
    return res


def snapshot_disks(conn: Connection, snap: Snapshot) -> tuple[list[DiskInfo], bytes]:
    """The snapshot's disks as frozen (their backing files) and the VM config it holds."""
    props = conn.get_properties(snap.mo, ["config"])
    config = props.get("config")
    if config is None:
        raise SnapshotError(f"snapshot {snap.moref} has no configuration")
    devices = config.hardware.device if config.hardware else []
    disks = [disk_info(d, {}) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    vm_config = json.dumps(config, cls=VmomiJSONEncoder, sort_keys=True).encode()
    return disks, vm_config


def disk_to_read(vm: VmInfo, d: DiskInfo, snap: Snapshot) -> SnapshotDisk:
    """What a proxy opens to read disk ``d`` (one of :func:`snapshot_disks`) of ``vm``
    as ``snap`` froze it: the one place the coordinator's models become the wire's."""
    return SnapshotDisk(
        vcenter=vm.vcenter,
        datacenter=vm.datacenter,
        host=vm.host,
        datastore=d.datastore,
        vm_moref=vm.moref,
        snapshot_moref=snap.moref,
        disk_file=d.file,
        capacity=d.capacity,
    )
