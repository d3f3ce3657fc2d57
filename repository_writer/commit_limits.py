"""Bounds a commit is checked against before anything is allocated for it.

A disk's map holds 32 bytes per chunk (fixed_index.py) and is allocated from the
capacity a CommitRequest declares: a capacity of 2**62 asked for petabytes, raised
MemoryError, and was retried and dead-lettered. Here such a request is an
InvalidRequestError naming the field and the limit: the writer replies why at once and
acks the message (docs/security.md, "Bounded endpoints").
"""

from __future__ import annotations

from dataclasses import dataclass

from common.messages import CommitPart, CommitRequest
from common.packed_entries import PackedEntriesError, iter_packed
from repository.errors import InvalidRequestError
from repository.fixed_index import chunk_count

DEFAULT_MAX_DISK_CAPACITY = 64 << 40  # vSphere's largest virtual disk is 62 TB
# vSphere gives a VM at most 4 x 15 SCSI, 4 x 15 NVMe, 4 x 30 SATA and 4 IDE disks.
MAX_DISKS = 256


@dataclass(frozen=True)
class CommitLimits:
    chunk_size: int
    max_disk_capacity: int = DEFAULT_MAX_DISK_CAPACITY

    @property
    def max_chunks(self) -> int:
        return chunk_count(self.max_disk_capacity, self.chunk_size)

    def check_request(self, req: CommitRequest) -> None:
        if len(req.disks) > MAX_DISKS:
            raise InvalidRequestError(f"disks: {len(req.disks)} disks, at most {MAX_DISKS}")
        for d in req.disks:
            if not 0 < d.capacity <= self.max_disk_capacity:
                raise InvalidRequestError(
                    f"disk {d.key}: capacity {d.capacity} outside 1..{self.max_disk_capacity}"
                    " (writer.max_disk_capacity)"
                )
            n = chunk_count(d.capacity, self.chunk_size)
            if len(d.entries) > n:
                raise InvalidRequestError(
                    f"disk {d.key}: {len(d.entries)} entries, more than its {n} chunks"
                    f" (capacity {d.capacity} / chunk size {self.chunk_size})"
                )
            if d.parts > n:
                raise InvalidRequestError(
                    f"disk {d.key}: parts {d.parts}, more than its {n} chunks"
                )
            if len(d.tasks) > n:
                raise InvalidRequestError(
                    f"disk {d.key}: {len(d.tasks)} staged tasks, more than its {n} chunks"
                )
            if d.planned is not None and len(d.planned) > n:
                raise InvalidRequestError(
                    f"disk {d.key}: {len(d.planned)} planned ranges, more than its {n} chunks"
                )

    def check_part(self, part: CommitPart) -> None:
        what = f"commit part {part.part} of disk {part.disk_key}"
        if part.part >= self.max_chunks:
            raise InvalidRequestError(f"{what}: part number beyond {self.max_chunks - 1}")
        self.check_packed(part.entries, what)

    def check_packed(self, packed: bytes, what: str) -> None:
        """Packed entries whose indexes all fit the largest disk a commit may name."""
        try:
            for start, count, _ids in iter_packed(packed):
                if start + count > self.max_chunks:
                    raise InvalidRequestError(
                        f"{what}: chunk index {start + count - 1} beyond the largest disk"
                        f" ({self.max_chunks} chunks: writer.max_disk_capacity"
                        f" {self.max_disk_capacity} / chunk size {self.chunk_size})"
                    )
        except PackedEntriesError as exc:
            raise InvalidRequestError(f"{what}: {exc}") from None
