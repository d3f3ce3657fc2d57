"""The ConfigSpec of the new VM (hardware, controllers, disks, NICs) and what was left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from coordinator import vm_config
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.target import Target
from coordinator.vm_config import VmConfig
from repository.points import Point

D = vim.vm.device

# SCSI/SATA/NVMe controllers are created by the spec; vSphere gives every VM two IDE
# controllers with these keys (bus 0 and 1), so IDE disks attach to those.
IDE_KEYS = {0: 200, 1: 201}
_CONTROLLER_CLASSES: dict[str, Any] = {
    "ParaVirtualSCSIController": D.ParaVirtualSCSIController,
    "VirtualLsiLogicController": D.VirtualLsiLogicController,
    "VirtualLsiLogicSASController": D.VirtualLsiLogicSASController,
    "VirtualBusLogicController": D.VirtualBusLogicController,
    "VirtualAHCIController": D.VirtualAHCIController,
    "VirtualSATAController": D.VirtualAHCIController,  # the abstract type: AHCI is the one
    "VirtualNVMEController": D.VirtualNVMEController,
}
_NIC_CLASSES: dict[str, Any] = {t: getattr(D, t) for t in vm_config.NIC_TYPES}
_DISK_MODES = {"persistent", "independent_persistent", "independent_nonpersistent"}


@dataclass
class DiskPlan:
    saved_key: int
    label: str
    capacity: int
    controller_type: str
    controller_bus: int
    unit_number: int
    temp_key: int


@dataclass
class SpecPlan:
    spec: Any
    disks: list[DiskPlan]
    notes: list[str] = field(default_factory=list)  # what was left out, and why


def build_spec(cfg: VmConfig, point: Point, name: str, target: Target) -> SpecPlan:
    """The ConfigSpec of the new VM and the disks to fill, with notes on what is left out."""
    notes: list[str] = []
    devices: list[Any] = []
    temp = iter(range(-100, -100000, -1))  # negative keys: placeholders vSphere replaces
    ctrl_keys: dict[int, int] = {}  # saved controller key -> key in the spec
    for c in cfg.controllers:
        if c.kind == "ide":
            if c.bus in IDE_KEYS:
                ctrl_keys[c.key] = IDE_KEYS[c.bus]
            continue
        cls = _CONTROLLER_CLASSES[c.type]
        dev = cls(key=next(temp), busNumber=c.bus)
        if c.kind == "scsi":
            dev.sharedBus = c.shared_bus or "noSharing"
        ctrl_keys[c.key] = dev.key
        devices.append(D.VirtualDeviceSpec(operation="add", device=dev))

    have = {d.key: d for d in point.disks}
    failed = dict(point.failed_disks)
    disk_plans: list[DiskPlan] = []
    ds = f"[{target.datastore_name}]"
    for d in cfg.disks:
        pd = have.get(d.key)
        if pd is None:
            why = failed.get(d.key) or "not in the point (not backed up)"
            notes.append(f"disk {d.key} ({d.label}) left out: {why}")
            continue
        if d.controller_key not in ctrl_keys:
            notes.append(
                f"disk {d.key} ({d.label}) left out: its controller {d.controller_key}"
                " is not a SCSI/SATA/IDE/NVMe controller restore can recreate"
            )
            continue
        ctrl = cfg.controller(d.controller_key)
        mode = d.disk_mode if d.disk_mode in _DISK_MODES else "persistent"
        dev = D.VirtualDisk(
            key=next(temp),
            controllerKey=ctrl_keys[d.controller_key],
            unitNumber=d.unit_number,
            capacityInKB=pd.capacity // 1024,
            capacityInBytes=pd.capacity,
            backing=D.VirtualDisk.FlatVer2BackingInfo(
                fileName=ds, diskMode=mode, thinProvisioned=True
            ),
        )
        devices.append(D.VirtualDeviceSpec(operation="add", fileOperation="create", device=dev))
        disk_plans.append(
            DiskPlan(d.key, d.label, pd.capacity, ctrl.type, ctrl.bus, d.unit_number, dev.key)
        )
    if not disk_plans:
        raise RestoreVmError(f"point {point.id}: no disk of the saved configuration has data")

    for n in cfg.nics:
        backing = _nic_backing(n, target)
        if isinstance(backing, str):
            notes.append(f"network adapter {n.label} ({n.type}) left out: {backing}")
            continue
        dev = _NIC_CLASSES[n.type](
            key=next(temp),
            backing=backing,
            addressType="generated",
            connectable=D.VirtualDevice.ConnectInfo(
                startConnected=n.start_connected, allowGuestControl=True, connected=False
            ),
        )
        devices.append(D.VirtualDeviceSpec(operation="add", device=dev))
    for label in cfg.other_devices:
        notes.append(f"{label} not recreated (only controllers, disks and NICs are)")

    spec = vim.vm.ConfigSpec(
        name=name,
        guestId=cfg.guest_id or "otherGuest64",
        numCPUs=cfg.num_cpu,
        numCoresPerSocket=cfg.cores_per_socket,
        memoryMB=cfg.memory_mb,
        files=vim.vm.FileInfo(vmPathName=ds),
        deviceChange=devices,
    )
    if cfg.firmware:
        spec.firmware = cfg.firmware
    if cfg.version:
        spec.version = cfg.version
    if cfg.annotation:
        spec.annotation = cfg.annotation
    if cfg.cpu_hot_add is not None:
        spec.cpuHotAddEnabled = cfg.cpu_hot_add
    if cfg.memory_hot_add is not None:
        spec.memoryHotAddEnabled = cfg.memory_hot_add
    if cfg.efi_secure_boot:
        spec.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=True)
    return SpecPlan(spec, disk_plans, notes)


def _nic_backing(n: vm_config.Nic, target: Target) -> Any:
    """The backing on the target, or a string saying why there is none."""
    if n.backing == "dvport":
        pg = target.portgroups.get(n.portgroup_key)
        if pg is None:
            return f"distributed port group {n.portgroup_key!r} does not exist on the target"
        return _dvport_backing(pg[1], n.portgroup_key)
    if n.backing != "network":
        return f"{n.backing} network backing is not recreated"
    net = target.networks.get(n.network)
    if net is None:
        return f"the target has no network named {n.network!r}"
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        for key, (obj, uuid) in target.portgroups.items():
            if obj._moId == net._moId:
                return _dvport_backing(uuid, key)
    return D.VirtualEthernetCard.NetworkBackingInfo(deviceName=n.network, network=net)


def _dvport_backing(switch_uuid: str, portgroup_key: str) -> Any:
    return D.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(switchUuid=switch_uuid, portgroupKey=portgroup_key)
    )
