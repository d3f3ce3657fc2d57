"""Inventory discovery: one ContainerView, paged RetrievePropertiesEx, needed properties only.

Round trips grow with pages (``page_size`` objects each), never with VMs: per-VM
property reads do not scale to thousands of VMs. Placement (datacenter, cluster,
folder path, host, datastores) is computed locally from the ``name``/``parent`` of
the folders, datacenters, clusters and hosts fetched in the same view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from common.logging import get_logger
from common.messages import Scalar
from coordinator.vcenter import Connection

log = get_logger(__name__)
PC = vmodl.query.PropertyCollector

VM_PROPERTIES = [
    "name",
    "parent",
    "parentVApp",
    "config.uuid",
    "config.instanceUuid",
    "config.template",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "runtime.host",
    "runtime.connectionState",
    "runtime.consolidationNeeded",
]
# Lighter set for the orphan sweep, which looks at every VM, selected or not.
SWEEP_PROPERTIES = ["name", "snapshot", "runtime.consolidationNeeded", "runtime.host"]

_PLACEMENT_TYPES: dict[type, list[str]] = {
    vim.Folder: ["name", "parent"],
    vim.Datacenter: ["name", "parent"],
    vim.ClusterComputeResource: ["name", "parent"],
    vim.ComputeResource: ["name", "parent"],
    vim.HostSystem: ["name", "parent"],
    vim.Datastore: ["name"],
    vim.VirtualApp: ["name", "parent"],
    vim.ResourcePool: ["name", "parent"],
}

_BAD_STATES = {"orphaned", "inaccessible", "invalid", "disconnected"}


@dataclass
class DiskInfo:
    key: int
    label: str
    capacity: int
    file: str  # "[ds] dir/name.vmdk"
    datastore: str  # datastore name
    disk_mode: str
    backing: str  # backing class name, e.g. FlatVer2BackingInfo
    change_id: str  # of the current disk (the snapshot's is read after the snapshot)
    controller_key: int
    unit_number: int
    skip_reason: str = ""

    def point_info(self) -> dict[str, Scalar]:
        """What a restore point keeps of this disk (DiskCommit.info), for restore-vm and
        `repo list`; the commit adds the controller's type and the plan's mode to it."""
        return {
            "label": self.label,
            "file": self.file,
            "datastore": self.datastore,
            "controller_key": self.controller_key,
            "unit_number": self.unit_number,
            "disk_mode": self.disk_mode,
        }


@dataclass
class VmInfo:
    vcenter: str
    moref: str
    name: str
    uuid: str
    instance_uuid: str
    datacenter: str
    cluster: str
    folder: str  # path below the datacenter's VM folder, "/"-separated, "" = top
    host: str
    host_moref: str
    template: bool
    connection_state: str
    cbt_enabled: bool
    consolidation_needed: bool
    disks: list[DiskInfo] = field(default_factory=list)
    skip_reason: str = ""  # cannot be backed up by its nature (a template): a skip
    unavailable: str = ""  # vCenter cannot give it now (host down): a failure if in scope

    @property
    def datastores(self) -> list[str]:
        return sorted({d.datastore for d in self.disks if not d.skip_reason and d.datastore})

    @property
    def backup_disks(self) -> list[DiskInfo]:
        return [d for d in self.disks if not d.skip_reason]


@dataclass
class Inventory:
    vcenter: str
    vms: list[VmInfo]
    pages: int
    round_trips: int
    seconds: float


def _props(oc: Any) -> dict[str, Any]:
    return {p.name: p.val for p in (oc.propSet or [])}


def retrieve_paged(
    conn: Connection, types: dict[type, list[str]], page_size: int
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield (object, {path: value}) for every object of ``types`` under the root folder."""
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, list(types), True)
    pages = 0
    try:
        traverse = PC.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
            propSet=[
                PC.PropertySpec(type=t, pathSet=paths, all=False) for t, paths in types.items()
            ],
        )
        pc = content.propertyCollector
        res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=page_size))
        while res is not None:
            pages += 1
            for oc in res.objects or []:
                yield oc.obj, _props(oc)
            if not res.token:
                break
            res = pc.ContinueRetrievePropertiesEx(res.token)
    finally:
        view.DestroyView()
        log.debug("inventory_pages", vcenter=conn.name, pages=pages)


def disk_info(dev: Any, ds_names: dict[str, str]) -> DiskInfo:
    b = dev.backing
    capacity = int(dev.capacityInBytes or 0) or int(dev.capacityInKB or 0) * 1024
    ds_moref = b.datastore._moId if getattr(b, "datastore", None) is not None else ""
    file = getattr(b, "fileName", "") or ""
    ds = ds_names.get(ds_moref, "")
    if not ds and file.startswith("["):
        ds = file[1 : file.index("]")] if "]" in file else ""
    mode = getattr(b, "diskMode", "") or ""
    label = dev.deviceInfo.label if dev.deviceInfo is not None else f"disk {dev.key}"
    d = DiskInfo(
        key=int(dev.key),
        label=label,
        capacity=capacity,
        file=file,
        datastore=ds,
        disk_mode=mode,
        backing=type(b).__name__.rsplit(".", 1)[-1],
        change_id=getattr(b, "changeId", None) or "",
        controller_key=int(dev.controllerKey or 0),
        unit_number=int(dev.unitNumber or 0),
    )
    if mode.startswith("independent"):
        d.skip_reason = f"independent disk ({mode}): not included in snapshots"
    elif isinstance(b, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo) and (
        b.compatibilityMode == "physicalMode"
    ):
        d.skip_reason = "physical-mode RDM: cannot be read through a snapshot"
    elif capacity <= 0:
        d.skip_reason = "disk reports no capacity"
    return d


