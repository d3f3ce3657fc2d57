"""Block-range tasks: what the coordinator asks proxies to read, and what they answer."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

from common.compression_level import level_problem
from common.messages.base import (
    ID_LEN,
    Fields,
    Message,
    MessageError,
    added_fields,
    check_packed_entries,
)
from common.snapshot_disk import SnapshotDisk

# The disk fields of a version 1 task, frozen: what old coordinators send, whatever
# SnapshotDisk becomes.
_V1_DISK_FIELDS = (
    "vcenter",
    "datacenter",
    "host",
    "datastore",
    "vm_moref",
    "snapshot_moref",
    "disk_file",
    "capacity",
)


def _nested_disk(fields: Fields) -> Fields:
    """A v1 task's flat disk fields as v2's nested ``disk``, so a proxy upgraded first
    still takes the tasks of an old coordinator."""
    if "disk" in fields:
        raise MessageError("task v1: unexpected field(s) 'disk'")
    missing = [k for k in _V1_DISK_FIELDS if k not in fields]
    if missing:
        raise MessageError(f"task v1: missing field {missing[0]!r}")
    rest = {k: v for k, v in fields.items() if k not in _V1_DISK_FIELDS}
    return {**rest, "disk": {k: fields[k] for k in _V1_DISK_FIELDS}}


@dataclass(frozen=True, slots=True)
class BackupTask(Message):
    """Read these ranges of one snapshot disk and hand its chunks to the writers."""

    KIND: ClassVar[str] = "task"
    # Version 2: the disk to read is one nested SnapshotDisk; v1 spelled it out flat.
    VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {1: _nested_disk}
    task_id: str
    job_id: str
    vm_uuid: str
    vm_name: str
    disk_key: int
    disk: SnapshotDisk
    chunk_size: int
    compression_level: int
    ranges: list[tuple[int, int]]  # (offset, length), chunk aligned; last may end at capacity
    results_to: str
    transport: str = ""  # "" = the proxy's configured default

    def __post_init__(self) -> None:
        bad = level_problem(self.compression_level)
        if bad is not None:
            raise MessageError(f"task: {bad}")


@dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """Outcome of one task. Its map entries were staged at the writers (TaskEntries):
    ``entries_digest`` and ``entries_count`` say which, and the commit names them; a
    proxy that does not stage sends them inline in ``entries`` (digest b"")."""

    KIND: ClassVar[str] = "task-result"
    # Version 2: ``cause`` of a failure (common/causes.py), from whoever saw it.
    # Version 3: entries staged at the writers (``entries_digest``, ``entries_count``).
    VERSION: ClassVar[int] = 3
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(
            f, "task-result v1", cause="", entries_digest=b"", entries_count=0
        ),
        2: lambda f: added_fields(f, "task-result v2", entries_digest=b"", entries_count=0),
    }
    task_id: str
    job_id: str
    vm_uuid: str
    disk_key: int
    ok: bool
    error: str
    entries: list[tuple[int, bytes]]  # inline (index, id); b"" marks an all-zero chunk
    bytes_read: int
    bytes_zero: int
    bytes_known: int
    bytes_sent: int
    seconds: float
    proxy: str
    cause: str = ""
    entries_digest: bytes = b""  # packed_entries.entries_digest of the staged entries
    entries_count: int = 0

    def __post_init__(self) -> None:
        if self.entries_digest and len(self.entries_digest) != ID_LEN:
            raise MessageError(f"entries_digest of {len(self.entries_digest)} bytes, not 32")
        if self.entries_digest and self.entries:
            raise MessageError("entries both staged (entries_digest) and inline")
        if self.entries_count < 0:
            raise MessageError(f"entries_count {self.entries_count} is negative")

    @property
    def staged(self) -> bool:
        return bool(self.entries_digest)


@dataclass(frozen=True, slots=True)
class TaskEntries(Message):
    """A task's map entries, sent by its proxy to the writers, which stage them durably
    under (job, VM, disk, task) before the proxy reports the task done; the commit names
    them (DiskCommit.tasks), so a disk's map crosses the network once."""

    KIND: ClassVar[str] = "task-entries"
    request_id: str  # the CommitReply's request_id
    reply_to: str
    job_id: str
    vm_uuid: str
    disk_key: int
    task_id: str
    entries: bytes  # common/packed_entries.py format

    def __post_init__(self) -> None:
        if not self.task_id or not self.job_id:
            raise MessageError("task-entries: job_id and task_id must not be empty")
        check_packed_entries(self.entries)


@dataclass(frozen=True, slots=True)
class TaskWithdrawal(Message):
    """The coordinator no longer waits for these tasks of a job (the job was cancelled, or
    the tasks ran past their time-out). Proxies drop them instead of reading a snapshot that
    is being removed, retrying and dead-lettering them, and stop the ones they are running."""

    KIND: ClassVar[str] = "task-withdrawal"
    job_id: str
    task_ids: list[str]
    reason: str
