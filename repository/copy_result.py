"""What `repo copy` (repository/copy.py) did: its counts, and each point copied or not."""

from __future__ import annotations

from dataclasses import dataclass, field

from repository.points import Point


@dataclass
class CopyStats:
    chunks_sent: int = 0  # chunks written into the target
    bytes_sent: int = 0  # blob bytes written into the target
    raw_bytes_sent: int = 0  # their plaintext bytes
    chunks_present: int = 0  # chunks the points name that the target had already
    chunks_read: int = 0  # chunks read from the source
    blobs_as_stored: int = 0  # of chunks_sent: the source's blob, not compressed again
    chunks_healed: int = 0  # of chunks_sent: ids the target had quarantined


@dataclass(frozen=True, slots=True)
class CopiedPoint:
    id: str
    vm_uuid: str
    vm_name: str
    snapshot_time: float
    chunks_sent: int
    bytes_sent: int


@dataclass(frozen=True, slots=True)
class FailedPoint:
    id: str
    vm_uuid: str
    reason: str


@dataclass
class CopyResult:
    source_id: str
    target_id: str
    selection: str
    dry_run: bool
    to_copy: list[Point] = field(default_factory=list)  # the plan
    present: list[Point] = field(default_factory=list)  # selected, already in the target
    copied: list[CopiedPoint] = field(default_factory=list)
    failed: list[FailedPoint] = field(default_factory=list)
    stats: CopyStats = field(default_factory=CopyStats)
