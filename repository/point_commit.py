"""What a point commit is made of: the typed arguments of Repository.commit_point.

The writer service translates a CommitRequest into these (repository_writer/
commit_translation.py); the CLI's disk import and the tests build them directly. A disk's
new entries come from up to three places, applied in this order: task entries staged by
the proxies (``tasks``), commit parts staged by the coordinator (``parts``), and
``entries`` given inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class StagedTaskRef:
    """A task whose map entries its proxy staged, as its result described them."""

    task_id: str
    digest: bytes  # common.packed_entries.entries_digest of the staged entries
    count: int


@dataclass(frozen=True, slots=True)
class DiskChanges:
    """One disk of the point: the changed chunks on top of a base point's map."""

    key: int
    capacity: int
    change_id: str = ""
    base_point_id: str = ""  # "" = no base: chunks not named are zero
    entries: Sequence[tuple[int, bytes]] = ()  # (chunk index, id); b"" = zero chunk
    parts: int = 0  # commit parts staged under the commit's request_id
    tasks: Sequence[StagedTaskRef] = ()
    # The byte ranges the backup planned to read (chunk aligned): when given, the
    # entries from all three places must name each of their chunks exactly once.
    planned: Sequence[tuple[int, int]] | None = None
    info: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PointCommit:
    job_id: str
    vm_uuid: str
    status: str  # "complete" | "partial"
    snapshot_time: float
    disks: Sequence[DiskChanges]
    vcenter: str = ""
    vm_moref: str = ""
    vm_name: str = ""
    vm_config: bytes = b""
    failed_disks: Sequence[tuple[int, str]] = ()
    request_id: str = ""  # names the staged commit parts; "" = none
