"""The one model of a disk to read: where a proxy's transport finds it and how big it is.

Wire data (it travels inside a BackupTask), so it lives here where every role sees it:
the coordinator builds it once from what it discovered and the snapshot it took
(coordinator/snapshots.py ``disk_to_read``), a proxy's transports open it as it came.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    """One disk of a VM's snapshot, as vCenter names it."""

    vcenter: str  # the configured name: a proxy looks up address and account by it
    datacenter: str  # its name: the dcPath of datastore URLs
    host: str  # the ESXi host the VM runs on (NBD/VDDK connect to it; throttles key on it)
    datastore: str  # name of the datastore holding disk_file
    vm_moref: str
    # "" = the VM's live disk, not a snapshot's (restore-vm writes a new VM's disk)
    snapshot_moref: str
    disk_file: str  # "[ds] dir/name.vmdk" of the snapshot's frozen disk
    capacity: int  # bytes
