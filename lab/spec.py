"""LabSpec: the inventory and CBT settings of a lab, and their command-line flags."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 2**20


class LabError(RuntimeError):
    """The lab could not be built, started or driven."""


@dataclass(frozen=True)
class LabSpec:
    """What the simulator should contain. Counts are per datacenter / cluster / host."""

    datacenters: int = 1
    clusters: int = 1
    hosts_per_cluster: int = 2
    standalone_hosts: int = 0
    vms_per_host: int = 2
    disks_per_vm: int = 1
    # Capacities in bytes, cycled over all disks in creation order.
    disk_sizes: list[int] = field(default_factory=lambda: [64 * MIB])
    shared_datastores: int = 1
    local_datastores: bool = True
    odd_names: bool = False  # some VM/datastore names with spaces and non-ASCII text
    cbt_page_size: int = 2000  # at most this many areas per QueryChangedDiskAreas reply
    cbt_granularity: int = 64 * 1024
    cbt_keep: int = 64  # changeIds remembered per disk
    power_on: bool = True
    listen: str = "127.0.0.1:0"
    fail_snapshot_vm: str = ""  # fault from the start: snapshots of this VM fail
    slow_soap_ms: int = 0

    def __post_init__(self) -> None:
        minimums = {
            "datacenters": 1,
            "clusters": 0,
            "hosts_per_cluster": 0,
            "standalone_hosts": 0,
            "vms_per_host": 0,
            "disks_per_vm": 0,
            "shared_datastores": 0,
            "cbt_page_size": 1,
            "cbt_keep": 1,
            "slow_soap_ms": 0,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"LabSpec.{name} must be an integer >= {low}, got {value!r}")
        if self.clusters * self.hosts_per_cluster + self.standalone_hosts == 0:
            raise ValueError(
                "LabSpec needs at least one host (clusters*hosts_per_cluster + standalone_hosts)"
            )
        if not self.disk_sizes or any(
            not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in self.disk_sizes
        ):
            raise ValueError(
                f"LabSpec.disk_sizes must be positive byte counts, got {self.disk_sizes!r}"
            )
        if self.cbt_granularity < 512 or self.cbt_granularity % 512:
            raise ValueError(
                f"LabSpec.cbt_granularity must be a multiple of 512, got {self.cbt_granularity!r}"
            )
        if self.shared_datastores == 0 and not self.local_datastores:
            raise ValueError("LabSpec has no datastores: shared_datastores=0 and no local ones")

    @property
    def vm_count(self) -> int:
        hosts = self.clusters * self.hosts_per_cluster + self.standalone_hosts
        return self.datacenters * hosts * self.vms_per_host

    def to_flags(self) -> list[str]:
        """The vcsim-lab command-line flags for this spec."""

        def b(v: bool) -> str:
            return "true" if v else "false"

        flags = [
            f"--datacenters={self.datacenters}",
            f"--clusters={self.clusters}",
            f"--hosts-per-cluster={self.hosts_per_cluster}",
            f"--standalone-hosts={self.standalone_hosts}",
            f"--vms-per-host={self.vms_per_host}",
            f"--disks-per-vm={self.disks_per_vm}",
            "--disk-sizes=" + ",".join(str(s) for s in self.disk_sizes),
            f"--shared-datastores={self.shared_datastores}",
            f"--local-datastores={b(self.local_datastores)}",
            f"--odd-names={b(self.odd_names)}",
            f"--cbt-page-size={self.cbt_page_size}",
            f"--cbt-granularity={self.cbt_granularity}",
            f"--cbt-keep={self.cbt_keep}",
            f"--power-on={b(self.power_on)}",
            f"--listen={self.listen}",
            f"--slow-soap-ms={self.slow_soap_ms}",
        ]
        if self.fail_snapshot_vm:
            flags.append(f"--fail-snapshot-vm={self.fail_snapshot_vm}")
        return flags
