"""Planning one disk: full or incremental (with the reason), then ranges cut into tasks.

Ranges are aligned to the repository's chunk size (the last chunk may end at the
capacity) and cut into tasks of at most ``max_bytes``. Task ids are derived from the
job, the disk and the ranges only, so a re-planned job publishes the same ids and a
redelivered task is recognised as the same work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.changeid import ChangeIdError, parse

Area = tuple[int, int]

FULL = "full"
INCREMENTAL = "incremental"


@dataclass(frozen=True)
class PreviousDisk:
    """What the repository's latest point knows of a disk."""

    point_id: str
    change_id: str
    capacity: int
    # chunks of its map that verify quarantined: an incremental would carry them over
    # (and its commit fail); a full re-reads the data and so heals the repository
    damaged_chunks: int = 0


@dataclass(frozen=True)
class Decision:
    mode: str  # FULL | INCREMENTAL
    reason: str
    base_change_id: str = ""  # the changeId to query since ("" for a full)
    base_point_id: str = ""  # the point whose map the incremental builds on
    code: str = ""  # why a full, as a metric label ("" for an incremental)


def decide(
    prev: PreviousDisk | None,
    snapshot_change_id: str,
    capacity: int,
    *,
    cbt_just_enabled: bool = False,
    force_full_reason: str = "",
) -> Decision:
    """Incremental only when every rule allows it; otherwise a full, saying why."""
    if force_full_reason:
        return Decision(FULL, force_full_reason, code="periodic")
    if cbt_just_enabled:
        return Decision(FULL, "CBT was just enabled on this VM", code="cbt_enabled")
    if prev is None:
        return Decision(FULL, "no previous restore point of this disk", code="no_previous_point")
    if prev.damaged_chunks:
        return Decision(
            FULL,
            f"previous point {prev.point_id} names {prev.damaged_chunks} damaged "
            "(quarantined) chunk(s): a full stores them again",
            code="base_damaged",
        )
    if not prev.change_id:
        return Decision(FULL, "previous point has no changeId", code="no_change_id")
    if not snapshot_change_id:
        return Decision(FULL, "snapshot disk has no changeId (CBT not active)", code="cbt_inactive")
    if prev.capacity != capacity:
        what = "grew" if capacity > prev.capacity else "changed"
        return Decision(
            FULL,
            f"disk capacity {what} ({prev.capacity} -> {capacity} bytes)",
            code="capacity_changed",
        )
    try:
        old, new = parse(prev.change_id), parse(snapshot_change_id)
    except ChangeIdError as exc:
        return Decision(FULL, f"unusable changeId: {exc}", code="bad_change_id")
    if old.uuid != new.uuid:
        return Decision(
            FULL,
            "CBT was reset since the previous point (changeId uuid differs)",
            code="cbt_reset",
        )
    return Decision(
        INCREMENTAL,
        f"changes since {prev.change_id}",
        base_change_id=prev.change_id,
        base_point_id=prev.point_id,
    )


def merge(areas: Iterable[Area]) -> list[Area]:
    """Sorted, non-overlapping, with touching areas joined; empty areas dropped."""
    out: list[list[int]] = []
    for off, length in sorted(a for a in areas if a[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(o, n) for o, n in out]


def align(areas: Iterable[Area], chunk_size: int, capacity: int) -> list[Area]:
    """Grow areas to whole chunks (capped at the capacity) and merge them."""
    if chunk_size <= 0:
        raise ValueError(f"chunk size {chunk_size} must be positive")
    grown = []
    for off, length in areas:
        if length <= 0:
            continue
        if off < 0 or off + length > capacity:
            raise ValueError(f"area ({off}, {length}) outside the disk (capacity {capacity})")
        start = off - off % chunk_size
        end = min(-(-(off + length) // chunk_size) * chunk_size, capacity)
        grown.append((start, end - start))
    return merge(grown)


def cut(ranges: Iterable[Area], max_bytes: int, chunk_size: int) -> list[list[Area]]:
    """Group aligned ranges into tasks of at most ``max_bytes`` (at least one chunk)."""
    budget = max(chunk_size, max_bytes - max_bytes % chunk_size)
    tasks: list[list[Area]] = []
    cur: list[Area] = []
    room = budget
    for off, length in ranges:
        while length > 0:
            take = min(length, room)
            cur.append((off, take))
            off += take
            length -= take
            room -= take
            if room == 0:
                tasks.append(cur)
                cur, room = [], budget
    if cur:
        tasks.append(cur)
    return tasks


def task_id(job_id: str, vm_uuid: str, disk_key: int, ranges: list[Area]) -> str:
    h = hashlib.sha256(f"{job_id}\0{vm_uuid}\0{disk_key}".encode())
    for off, length in ranges:
        h.update(f"\0{off}:{length}".encode())
    return f"t-{h.hexdigest()[:32]}"


@dataclass
class TaskPlan:
    task_id: str
    ranges: list[Area]

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.ranges)


@dataclass
class DiskPlan:
    key: int
    capacity: int
    decision: Decision
    change_id: str  # the snapshot's changeId, stored with the new point
    ranges: list[Area] = field(default_factory=list)
    tasks: list[TaskPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # fallbacks taken while planning

    @property
    def bytes_planned(self) -> int:
        return sum(n for _, n in self.ranges)

    @property
    def reason(self) -> str:
        return "; ".join([self.decision.reason, *self.notes])


def plan_ranges(
    plan: DiskPlan,
    areas: Iterable[Area],
    *,
    chunk_size: int,
    max_bytes: int,
    job_id: str,
    vm_uuid: str,
) -> DiskPlan:
    plan.ranges = align(areas, chunk_size, plan.capacity)
    plan.tasks = [
        TaskPlan(task_id(job_id, vm_uuid, plan.key, r), r)
        for r in cut(plan.ranges, max_bytes, chunk_size)
    ]
    return plan


def chunk_indexes(ranges: Iterable[Area], chunk_size: int) -> list[int]:
    """Indexes of every chunk the (aligned) ranges cover, in order."""
    out: list[int] = []
    for off, length in ranges:
        out.extend(range(off // chunk_size, -(-(off + length) // chunk_size)))
    return out
