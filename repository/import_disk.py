"""import-disk: back up a raw image as a new point of a VM's disk, locally, no broker.

Same chunking and format as the distributed path. A second import of the same VM
and disk is an incremental: it names only the chunks that differ from the latest
point's map (a synthetic full) and stores only chunks the repository lacks.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.chunk import is_zero
from repository.errors import InvalidRequestError, RepositoryError
from repository.fixed_index import ZERO_ID, DiskMap, chunk_count
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository

BATCH = 8  # chunks per durable write batch; memory: (2 x BATCH + 2 x workers) x chunk size
_VM_NS = uuid.UUID("0f6c5f36-6f0e-4c59-9a53-3f3b8d5cb1a1")


@dataclass(frozen=True, slots=True)
class ImportResult:
    point_id: str
    base_point_id: str
    capacity: int
    chunks: int
    zero_chunks: int
    changed_chunks: int
    new_chunks: int
    known_chunks: int
    bytes_stored: int
    seconds: float


def vm_uuid_for_name(name: str) -> str:
    """Stable uuid for a VM known only by name (imports), so re-imports find their base."""
    return str(uuid.uuid5(_VM_NS, name))


def image_size(fh: BinaryIO) -> int:
    fileno = fh.fileno()
    return os.lseek(fileno, 0, os.SEEK_END)


def import_disk(
    repo: Repository,
    vm_name: str,
    disk_key: int,
    image: str | Path,
    *,
    vm_uuid: str | None = None,
    job_id: str | None = None,
    snapshot_time: float | None = None,
    workers: int = 2,
) -> ImportResult:
    """``workers`` threads hash and compress while the caller reads and writes; 0 does
    everything in the calling thread."""
    t0 = time.perf_counter()
    if not vm_name:
        raise InvalidRequestError("--vm must not be empty")
    vm_uuid = vm_uuid or vm_uuid_for_name(vm_name)
    job_id = job_id or f"import-{uuid.uuid4()}"
    try:
        fh = open(image, "rb", buffering=0)  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise RepositoryError(f"cannot open image {image}: {exc.strerror}") from None
    repo.begin_job(job_id)
    try:
        capacity = image_size(fh)
        if capacity <= 0:
            raise InvalidRequestError(f"image {image} is empty")
        fh.seek(0)
        base = repo.latest_point(vm_uuid)
        base_map: DiskMap | None = None
        if base is not None and any(d.key == disk_key for d in base.disks):
            base_map = repo.load_map(base, disk_key).resized(capacity)
        else:
            base = None
        cs = repo.chunk_size
        entries: list[tuple[int, bytes]] = []
        batch: list[tuple[bytes, Sequence[bytes | bytearray]]] = []
        totals = [0, 0, 0]  # new, known, stored bytes
        zeros = 0
        n = chunk_count(capacity, cs)

        def take(
            index: int, cid: bytes, prepared: tuple[bytes, Sequence[bytes | bytearray]] | None
        ) -> None:
            nonlocal zeros, batch
            if prepared is None:
                zeros += 1
            else:
                batch.append(prepared)
            if (base_map.get(index) != cid) if base_map is not None else (cid != ZERO_ID):
                entries.append((index, b"" if cid == ZERO_ID else cid))
            if len(batch) >= BATCH:
                _store(repo, batch, totals)
                batch = []

        chunks = (_read_exact(fh, min(cs, capacity - i * cs), image) for i in range(n))
        if workers <= 0:
            for index, data in enumerate(chunks):
                take(index, *_prepare(repo, data))
        else:
            # workers hash + compress (GIL released) while this thread reads and does the
            # durable writes; at most `window` chunks are in flight: memory stays bounded
            window = BATCH + 2 * workers
            pending: deque[tuple[int, Future[Prepared]]] = deque()
            with ThreadPoolExecutor(workers, thread_name_prefix="import") as ex:
                try:
                    for index, data in enumerate(chunks):
                        pending.append((index, ex.submit(_prepare, repo, data)))
                        if len(pending) >= window:
                            i, f = pending.popleft()
                            take(i, *f.result())
                    while pending:
                        i, f = pending.popleft()
                        take(i, *f.result())
                finally:
                    for _, f in pending:
                        f.cancel()
        if batch:
            _store(repo, batch, totals)
        snap = time.time() if snapshot_time is None else snapshot_time
        point_id = repo.commit_point(
            PointCommit(
                job_id=job_id,
                vm_uuid=vm_uuid,
                vm_name=vm_name,
                status="complete",
                snapshot_time=snap,
                disks=[
                    DiskChanges(
                        key=disk_key,
                        capacity=capacity,
                        base_point_id=base.id if base else "",
                        entries=entries,
                        info={"source": str(image)},
                    )
                ],
            )
        )
    finally:
        fh.close()
        repo.end_job(job_id)
    return ImportResult(
        point_id=point_id,
        base_point_id=base.id if base else "",
        capacity=capacity,
        chunks=n,
        zero_chunks=zeros,
        changed_chunks=len(entries),
        new_chunks=totals[0],
        known_chunks=totals[1],
        bytes_stored=totals[2],
        seconds=time.perf_counter() - t0,
    )


Prepared = tuple[bytes, tuple[bytes, Sequence[bytes | bytearray]] | None]


def _prepare(repo: Repository, data: bytes) -> Prepared:
    """(id, blob parts to write or () when already stored) or (ZERO_ID, None)."""
    if is_zero(data):
        return ZERO_ID, None
    cid = repo.chunk_id(data)
    return cid, repo.prepare_raw_chunk(cid, data)


def _store(
    repo: Repository, batch: list[tuple[bytes, Sequence[bytes | bytearray]]], totals: list[int]
) -> None:
    r = repo.write_prepared(batch)
    totals[0] += r.stored
    totals[1] += r.known
    totals[2] += r.bytes_stored


def _read_exact(fh: BinaryIO, size: int, image: str | Path) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        b = fh.read(size - got)
        if not b:
            raise RepositoryError(f"image {image} ended early (changed while importing?)")
        parts.append(b)
        got += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)
