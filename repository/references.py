"""Which points name which chunks: the uses of chunks found damaged or missing.

One pass over every readable point's maps (unreadable ones are verify's to report).
Each use names the point, its VM, the disk and the byte offset: what an operator needs
to know which restores are affected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from repository.errors import RepositoryError
from repository.repository import Repository


@dataclass(frozen=True, slots=True)
class ChunkUse:
    vm_uuid: str
    point_id: str
    disk: int
    index: int
    offset: int
    chunk_id: bytes

    def __str__(self) -> str:
        return (
            f"{self.vm_uuid}/{self.point_id} disk {self.disk} chunk #{self.index} "
            f"(offset {self.offset})"
        )


def uses(repo: Repository, wanted: Callable[[bytes], bool]) -> Iterator[ChunkUse]:
    """Every map entry naming a chunk for which ``wanted(id)`` is true (asked once per run
    of one id), in point order."""
    ps = repo.point_store
    for ref in ps.point_refs():
        try:
            point = ps.load(ref)
        except (RepositoryError, OSError):
            continue
        for disk in point.disks:
            try:
                dmap = ps.load_map(ref, disk)
            except (RepositoryError, OSError):
                continue
            prev, hit = b"", False
            for index, cid in dmap.iter_ids():
                if cid != prev:
                    prev, hit = cid, wanted(cid)
                if hit:
                    yield ChunkUse(
                        point.vm_uuid, point.id, disk.key, index, index * dmap.chunk_size, cid
                    )
