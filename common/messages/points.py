"""Restore points: commits, staged commit parts and job markers, on the commits queue."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import ClassVar

from common.messages.base import (
    ID_LEN,
    Fields,
    Message,
    MessageError,
    Scalar,
    added_fields,
    check_packed_entries,
)


@dataclass(frozen=True, slots=True)
class StagedTask:
    """A task whose entries its proxy staged, as its TaskResult described them."""

    task_id: str
    digest: bytes
    count: int

    def __post_init__(self) -> None:
        if len(self.digest) != ID_LEN:
            raise MessageError(f"task {self.task_id!r:.80}: digest of {len(self.digest)} bytes")
        if self.count < 0:
            raise MessageError(f"task {self.task_id!r:.80}: count {self.count} is negative")


@dataclass(frozen=True, slots=True)
class DiskCommit:
    """One disk of a restore point: the changed chunks on top of a base point's map."""

    key: int
    capacity: int
    change_id: str
    base_point_id: str  # "" = no base: chunks not named are zero
    entries: list[tuple[int, bytes]]  # (chunk index, id); b"" = zero chunk
    info: dict[str, Scalar]  # backing file, datastore, controller key/unit, label...
    # CommitParts staged for this disk under the request's id (numbered 0..parts-1);
    # their entries apply before ``entries``. 0 = everything is inline.
    parts: int = 0
    # Tasks whose entries their proxies staged (TaskEntries); they apply first.
    tasks: list[StagedTask] = field(default_factory=list)
    # The byte ranges read (chunk aligned): the entries from the tasks, the parts and
    # inline must name each of their chunks once. None: not checked (version 2).
    planned: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.parts < 0:
            raise MessageError(f"disk {self.key}: parts {self.parts} must not be negative")


def _disks_v2(fields: Fields) -> Fields:
    disks = fields.get("disks")
    if not isinstance(disks, list):
        return fields  # the schema check names what is wrong
    out = []
    for d in disks:
        if isinstance(d, dict):
            d = added_fields(d, "commit v2 disk", tasks=[], planned=None)
        out.append(d)
    return {**fields, "disks": out}


@dataclass(frozen=True, slots=True)
class CommitRequest(Message):
    """Commit one VM's point. Version 2: DiskCommit.parts (staged CommitParts).
    Version 3: DiskCommit.tasks (entries staged by proxies) and .planned."""

    KIND: ClassVar[str] = "commit"
    VERSION: ClassVar[int] = 3
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {2: _disks_v2}
    request_id: str
    reply_to: str
    job_id: str
    vcenter: str
    vm_uuid: str
    vm_moref: str
    vm_name: str
    vm_config: bytes  # the VM's config as the API returned it, serialized
    status: str  # "complete" | "partial"
    snapshot_time: float
    disks: list[DiskCommit]
    failed_disks: list[tuple[int, str]]  # (disk key, reason)


@dataclass(frozen=True, slots=True)
class CommitReply(Message):
    """A writer's answer on the commits queue: to a CommitRequest (point_id set), a
    CommitPart (request_id = its part_id), TaskEntries or a JobMarker (point_id "")."""

    KIND: ClassVar[str] = "commit-reply"
    request_id: str
    ok: bool
    error: str
    point_id: str


@dataclass(frozen=True, slots=True)
class CommitPart(Message):
    """A slice of one disk's commit entries, staged durably by a writer until the
    CommitRequest with ``request_id`` names it (DiskCommit.parts). Lets a commit of a
    disk of millions of chunks stay far below the message limit."""

    KIND: ClassVar[str] = "commit-part"
    # Version 2: ``job_id`` (of the commit's job, for the writer's log lines).
    VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(f, "commit-part v1", job_id=""),
    }
    request_id: str  # of the CommitRequest that will name this part
    part_id: str  # the reply's request_id: part_key(request_id, disk_key, part)
    reply_to: str
    disk_key: int
    part: int  # 0 .. parts-1
    entries: bytes  # pack_entries() format
    job_id: str = ""  # "" from a version-1 sender

    def __post_init__(self) -> None:
        if self.part < 0:
            raise MessageError(f"part {self.part} must not be negative")
        if self.part_id != part_key(self.request_id, self.disk_key, self.part):
            raise MessageError(f"part_id {self.part_id!r:.80} does not match the part")
        check_packed_entries(self.entries)


@dataclass(frozen=True, slots=True)
class JobMarker(Message):
    """Ask a writer to mark a backup job as running ("begin") or finished ("end") in
    the repository, so that gc keeps every chunk the job may deduplicate against
    (the coordinator has no write access to the repository)."""

    KIND: ClassVar[str] = "job-marker"
    request_id: str
    reply_to: str
    job_id: str
    op: str  # "begin" | "end"

    def __post_init__(self) -> None:
        if self.op not in ("begin", "end"):
            raise MessageError(f"op {self.op!r:.40} is not 'begin' or 'end'")
        if not self.job_id:
            raise MessageError("job_id is empty")


def part_key(request_id: str, disk_key: int, part: int) -> str:
    return f"{request_id}/{disk_key}/{part}"
