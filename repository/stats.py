"""Repository-wide size figures for `repo list`: logical vs stored bytes, ratios."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repository import blob
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
    for cf in repo.chunks.iter_chunks():
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


def list_document(points: list[Point], st: RepoStats) -> dict[str, Any]:
    """The JSON of `repo list --json`: every point with its disks, then the totals."""
    from coordinator.vm_config import describe_point_config

    return {
        "points": [
            {
                "id": p.id,
                "vm_uuid": p.vm_uuid,
                "vm_name": p.vm_name,
                "vm_moref": p.vm_moref,
                "vcenter": p.vcenter,
                "job_id": p.job_id,
                "status": p.status,
                "snapshot_time": p.snapshot_time,
                "logical_bytes": p.logical_bytes,
                "data_bytes": point_data_bytes(p),
                "disks": [
                    {
                        "key": d.key,
                        "capacity": d.capacity,
                        "change_id": d.change_id,
                        "base_point_id": d.base_point_id,
                        "chunks": d.chunks,
                        "zero_chunks": d.zero_chunks,
                        "changed_chunks": d.changed_chunks,
                        "info": d.info,
                    }
                    for d in p.disks
                ],
                "failed_disks": p.failed_disks,
                **describe_point_config(p.vm_config),
            }
            for p in points
        ],
        "totals": {
            "points": st.points,
            "logical_bytes": st.logical_bytes,
            "data_bytes": st.data_bytes,
            "chunks": st.chunks,
            "raw_bytes": st.raw_bytes,
            "stored_bytes": st.stored_bytes,
            "dedup_ratio": round(st.dedup_ratio, 4),
            "compression_ratio": round(st.compression_ratio, 4),
        },
    }
