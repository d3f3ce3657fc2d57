"""``restore-vm --in-place``: roll an existing VM back to a point, writing only what changed.

The order, chosen for real vSphere (docs/restore.md, "In-place rollback"):

1. find the VM and check its disks are the point's (rollback_plan.py); refuse snapshots
   that are not ours: the base disk must be the VM's current disk;
2. power it off (the caller has asked for confirmation), remove a snapshot an earlier
   run of this command left behind;
3. snapshot it: QueryChangedDiskAreas needs one, and it freezes CBT's reference; ask CBT,
   per disk, for the areas changed since the point's changeId (coordinator/cbt.py, paged
   and checked); a disk CBT cannot answer for is written whole;
4. remove the snapshot *before* writing: writing the base disk under a snapshot would
   break the snapshot's delta chain on ESXi (and, in the lab, change the frozen file the
   snapshot shares), and a powered-off VM with no snapshot does not change meanwhile;
5. check the VM is still off, without snapshots and on the same disk files; write the
   chosen chunks from the point through NBD (nbd_write.py: data chunks written, zero
   chunks zeroed), flushed; ESXi's CBT records these writes, so the next backup's
   incremental carries them;
6. check again, then power on when asked.

Rerunning after a stop is safe: nothing before step 5 writes a disk, a leftover snapshot
of ours is removed first, and a rerun asks CBT again with the point's changeId, which
names every area that still differs from the point (the areas written by the stopped run
included).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from common.logging import get_logger
from common.snapshot_disk import SnapshotDisk
from coordinator import snapshots
from coordinator.cbt import CbtError, changed_areas, vm_query
from coordinator.discovery import DiskInfo, VmInfo, discover
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.nbd_write import ChunkSource, NbdTarget, Put, write_chunks_nbd
from coordinator.restore.rollback_plan import (
    MODE_FULL,
    MODE_INCREMENTAL,
    ChunkRuns,
    chunk_runs,
    find_vm,
    full_reason,
    match_disks,
    whole_disk,
)
from coordinator.restore.rollback_result import (
    PARTLY_WRITTEN,
    ROLLED_BACK,
    RollbackFailed,
    RollbackResult,
    RolledBackDisk,
)
from coordinator.vcenter import Connection
from repository.disk_reader import DiskReader
from repository.interfaces import PointSource
from repository.points import Point
from repository.restore import restore_disk_positional

log = get_logger(__name__)

NOTHING_WRITTEN = "no disk was written: they are as they were before this command"


@dataclass
class Rollback:
    """What the rollback found before changing anything (shown in the confirmation)."""

    point: Point
    vm: VmInfo
    vm_mo: Any
    disks: list[DiskInfo]  # the VM's disks in the point's order
    power_state: str
    leftovers: list[Any] = field(default_factory=list)  # our snapshots of an earlier run
    notes: list[str] = field(default_factory=list)

    def question(self) -> str:
        keys = ", ".join(str(d.key) for d in self.disks)
        power = "power it off, " if self.power_state != "poweredOff" else ""
        return (
            f"This will {power}overwrite disk(s) {keys} of VM {self.vm.name!r}"
            f" ({self.vm.moref}) with point {self.point.id}: what the VM wrote since is lost."
        )


def _snapshot_nodes(conn: Connection, vm_mo: Any) -> list[Any]:
    info = conn.get_properties(vm_mo, ["snapshot"]).get("snapshot")
    return list(snapshots.walk_tree(info.rootSnapshotList)) if info is not None else []


def leftover_prefix(snapshot_prefix: str) -> str:
    return f"{snapshots.snapshot_name(snapshot_prefix, 'rollback')}-"


def prepare(
    conn: Connection, repo: PointSource, point_id: str, *, vm: str = "", snapshot_prefix: str
) -> Rollback:
    """Find the VM and check it can be rolled back; changes nothing."""
    point = repo.get_point(point_id)  # PointNotFoundError names an unknown point
    if point.status != "complete" and not point.disks:
        raise RestoreVmError(f"point {point_id} holds no disk")
    info = find_vm(discover(conn).vms, point, vm)
    if info.unavailable or info.template:
        raise RestoreVmError(
            f"VM {info.name!r} cannot be rolled back: {info.unavailable or 'it is a template'}"
        )
    disks, notes = match_disks(point, info)
    if vm and point.vm_uuid not in (info.instance_uuid, info.uuid):
        notes.append(
            f"VM {info.name!r} is not the point's VM ({point.vm_name!r}, uuid {point.vm_uuid}):"
            " CBT cannot compare them, so its disks are written whole"
        )
    vm_mo = conn.moref("VirtualMachine", info.moref)
    ours = leftover_prefix(snapshot_prefix)
    nodes = _snapshot_nodes(conn, vm_mo)
    theirs = [n.name for n in nodes if not (n.name or "").startswith(ours)]
    if theirs:
        raise RestoreVmError(
            f"VM {info.name!r} has snapshots ({', '.join(theirs)}): an in-place rollback"
            " writes the base disks, which a snapshot's delta files depend on. Delete or"
            " consolidate them first (or restore the point as a new VM)"
        )
    state = str(conn.get_properties(vm_mo, ["runtime.powerState"]).get("runtime.powerState"))
    return Rollback(point, info, vm_mo, disks, state, [n.snapshot for n in nodes], notes)


def rollback_vm(
    conn: Connection,
    repo: PointSource,
    rb: Rollback,
    nbd: NbdTarget,
    *,
    snapshot_prefix: str,
    timeout_s: float = 1800.0,
    attempts: int = 3,
    power_on: bool = False,
    progress: Callable[[str, int, int], None] = lambda _d, _n, _t: None,
) -> RollbackResult:
    """Roll ``rb.vm`` back to ``rb.point`` (see the module's docstring for the order)."""
    t0 = time.monotonic()
    res = RollbackResult(rb.point.id, conn.name, rb.vm.name, rb.vm.moref, rb.power_state)
    res.notes = list(rb.notes)
    res.disks = [RolledBackDisk(d.key, d.label, d.file, d.capacity) for d in rb.disks]
    vm_mo = rb.vm_mo
    try:
        if rb.power_state != "poweredOff":
            log.info("rollback_power_off", vm=rb.vm.name, state=rb.power_state)
            conn.wait_task(vm_mo.PowerOffVM_Task(), f"power off {rb.vm.name!r}", timeout_s)
        for old in rb.leftovers:  # an earlier run stopped before it could remove it
            log.warning("rollback_leftover_snapshot", vm=rb.vm.name, snapshot=old._moId)
            snapshots.remove(conn, old, timeout_s)
            res.notes.append(f"removed snapshot {old._moId} left by an earlier rollback")
    except Exception as exc:
        raise RollbackFailed(f"{_what(exc)}; {NOTHING_WRITTEN}", res) from exc
    plans = _ask_cbt(conn, repo, rb, res, snapshot_prefix, timeout_s)
    _check_quiet(conn, rb, res, "before writing")
    for d, disk, runs in zip(rb.disks, res.disks, plans, strict=True):
        _write_disk(repo, rb, res, nbd, d, disk, runs, attempts, progress)
        res.bytes_written += disk.bytes_written
        res.bytes_zeroed += disk.bytes_zeroed
    _check_quiet(conn, rb, res, "after writing")
    if power_on:
        try:
            conn.wait_task(vm_mo.PowerOnVM_Task(), f"power on {rb.vm.name!r}", timeout_s)
        except Exception as exc:
            raise RollbackFailed(f"the disks were rolled back but {_what(exc)}", res) from exc
    res.power_state = str(conn.get_properties(vm_mo, ["runtime.powerState"])["runtime.powerState"])
    res.seconds = time.monotonic() - t0
    return res


def _what(exc: BaseException) -> str:
    if isinstance(exc, vim.fault.VimFault | RestoreVmError):
        name = type(exc).__name__.rsplit(".", 1)[-1]
        return f"vCenter refused: {name}: {getattr(exc, 'msg', '') or exc}"
    return str(exc) or type(exc).__name__


def _ask_cbt(
    conn: Connection,
    repo: PointSource,
    rb: Rollback,
    res: RollbackResult,
    prefix: str,
    timeout_s: float,
) -> list[ChunkRuns]:
    """Snapshot, ask CBT per disk, remove the snapshot: the chunks to write per disk."""
    job = f"rollback-{uuid.uuid4().hex[:8]}"
    try:
        snap = snapshots.create(
            conn,
            rb.vm_mo,
            prefix=prefix,
            job_id=job,
            coordinator_id="restore-vm",
            quiesce=False,  # powered off: nothing to quiesce
            fallback="fail",
            timeout_s=timeout_s,
        )
    except Exception as exc:
        raise RollbackFailed(f"{_what(exc)}; {NOTHING_WRITTEN}", res) from exc
    res.snapshot = snap.name
    plans: list[ChunkRuns] = []
    failure: BaseException | None = None
    try:
        frozen, _cfg = snapshots.snapshot_disks(conn, snap)
        now = {f.key: f.change_id for f in frozen}
        for d, disk in zip(rb.disks, res.disks, strict=True):
            plans.append(_plan_disk(repo, rb, snap.mo, d, disk, now.get(d.key, "")))
    except BaseException as exc:  # the snapshot goes first (Ctrl-C too); then this is reported
        failure = exc
    try:
        snapshots.remove(conn, snap.mo, timeout_s)
    except Exception as exc:
        raise RollbackFailed(
            f"snapshot {snap.name} ({snap.moref}) could not be removed ({_what(exc)}), so no"
            f" disk was written (not under a snapshot): they are as they were before this"
            f" command. Remove the snapshot, or rerun: a rerun removes it first",
            res,
        ) from exc
    finally:
        snapshots.OPEN.discard(f"{conn.name}/{snap.moref}")
    res.snapshot_removed = True
    log.info("rollback_snapshot_removed", vm=rb.vm.name, snapshot=snap.moref)
    if failure is not None and not isinstance(failure, Exception):
        raise failure  # Ctrl-C: the snapshot is gone, nothing was written
    if failure is not None:
        raise RollbackFailed(
            f"asking CBT failed ({_what(failure)}); the snapshot was removed and {NOTHING_WRITTEN}",
            res,
        ) from failure
    return plans


def _plan_disk(
    repo: PointSource, rb: Rollback, snap_mo: Any, d: DiskInfo, disk: RolledBackDisk, now: str
) -> ChunkRuns:
    pd = rb.point.disk(d.key)
    cs = repo.load_map(rb.point, d.key).chunk_size
    why = full_reason(pd.change_id, now, rb.vm.cbt_enabled)
    if not why and rb.point.vm_uuid not in (rb.vm.instance_uuid, rb.vm.uuid):
        why = "the VM is not the point's VM"
    if not why:
        try:
            areas = changed_areas(vm_query(rb.vm_mo, snap_mo, d.key, pd.change_id), d.capacity)
        except CbtError as exc:  # FileFault for a forgotten changeId, and the like
            why = exc.reason
        else:
            runs = chunk_runs(areas, cs, d.capacity)
            disk.mode, disk.areas = MODE_INCREMENTAL, len(areas)
            disk.changed_bytes = sum(n for _o, n in areas)
            disk.why = f"{len(areas)} area(s) changed since changeId {pd.change_id}"
    if why:
        runs = whole_disk(cs, d.capacity)
        disk.mode, disk.why = MODE_FULL, f"CBT cannot answer: {why}"
        log.warning("rollback_full_write", vm=rb.vm.name, disk=d.key, why=why)
    disk.chunks, disk.planned_bytes = runs.chunks, runs.bytes
    log.info(
        "rollback_disk_plan",
        vm=rb.vm.name,
        disk=d.key,
        mode=disk.mode,
        why=disk.why,
        areas=disk.areas,
        chunks=disk.chunks,
        bytes=disk.planned_bytes,
    )
    return runs


def _check_quiet(conn: Connection, rb: Rollback, res: RollbackResult, when: str) -> None:
    """The VM is off, has no snapshot and is on the same disk files: else writing its
    disks (or what was written) is not what was checked."""
    p = conn.get_properties(rb.vm_mo, ["snapshot", "runtime.powerState", "config.hardware.device"])
    files = {
        int(dev.key): str(getattr(dev.backing, "fileName", "") or "")
        for dev in p.get("config.hardware.device") or []
        if isinstance(dev, vim.vm.device.VirtualDisk)
    }
    problems = []
    if p.get("runtime.powerState") != "poweredOff":
        problems.append(f"it is {p.get('runtime.powerState')}")
    if p.get("snapshot") is not None:
        problems.append("it has a snapshot")
    for d in rb.disks:
        if files.get(d.key) != d.file:
            problems.append(f"disk {d.key} is now {files.get(d.key) or 'gone'} (was {d.file})")
    if problems:
        state = NOTHING_WRITTEN if when == "before writing" else "see each disk's state"
        raise RollbackFailed(
            f"VM {rb.vm.name!r} changed {when} ({'; '.join(problems)}): someone else is"
            f" working on it; {state}. Rerun once it is left alone",
            res,
        )


def _write_disk(
    repo: PointSource,
    rb: Rollback,
    res: RollbackResult,
    nbd: NbdTarget,
    d: DiskInfo,
    disk: RolledBackDisk,
    runs: ChunkRuns,
    attempts: int,
    progress: Callable[[str, int, int], None],
) -> None:
    if not runs.runs:
        disk.state = ROLLED_BACK  # CBT named no change: the disk is the point already
        progress(f"disk {d.key}", 0, 0)
        return
    argv = nbd.live_disk_command(
        SnapshotDisk(
            vcenter=nbd.vcenter,
            datacenter=rb.vm.datacenter,
            host=rb.vm.host,
            datastore=d.datastore,
            vm_moref=rb.vm.moref,
            snapshot_moref="",  # the live (base) disk: the VM has no snapshot now
            disk_file=d.file,
            capacity=d.capacity,
        )
    )
    if disk.mode == MODE_FULL:
        source = _whole(repo, rb.point.id, d.key)
    else:
        source = _chunks(DiskReader(repo, rb.point.id, d.key, cache_bytes=0), runs)

    def report(position: int) -> None:
        progress(f"disk {d.key}", runs.done_at(position), runs.bytes)

    def retry(attempt: int, why: str) -> None:
        log.warning("rollback_write_retry", disk=d.key, attempt=attempt, error=why)

    disk.state = PARTLY_WRITTEN  # from the first write on, until the flush
    try:
        st = write_chunks_nbd(
            argv,
            d.key,
            d.capacity,
            source,
            zeros=True,  # the disk holds old data where the point has zeros
            in_flight=nbd.in_flight,
            attempts=attempts,
            on_retry=retry,
            progress=report,
        )
    except RestoreVmError as exc:
        raise RollbackFailed(
            f"{exc}. The disk is partly written: rerun the same command, which asks CBT"
            " again and writes what still differs from the point",
            res,
        ) from exc
    disk.bytes_written, disk.bytes_zeroed = st.data_bytes, st.zero_bytes
    disk.attempts, disk.seconds = st.attempts, st.seconds
    disk.state = ROLLED_BACK
    log.info(
        "rollback_disk",
        vm=rb.vm.name,
        disk=d.key,
        mode=disk.mode,
        written=st.data_bytes,
        zeroed=st.zero_bytes,
        seconds=round(st.seconds, 3),
    )


def _whole(repo: PointSource, point_id: str, key: int) -> ChunkSource:
    """Every chunk of the disk, in order (the repository's streaming restore reader)."""

    def source(put: Put, start: int) -> None:
        restore_disk_positional(repo, point_id, key, put, f"disk {key} in place", start=start)

    return source


def _chunks(reader: DiskReader, runs: ChunkRuns) -> ChunkSource:
    """The chunks of ``runs``, read one by one through the point's random-access reader."""

    def source(put: Put, start: int) -> None:
        for off, n in runs.chunks_from(start):
            [ext] = reader.extents(off, n)  # one chunk: one extent
            if ext.zero:
                put(off, None, n)
                continue
            buf = bytearray(n)  # its own buffer: the write holds it until confirmed
            reader.pread(buf, off)
            put(off, memoryview(buf), n)

    return source
