"""What an in-place rollback (``restore-vm --in-place``) decides before it writes: which VM,
whether its disks are the point's, whether CBT can say what changed, and which chunks to
write. No vCenter calls here (rollback.py makes them), so every rule is testable alone."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.cbt import ALL_AREAS, Area
from coordinator.discovery import DiskInfo, VmInfo
from coordinator.restore.errors import RestoreVmError
from repository.points import Point

MODE_INCREMENTAL = "incremental"
MODE_FULL = "full"


def find_vm(vms: list[VmInfo], point: Point, vm: str = "") -> VmInfo:
    """The VM to roll back: ``vm`` (a name or moref) when given, else the one whose
    instance UUID (or BIOS UUID, for points of vCenters that report none) is the point's."""
    if vm:
        found = [v for v in vms if vm in (v.name, v.moref)]
        what = f"VM {vm!r}"
    else:
        found = [v for v in vms if point.vm_uuid in (v.instance_uuid, v.uuid)]
        what = f"VM with uuid {point.vm_uuid} (point {point.id} of {point.vm_name!r})"
    if not found:
        hint = "" if vm else ": it was removed or re-registered; name it with --vm"
        raise RestoreVmError(f"no {what} on this vCenter{hint}")
    if len(found) > 1:
        names = ", ".join(f"{v.name} ({v.moref})" for v in found)
        raise RestoreVmError(f"{len(found)} VMs match {what}: {names}; choose one with --vm")
    return found[0]


def match_disks(point: Point, vm: VmInfo) -> tuple[list[DiskInfo], list[str]]:
    """The VM's disks in the point's order, each the point's key and capacity; and notes
    for the disks left alone (independent or physical RDM: never in a point). Anything
    else that differs is a refusal naming the disk: writing a point's disk onto a disk of
    another size, or leaving a disk of the VM as it is, is not a rollback."""
    ours = {d.key: d for d in vm.disks if not d.skip_reason}
    notes = [
        f"disk {d.key} ({d.label}) left as it is: {d.skip_reason}"
        for d in vm.disks
        if d.skip_reason
    ]
    failed = dict(point.failed_disks)
    problems: list[str] = []
    out: list[DiskInfo] = []
    for pd in point.disks:
        d = ours.pop(pd.key, None)
        if d is None:
            problems.append(f"disk {pd.key} of the point is not on VM {vm.name!r}")
        elif d.capacity != pd.capacity:
            problems.append(
                f"disk {pd.key} ({d.label}) of VM {vm.name!r} holds {d.capacity} bytes,"
                f" the point's {pd.capacity}"
            )
        else:
            out.append(d)
    for key, d in sorted(ours.items()):
        why = failed.get(key)
        extra = f" (it failed in that backup: {why})" if why else ""
        problems.append(f"disk {key} ({d.label}) of VM {vm.name!r} is not in the point{extra}")
    if problems:
        raise RestoreVmError(
            f"the disks of VM {vm.name!r} do not match point {point.id}: "
            + "; ".join(problems)
            + ". Restore the point as a new VM instead (restore-vm without --in-place)"
        )
    return out, notes


def _epoch(change_id: str) -> str:
    return change_id.split("/", 1)[0]


def full_reason(point_change_id: str, current_change_id: str, cbt_enabled: bool) -> str:
    """Why CBT cannot answer for this disk ("" when it may): then the whole disk is
    written. A reset (new uuid part) is told before asking, as vSphere-facts has it; the
    query's own faults (FileFault for a changeId vCenter forgot) are the caller's."""
    if not point_change_id or point_change_id == ALL_AREAS:
        return "the point has no changeId for this disk"
    if not cbt_enabled or not current_change_id:
        return "CBT is off on the VM"
    if _epoch(point_change_id) != _epoch(current_change_id):
        return (
            f"CBT was reset since the point (changeId {point_change_id}, now {current_change_id})"
        )
    return ""


@dataclass(frozen=True)
class ChunkRuns:
    """Byte ranges of whole chunks to write (the last one cut at the capacity), sorted
    and merged."""

    runs: list[tuple[int, int]]  # (start, end)
    chunk_size: int

    @property
    def bytes(self) -> int:
        return sum(e - s for s, e in self.runs)

    @property
    def chunks(self) -> int:
        cs = self.chunk_size
        return sum((e - s + cs - 1) // cs for s, e in self.runs)

    def chunks_from(self, start: int) -> list[tuple[int, int]]:
        """(offset, length) of every chunk at or after ``start``, in order."""
        cs = self.chunk_size
        out = []
        for s, e in self.runs:
            for off in range(max(s, (start + cs - 1) // cs * cs), e, cs):
                out.append((off, min(cs, e - off)))
        return out

    def done_at(self, position: int) -> int:
        """Bytes of the runs below ``position`` (for progress)."""
        return sum(max(0, min(e, position) - s) for s, e in self.runs)


def chunk_runs(areas: list[Area], chunk_size: int, capacity: int) -> ChunkRuns:
    """The chunks the changed ``areas`` touch: a point's disk is a map of whole chunks,
    so an area is widened to the chunk boundaries around it."""
    runs: list[tuple[int, int]] = []
    for off, n in sorted(areas):
        if n <= 0:
            continue
        s = off // chunk_size * chunk_size
        e = min(capacity, -(-(off + n) // chunk_size) * chunk_size)
        if runs and s <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], e))
        else:
            runs.append((s, e))
    return ChunkRuns(runs, chunk_size)


def whole_disk(chunk_size: int, capacity: int) -> ChunkRuns:
    return ChunkRuns([(0, capacity)] if capacity > 0 else [], chunk_size)
