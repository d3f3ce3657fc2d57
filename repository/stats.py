"""Repository-wide size figures for `repo list`: logical vs stored bytes, ratios."""

from __future__ import annotations

from dataclasses import dataclass

from repository import blob
from repository.errors import RepositoryError
from repository.pack_store import PackStore
from repository.points import Point
from repository.repository import Repository


@dataclass(frozen=True, slots=True)
class RepoStats:
    points: int
    logical_bytes: int  # sum of disk capacities over all points
    data_bytes: int  # non-zero chunks named by all points (what a naive copy would store)
    chunks: int  # chunk files
    raw_bytes: int  # plaintext bytes of all chunk files
    stored_bytes: int  # bytes of all chunk files on disk

    @property
    def dedup_ratio(self) -> float:
        return self.data_bytes / self.raw_bytes if self.raw_bytes else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0


def point_data_bytes(p: Point) -> int:
    return sum((d.chunks - d.zero_chunks) * p.chunk_size for d in p.disks)


def repo_stats(repo: Repository, points: list[Point]) -> RepoStats:
    chunks = raw = stored = 0
    if isinstance(repo.chunks, PackStore):
        for cid, loc in dict.fromkeys(repo.chunks.iter_ids()):
            chunks += 1
            stored += loc.length
            try:
                head = repo.chunks.read_at(cid, loc._replace(length=blob.HEADER_LEN))
                raw += blob.parse_header(head, cid.hex()).raw_len
            except (OSError, blob.CorruptObjectError, RepositoryError):
                continue
    for cf in [] if isinstance(repo.chunks, PackStore) else repo.chunks.iter_chunks():
        chunks += 1
        stored += cf.size
        try:
            with open(cf.path, "rb") as fh:
                raw += blob.parse_header(fh.read(blob.HEADER_LEN), str(cf.path)).raw_len
        except (OSError, ValueError, blob.CorruptObjectError):
            continue  # verify reports damage; list only sums what it can read
    return RepoStats(
        points=len(points),
        logical_bytes=sum(p.logical_bytes for p in points),
        data_bytes=sum(point_data_bytes(p) for p in points),
        chunks=chunks,
        raw_bytes=raw,
        stored_bytes=stored,
    )