class _Placement:
    """name/parent of the container objects, to place VMs and hosts."""

    def __init__(self) -> None:
        self.name: dict[str, str] = {}
        self.parent: dict[str, Any] = {}
        self.kind: dict[str, type] = {}

    def add(self, obj: Any, props: dict[str, Any]) -> None:
        mo = obj._moId
        self.name[mo] = props.get("name", "")
        self.parent[mo] = props.get("parent")
        self.kind[mo] = type(obj)

    def chain(self, obj: Any) -> list[Any]:
        out = []
        seen = set()
        while obj is not None and obj._moId not in seen:
            seen.add(obj._moId)
            out.append(obj)
            obj = self.parent.get(obj._moId)
        return out

    def datacenter_and_folder(self, parent: Any) -> tuple[str, str]:
        names: list[str] = []
        for obj in self.chain(parent):
            if isinstance(obj, vim.Datacenter):
                # the last folder walked is the datacenter's own "vm" folder: not in the path
                return self.name.get(obj._moId, ""), "/".join(reversed(names[:-1]))
            if isinstance(obj, vim.Folder):
                names.append(self.name.get(obj._moId, ""))
        return "", ""

    def cluster_of_host(self, host: Any) -> str:
        if host is None:
            return ""
        cr = self.parent.get(host._moId)
        if cr is not None and isinstance(cr, vim.ClusterComputeResource):
            return self.name.get(cr._moId, "")
        return ""

    def datacenter_of(self, obj: Any) -> str:
        for o in self.chain(obj):
            if isinstance(o, vim.Datacenter):
                return self.name.get(o._moId, "")
        return ""


def vm_unavailable(vm: VmInfo, has_config: bool) -> str:
    """Why vCenter cannot give a backup this VM now: its host is down (disconnected),
    its files are gone (orphaned, inaccessible), its configuration is unreadable. Such a
    VM is one its policy wants and does not get: a failure, never a skip."""
    if not has_config:
        return "inaccessible: vCenter returns no configuration"
    if vm.connection_state in _BAD_STATES:
        return f"{vm.connection_state} VM (runtime.connectionState)"
    return ""


def vm_skip_reason(vm: VmInfo) -> str:
    """Why a VM cannot be backed up by its nature (nothing a snapshot could hold)."""
    if vm.template:
        return "template"
    if not vm.backup_disks:
        return "no disk that can be backed up" if vm.disks else "no virtual disks"
    return ""


def discover(conn: Connection, page_size: int | None = None) -> Inventory:
    """Every VM of one vCenter with placement, disks and skip reasons."""
    t0 = time.monotonic()
    rt0 = conn.round_trips
    types = dict(_PLACEMENT_TYPES)
    types[vim.VirtualMachine] = VM_PROPERTIES
    place = _Placement()
    ds_names: dict[str, str] = {}
    raw_vms: list[tuple[Any, dict[str, Any]]] = []
    size = page_size or conn.settings.page_size
    pages_before = conn.calls["RetrievePropertiesEx"] + conn.calls["ContinueRetrievePropertiesEx"]
    for obj, props in retrieve_paged(conn, types, size):
        if isinstance(obj, vim.VirtualMachine):
            raw_vms.append((obj, props))
        elif isinstance(obj, vim.Datastore):
            ds_names[obj._moId] = props.get("name", "")
        else:
            place.add(obj, props)
    vms = []
    for obj, p in raw_vms:
        host = p.get("runtime.host")
        parent = p.get("parent")
        if parent is None and p.get("parentVApp") is not None:
            parent = p.get("parentVApp")
        dc, folder = place.datacenter_and_folder(parent)
        if not dc:
            dc = place.datacenter_of(host)
        has_config = "config.uuid" in p
        devices = p.get("config.hardware.device") or []
        vm = VmInfo(
            vcenter=conn.name,
            moref=obj._moId,
            name=p.get("name", ""),
            uuid=p.get("config.uuid", "") or "",
            instance_uuid=p.get("config.instanceUuid", "") or "",
            datacenter=dc,
            cluster=place.cluster_of_host(host),
            folder=folder,
            host=place.name.get(host._moId, "") if host is not None else "",
            host_moref=host._moId if host is not None else "",
            template=bool(p.get("config.template", False)),
            connection_state=str(p.get("runtime.connectionState", "") or ""),
            cbt_enabled=bool(p.get("config.changeTrackingEnabled", False)),
            consolidation_needed=bool(p.get("runtime.consolidationNeeded", False)),
            disks=[
                disk_info(d, ds_names) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)
            ],
        )
        vm.unavailable = vm_unavailable(vm, has_config)
        vm.skip_reason = "" if vm.unavailable else vm_skip_reason(vm)
        vms.append(vm)
    pages = (
        conn.calls["RetrievePropertiesEx"]
        + conn.calls["ContinueRetrievePropertiesEx"]
        - pages_before
    )
    inv = Inventory(
        vcenter=conn.name,
        vms=vms,
        pages=pages,
        round_trips=conn.round_trips - rt0,
        seconds=time.monotonic() - t0,
    )
    log.info(
        "discovered",
        vcenter=conn.name,
        vms=len(vms),
        pages=inv.pages,
        round_trips=inv.round_trips,
        seconds=round(inv.seconds, 3),
    )
    return inv
