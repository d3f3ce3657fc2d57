"""What ``restore-vm --in-place`` did to each disk of the VM (text or JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.restore.errors import RestoreVmError

# a disk's state, as the result says it
UNTOUCHED = "untouched"  # nothing written: the disk is as it was before the command
PARTLY_WRITTEN = "partly written"  # neither the point nor as before: rerun the command
ROLLED_BACK = "rolled back"  # the disk holds the point's bytes


@dataclass
class RolledBackDisk:
    key: int
    label: str
    file: str
    capacity: int
    mode: str = ""  # incremental (the areas CBT named) | full (every chunk)
    why: str = ""  # what CBT answered, or why it could not
    areas: int = 0  # changed areas CBT named (0 for a full)
    changed_bytes: int = 0  # their bytes, before widening to whole chunks
    chunks: int = 0  # chunks to write
    planned_bytes: int = 0  # their bytes
    bytes_written: int = 0  # data written (sent again after a failure included)
    bytes_zeroed: int = 0  # zero chunks of the point, zeroed (NBD write-zeroes)
    attempts: int = 0
    seconds: float = 0.0
    state: str = UNTOUCHED


@dataclass
class RollbackResult:
    point_id: str
    vcenter: str
    vm_name: str
    vm_moref: str
    power_state_before: str
    power_state: str = ""
    snapshot: str = ""  # the snapshot that froze CBT's reference (removed before writing)
    snapshot_removed: bool = False
    disks: list[RolledBackDisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_written: int = 0
    bytes_zeroed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [
            f"rolled VM {self.vm_name!r} ({self.vm_moref}) on {self.vcenter} back to point"
            f" {self.point_id}: {self.power_state}",
        ]
        lines += [f"  {disk_line(d)}" for d in self.disks]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(
            f"{len(self.disks)} disk(s), {self.bytes_written} bytes written,"
            f" {self.bytes_zeroed} zeroed in {self.seconds:.2f} s"
        )
        return "\n".join(lines) + "\n"


def disk_line(d: RolledBackDisk) -> str:
    head = f"disk {d.key} {d.file} ({d.capacity} bytes): {d.state}"
    if not d.mode:
        return head
    return (
        f"{head}, {d.mode} ({d.why}): {d.chunks} chunk(s), {d.bytes_written} bytes written,"
        f" {d.bytes_zeroed} zeroed in {d.seconds:.2f} s"
        + (f" ({d.attempts} attempts)" if d.attempts > 1 else "")
    )


class RollbackFailed(RestoreVmError):
    """The rollback stopped; ``result`` says what was done and each disk's state."""

    def __init__(self, message: str, result: RollbackResult) -> None:
        states = "; ".join(f"disk {d.key}: {d.state}" for d in result.disks)
        super().__init__(f"{message} [{states}]" if states else message)
        self.result = result
