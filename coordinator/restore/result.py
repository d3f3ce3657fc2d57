"""What restore-vm did: the new VM and its disks (text or JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RestoredDisk:
    saved_key: int
    key: int
    label: str
    file: str
    capacity: int
    controller: str
    unit_number: int
    seconds: float
    attempts: int = 1  # uploads or NBD connections: more than 1 after a failure
    bytes_sent: int = 0  # what travelled: the capacity over /folder, data chunks over NBD


@dataclass
class RestoreVmResult:
    point_id: str
    vcenter: str
    vm_name: str
    vm_moref: str
    datacenter: str
    datastore: str
    host: str
    power_state: str
    disks: list[RestoredDisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        rate = self.bytes_uploaded / self.seconds / 2**20 if self.seconds > 0 else 0.0
        lines = [
            f"restored point {self.point_id} as VM {self.vm_name!r} ({self.vm_moref}) on "
            f"{self.vcenter}: datacenter {self.datacenter}, host {self.host}, "
            f"datastore {self.datastore}, {self.power_state}",
        ]
        for d in self.disks:
            lines.append(
                f"  disk {d.saved_key} -> {d.key} {d.controller}:{d.unit_number} {d.file} "
                f"{d.capacity} bytes"
                + (f" ({d.bytes_sent} with data sent)" if d.bytes_sent != d.capacity else "")
                + f" in {d.seconds:.2f} s"
                + (f" ({d.attempts} attempts)" if d.attempts > 1 else "")
            )
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(
            f"{len(self.disks)} disk(s), {self.bytes_uploaded} bytes sent in "
            f"{self.seconds:.2f} s ({rate:.1f} MiB/s)"
        )
        return "\n".join(lines) + "\n"
