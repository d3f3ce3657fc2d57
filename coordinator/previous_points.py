"""What the repository knows of earlier backups (the coordinator keeps no database).

Read-only: the previous point of each disk and its changeId, when a disk last had a
full, the chunk size and compression level tasks must use, and what a policy's last job
backed up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from common.job_ids import policy_of_job
from common.logging import get_logger
from coordinator.planner import PreviousDisk
from repository.errors import RepositoryError
from repository.interfaces import Catalog
from repository.points import Point

log = get_logger(__name__)


@dataclass(frozen=True)
class LastJob:
    """The newest job of a policy that left points in the repository."""

    job_id: str
    vm_names: tuple[str, ...]  # the VMs it made a point of, sorted
    finished: float  # when its newest point was committed


class History:
    """The coordinator's lookups over the repository's read-only :class:`Catalog`."""

    def __init__(self, catalog: Catalog) -> None:
        self.repo = catalog
        self._lock = threading.Lock()
        self._cache: dict[str, list[Point]] = {}

    @classmethod
    def open(cls, path: str | Path, passphrase: str | None = None) -> History:
        from repository.repository import Repository

        return cls(Repository.open(path, passphrase))

    @property
    def chunk_size(self) -> int:
        return self.repo.chunk_size

    @property
    def compression_level(self) -> int:
        return self.repo.compression_level

    def _points(self, vm_uuid: str) -> list[Point]:
        """Points of one VM, newest first (read once per job and VM)."""
        with self._lock:
            pts = self._cache.get(vm_uuid)
            if pts is None:
                pts = list(reversed(self.repo.points(vm_uuid)))
                self._cache[vm_uuid] = pts
            return pts

    def forget(self, vm_uuid: str) -> None:
        with self._lock:
            self._cache.pop(vm_uuid, None)

    def previous(self, vm_uuid: str, disk_key: int) -> PreviousDisk | None:
        """The newest point holding this disk (complete or partial: the disk made it)."""
        for p in self._points(vm_uuid):
            for d in p.disks:
                if d.key == disk_key:
                    return PreviousDisk(
                        point_id=p.id,
                        change_id=d.change_id,
                        capacity=d.capacity,
                        damaged_chunks=self._damaged_chunks(p, disk_key),
                    )
        return None

    def _damaged_chunks(self, point: Point, disk_key: int) -> int:
        """How many entries of the point's map name a quarantined chunk. The map is read
        only when something is quarantined (listing an absent directory otherwise)."""
        quarantined = self.repo.quarantined_ids()
        if not quarantined:
            return 0
        return sum(
            1 for _, cid in self.repo.load_map(point, disk_key).iter_ids() if cid in quarantined
        )

    def last_full_time(self, vm_uuid: str, disk_key: int) -> float | None:
        """Snapshot time of the newest point where this disk was a full (no base)."""
        for p in self._points(vm_uuid):
            for d in p.disks:
                if d.key == disk_key and not d.base_point_id:
                    return float(p.snapshot_time)
        return None

    def last_success_time(self, vm_uuid: str) -> float | None:
        for p in self._points(vm_uuid):
            if p.status == "complete":
                return float(p.snapshot_time)
        return None

    def last_job(self, policy: str) -> LastJob | None:
        """The newest job of ``policy`` with points, and their VMs (None: no point of
        this policy, or the catalog cannot be read; verify names what is unreadable).
        Reads every point's metadata: for the rare run that selects nothing."""
        try:
            points = self.repo.points()
        except RepositoryError as exc:
            log.warning("catalog_unreadable", policy=policy, error=str(exc))
            return None
        jobs: dict[str, list[Point]] = {}
        for p in points:
            if policy_of_job(p.job_id) == policy:
                jobs.setdefault(p.job_id, []).append(p)
        if not jobs:
            return None
        job_id, pts = max(jobs.items(), key=lambda kv: (max(p.created for p in kv[1]), kv[0]))
        names = tuple(sorted({p.vm_name or p.vm_uuid for p in pts}))
        return LastJob(job_id, names, max(p.created for p in pts))
