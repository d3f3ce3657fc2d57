"""Turning a PointCommit into a restore point: each disk's map built from its base point's
map and the new entries (staged by proxies, staged as commit parts, inline), checked, and
committed atomically with the point's metadata."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from repository.chunk_store import ChunkStore
from repository.errors import InvalidRequestError, MissingChunkError
from repository.fixed_index import ZERO_ID, DiskMap, chunk_count
from repository.pack_store import PackStore
from repository.point_commit import DiskChanges, PointCommit
from repository.points import (
    STATUSES,
    Point,
    PointDisk,
    PointRef,
    PointStore,
    check_point_id,
    check_vm_uuid,
    make_point_id,
)
from repository.staging import CommitStaging

CHECK_BATCH = 8192  # named chunks looked up (and touched) at a time


class IndexRuns:
    """The chunk indexes a disk's entries named, kept as runs [start, end): as cheap as
    a counter for the long runs of consecutive indexes a task names."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self._start = self._end = -1

    def add(self, index: int) -> None:
        if index == self._end:
            self._end += 1
            return
        if self._end >= 0:
            self.runs.append((self._start, self._end))
        self._start, self._end = index, index + 1

    def done(self) -> list[tuple[int, int]]:
        if self._end >= 0:
            self.runs.append((self._start, self._end))
            self._start = self._end = -1
        return sorted(self.runs)


