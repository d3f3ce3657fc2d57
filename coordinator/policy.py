"""Policy selection: which discovered VMs a policy protects.

Each criterion list is empty = any. Folder entries match the folder path below the
datacenter's VM folder and everything under it ("prod" matches "prod" and "prod/web").
Name patterns are shell globs matched case-sensitively (vSphere names are); exclusions
are globs on the name or exact BIOS/instance UUIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from coordinator.discovery import VmInfo
from coordinator.previous_points import LastJob
from coordinator.settings import PolicySettings

SHOWN_NAMES = 5  # VM names a message lists before "and N more"


@dataclass
class Selection:
    selected: list[VmInfo]  # in scope and backup-able
    skipped: list[VmInfo]  # in scope, but cannot be backed up (skip_reason says why)
    out_of_scope: int
    # in scope, but vCenter cannot give them now (``unavailable`` says why): failures
    unavailable: list[VmInfo] = field(default_factory=list)


def _folder_matches(path: str, wanted: str) -> bool:
    wanted = wanted.strip("/")
    if not wanted:
        return True
    return path == wanted or path.startswith(wanted + "/")


def in_scope(vm: VmInfo, p: PolicySettings) -> bool:
    if p.vcenters and vm.vcenter not in p.vcenters:
        return False
    if p.datacenters and vm.datacenter not in p.datacenters:
        return False
    if p.clusters and vm.cluster not in p.clusters:
        return False
    if p.folders and not any(_folder_matches(vm.folder, f) for f in p.folders):
        return False
    if p.names and not any(fnmatchcase(vm.name, pat) for pat in p.names):
        return False
    for ex in p.exclude:
        if ex in (vm.uuid, vm.instance_uuid) or fnmatchcase(vm.name, ex):
            return False
    return True


def select(vms: list[VmInfo], p: PolicySettings) -> Selection:
    selected: list[VmInfo] = []
    skipped: list[VmInfo] = []
    unavailable: list[VmInfo] = []
    out = 0
    seen: set[tuple[str, str]] = set()
    for vm in vms:
        if not in_scope(vm, p):
            out += 1
            continue
        key = (vm.vcenter, vm.moref)
        if key in seen:
            continue
        seen.add(key)
        if vm.unavailable:
            unavailable.append(vm)
        else:
            (skipped if vm.skip_reason else selected).append(vm)
    selected.sort(key=lambda v: (v.vcenter, v.name, v.moref))
    return Selection(selected, skipped, out, unavailable)


def lost_selection(policy: str, selected: int, last: LastJob | None) -> str:
    """Why a run must fail although nothing in it failed: it selected no VM, yet the
    policy's last job backed some up (VMs renamed or moved, a pattern edited, the wrong
    vCenter): "" when the run selected VMs or the policy never had any."""
    if selected or last is None or not last.vm_names:
        return ""
    names = ", ".join(last.vm_names[:SHOWN_NAMES])
    more = len(last.vm_names) - SHOWN_NAMES
    if more > 0:
        names += f" and {more} more"
    return (
        f"policy {policy} selected no VM, but its last job {last.job_id} backed up"
        f" {len(last.vm_names)} VM(s): {names}; check the policy's names, folders and"
        " vCenters against the inventory"
    )
