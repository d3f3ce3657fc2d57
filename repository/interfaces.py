"""The narrow views of a repository, one per use (in the manner of restic's ``Loader``
and ``BlobSaver``): a caller names the one it needs, and the type checker holds it to it.

:class:`repository.repository.Repository` (a local directory today) provides them all;
another storage only has to provide the views its users need.

- :class:`Catalog`: read-only, what the coordinator plans with (earlier points, their
  maps, the chunking every task must use, chunks verify has quarantined).
- :class:`PointSource`: what a restore reads (a point, its maps and chunks by id).
- :class:`ChunkSink`: what the writer stores chunks through (have-queries and prepared
  blobs, never a point).
- :class:`Committer`: what the writer's commits queue turns into restore points (staged
  entries, typed point commits, running-job markers) and the job history, never a chunk.
- :class:`Pruner`: what retention needs (points, running markers, removing a point).
- :class:`JobReports`: the job history, read only (`vmbackup jobs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from repository.errors import RepositoryError
from repository.fixed_index import DiskMap
from repository.holds import HoldInfo
from repository.point_commit import PointCommit
from repository.points import Point
from repository.repository import StoreResult


class Catalog(Protocol):
    """Points, maps and chunking of a repository, read only."""

    @property
    def chunk_size(self) -> int: ...

    @property
    def compression_level(self) -> int: ...

    def points(self, vm_uuid: str | None = None) -> list[Point]:
        """Points (of one VM), oldest first."""
        ...

    def latest_point(self, vm_uuid: str, status: str | None = "complete") -> Point | None: ...

    def get_point(self, point_id: str) -> Point: ...

    def load_map(self, point: Point | str, disk_key: int) -> DiskMap: ...

    def quarantined_ids(self) -> set[bytes]:
        """Ids of the chunks verify found damaged (no point can be based on them)."""
        ...


class PointSource(Protocol):
    """What a restore reads: a point, a disk's map, and each chunk's plaintext."""

    @property
    def chunk_size(self) -> int: ...

    def get_point(self, point_id: str) -> Point: ...

    def load_map(self, point: Point | str, disk_key: int) -> DiskMap: ...

    def read_chunk_view(self, chunk_id: bytes, *, check_crc: bool = True) -> bytes | memoryview:
        """A chunk's plaintext, checked against its id (raises CorruptObjectError)."""
        ...

    def read_chunk_views(
        self, chunk_ids: Sequence[bytes], *, check_crc: bool = True
    ) -> list[bytes | memoryview | RepositoryError]:
        """read_chunk_view of each (neighbours read together): plaintext or its error."""
        ...


class ChunkSink(Protocol):
    """Where the writer stores chunks: which ids are present, and new chunks."""

    @property
    def chunk_size(self) -> int: ...

    def has_chunks(self, ids: Iterable[bytes]) -> list[bool]: ...

    def store_chunks(
        self, chunks: Sequence[tuple[bytes, int, bool, bytes | bytearray]]
    ) -> StoreResult: ...


class Committer(Protocol):
    """Where the writer commits points from: staged entries, then the point."""

    @property
    def chunk_size(self) -> int: ...

    def stage_task_entries(
        self, job_id: str, vm_uuid: str, disk_key: int, task_id: str, packed: bytes
    ) -> int: ...

    def stage_commit_part(
        self, request_id: str, disk_key: int, part: int, packed: bytes
    ) -> None: ...

    def commit_point(self, commit: PointCommit) -> str: ...

    def begin_job(self, job_id: str) -> None: ...

    def end_job(self, job_id: str) -> None: ...

    def record_job(self, job_id: str, report: bytes) -> None:
        """Keep a finished job's report (JSON) in the job history."""
        ...


class Pruner(Protocol):
    """What retention needs: the points, the running-backup markers, the holds, and
    removal."""

    def points(self, vm_uuid: str | None = None) -> list[Point]: ...

    def running_jobs(self) -> list[dict[str, Any]]:
        """The markers of backups in progress: job_id, started, host, marker."""
        ...

    def point_holds(self) -> list[HoldInfo]:
        """Holds on points read outside a backup (exports), stale ones included."""
        ...

    def delete_point(self, point_id: str) -> None: ...


class JobReports(Protocol):
    """The job history (job_history.py), read only."""

    def job_ids(self, policy: str | None = None) -> list[str]:
        """Recorded jobs (of one policy), oldest start first."""
        ...

    def job_report(self, job_id: str) -> dict[str, Any]:
        """One job's report; JobNotFoundError when it has none."""
        ...