def planned_runs(
    planned: Sequence[tuple[int, int]], chunk_size: int, n_chunks: int, key: int
) -> list[tuple[int, int]]:
    """The chunk index runs the planned byte ranges cover, merged."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(planned):
        if off < 0 or length <= 0 or off % chunk_size:
            raise InvalidRequestError(
                f"disk {key}: planned range ({off}, {length}) is not chunk aligned and positive"
            )
        start, end = off // chunk_size, -(-(off + length) // chunk_size)
        if end > n_chunks:
            raise InvalidRequestError(f"disk {key}: planned range ({off}, {length}) past its end")
        if out and start < out[-1][1]:
            raise InvalidRequestError(f"disk {key}: planned ranges overlap at byte {off}")
        if out and start == out[-1][1]:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def check_coverage(named: list[tuple[int, int]], planned: list[tuple[int, int]], key: int) -> None:
    """The entries named every planned chunk exactly once, and nothing else."""
    merged: list[tuple[int, int]] = []
    for start, end in named:  # sorted
        if merged and start < merged[-1][1]:
            raise InvalidRequestError(f"disk {key}: chunk {start} is named twice")
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    if merged == planned:
        return
    want = sum(e - s for s, e in planned)
    have = sum(e - s for s, e in merged)
    raise InvalidRequestError(
        f"disk {key}: the entries do not cover the planned chunks ({have} named, {want}"
        f" planned; first named runs {merged[:3]}, first planned {planned[:3]})"
    )


class PointCommitter:
    def __init__(
        self,
        chunk_size: int,
        point_store: PointStore,
        staging: CommitStaging,
        chunks: ChunkStore | PackStore,
        get_point: Callable[[str], Point],
        load_map: Callable[[Point, int], DiskMap],
    ) -> None:
        self.chunk_size = chunk_size
        self.point_store = point_store
        self.staging = staging
        self.chunks = chunks
        self.get_point = get_point
        self.load_map = load_map

    def commit(self, c: PointCommit) -> str:
        """Commit the point; a repeated commit (a redelivery) returns the point it made."""
        vm_uuid = check_vm_uuid(c.vm_uuid)
        if c.status not in STATUSES:
            raise InvalidRequestError(f"status {c.status!r} is not one of {STATUSES}")
        point_id = make_point_id(c.job_id, vm_uuid, c.snapshot_time)
        if self.point_store.exists(PointRef(vm_uuid, point_id)):
            self._clean_staging(c)
            return point_id
        maps: dict[int, DiskMap] = {}
        disks: list[PointDisk] = []
        for d in c.disks:
            if d.key in maps:
                raise InvalidRequestError(f"disk {d.key} appears twice in the commit request")
            dmap, changed = self._disk_map(c, d)
            self._check_referenced(dmap, f"disk {d.key}")
            maps[d.key] = dmap
            disks.append(
                PointDisk(
                    key=d.key,
                    capacity=d.capacity,
                    change_id=d.change_id,
                    base_point_id=d.base_point_id,
                    info=dict(d.info),
                    chunks=len(dmap),
                    zero_chunks=dmap.zero_count(),
                    changed_chunks=changed,
                )
            )
        point = Point(
            id=point_id,
            job_id=c.job_id,
            vcenter=c.vcenter,
            vm_uuid=vm_uuid,
            vm_moref=c.vm_moref,
            vm_name=c.vm_name,
            vm_config=bytes(c.vm_config),
            status=c.status,
            snapshot_time=c.snapshot_time,
            created=time.time(),
            chunk_size=self.chunk_size,
            disks=disks,
            failed_disks=[(int(k), str(r)) for k, r in c.failed_disks],
        )
        self.point_store.commit(point, maps)
        self._clean_staging(c)
        return point_id

    def _disk_map(self, c: PointCommit, d: DiskChanges) -> tuple[DiskMap, int]:
        """The disk's new map and how many entries changed it."""
        key = d.key
        if d.capacity <= 0:
            raise InvalidRequestError(f"disk {key}: capacity {d.capacity} must be positive")
        if d.base_point_id:
            check_point_id(d.base_point_id)
            base = self.get_point(d.base_point_id)
            if base.vm_uuid != c.vm_uuid:
                raise InvalidRequestError(
                    f"disk {key}: base point {d.base_point_id} is of another VM"
                )
            dmap = self.load_map(base, key).resized(d.capacity)
        else:
            dmap = DiskMap(self.chunk_size, d.capacity)
        if d.parts and not c.request_id:
            raise InvalidRequestError(f"disk {key}: staged parts need a request_id")
        n = len(dmap)
        named = IndexRuns()
        changed = 0
        for index, cid in self._new_entries(c, d):
            if not 0 <= index < n:
                raise InvalidRequestError(
                    f"disk {key}: chunk index {index} outside the disk (0..{n - 1})"
                )
            dmap.set(index, cid)
            named.add(index)
            changed += 1
        if d.planned is not None:
            plan = planned_runs(
                d.planned, self.chunk_size, chunk_count(d.capacity, self.chunk_size), key
            )
            check_coverage(named.done(), plan, key)
        return dmap, changed

    def _new_entries(self, c: PointCommit, d: DiskChanges) -> Iterator[tuple[int, bytes]]:
        for t in d.tasks:
            yield from self.staging.load_task(
                c.job_id, c.vm_uuid, d.key, t.task_id, t.digest, t.count
            )
        if d.parts:
            yield from self.staging.load(c.request_id, d.key, d.parts)
        for index, cid in d.entries:
            yield int(index), bytes(cid)

    def _clean_staging(self, c: PointCommit) -> None:
        if c.request_id:
            self.staging.remove(c.request_id)
        if any(d.tasks for d in c.disks):
            self.staging.remove_job(c.job_id, c.vm_uuid)

    def _check_referenced(self, dmap: DiskMap, what: str) -> None:
        """Every chunk the map names exists (and is kept from gc by a fresh mtime). A
        commit only names chunks a writer acknowledged as durable (a chunk ack follows the
        fsyncs, a "present" answer follows touch's), so nothing needs settling here: on
        ext4 each directory fsync is a journal commit, one per chunk of the disk."""
        missing: list[str] = []
        count = 0
        batch: list[tuple[int, bytes]] = []

        def check() -> None:
            nonlocal count
            present = self.chunks.touch_many([cid for _, cid in batch], settle=False)
            for (index, cid), ok in zip(batch, present, strict=True):
                if not ok:
                    count += 1
                    if len(missing) < 5:
                        missing.append(f"#{index} {cid.hex()}")
            batch.clear()

        prev = ZERO_ID
        for index, cid in dmap.iter_ids():
            if cid == prev:
                continue  # runs of one chunk (e.g. a repeated pattern) need one check
            prev = cid
            batch.append((index, cid))
            if len(batch) >= CHECK_BATCH:
                check()
        check()
        if count:
            raise MissingChunkError(
                f"{what}: {count} named chunk(s) are not in the repository: {', '.join(missing)}"
            )
