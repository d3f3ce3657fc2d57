"""The VM configuration saved with a restore point, read back for restore and listing.

The coordinator saves the snapshot's ``config`` (a ``vim.vm.ConfigInfo``) as the API
returned it, serialized with pyVmomi's VmomiJSONEncoder: data objects become JSON
objects carrying ``_vimtype``. This module turns that document into the few typed
facts restore-vm and ``repo list`` need, and rejects documents it cannot read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

_DEV = "vim.vm.device."

# Disk controller types restore can recreate: vimtype suffix -> (bus kind, short name).
CONTROLLER_TYPES: dict[str, tuple[str, str]] = {
    "ParaVirtualSCSIController": ("scsi", "pvscsi"),
    "VirtualLsiLogicController": ("scsi", "lsilogic"),
    "VirtualLsiLogicSASController": ("scsi", "lsilogic-sas"),
    "VirtualBusLogicController": ("scsi", "buslogic"),
    "VirtualAHCIController": ("sata", "ahci"),
    "VirtualSATAController": ("sata", "sata"),
    "VirtualIDEController": ("ide", "ide"),
    "VirtualNVMEController": ("nvme", "nvme"),
}
NIC_TYPES = (
    "VirtualVmxnet3",
    "VirtualVmxnet2",
    "VirtualVmxnet",
    "VirtualE1000e",
    "VirtualE1000",
    "VirtualPCNet32",
)
# Devices every VM gets from vSphere itself; restore neither recreates nor reports them.
_BUILT_IN = {
    "VirtualPCIController",
    "VirtualPS2Controller",
    "VirtualSIOController",
    "VirtualKeyboard",
    "VirtualPointingDevice",
    "VirtualMachineVideoCard",
    "VirtualVideoCard",
    "VirtualVMCIDevice",
}


class VmConfigError(ValueError):
    """The saved configuration is missing or cannot be read."""


@dataclass(frozen=True)
class Controller:
    key: int
    type: str  # vimtype suffix, e.g. ParaVirtualSCSIController
    kind: str  # scsi | sata | ide | nvme
    bus: int
    shared_bus: str = ""  # SCSI only

    @property
    def short(self) -> str:
        return f"{CONTROLLER_TYPES[self.type][1]}{self.bus}"


@dataclass(frozen=True)
class Disk:
    key: int
    label: str
    controller_key: int
    unit_number: int
    capacity: int
    file: str
    disk_mode: str
    thin: bool | None


@dataclass(frozen=True)
class Nic:
    key: int
    type: str  # vimtype suffix, e.g. VirtualVmxnet3
    label: str
    backing: str  # network | dvport | opaque | other
    network: str  # network name for a standard backing ("" when unknown)
    portgroup_key: str  # distributed port group key for a dvport backing
    switch_uuid: str
    start_connected: bool
    mac: str


@dataclass(frozen=True)
class VmConfig:
    name: str
    guest_id: str
    firmware: str
    version: str
    num_cpu: int
    cores_per_socket: int
    memory_mb: int
    annotation: str
    cpu_hot_add: bool | None
    memory_hot_add: bool | None
    efi_secure_boot: bool | None
    controllers: list[Controller] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    other_devices: list[str] = field(default_factory=list)  # labels of what is not recreated

    def controller(self, key: int) -> Controller:
        for c in self.controllers:
            if c.key == key:
                return c
        raise VmConfigError(f"no disk controller with key {key} in the saved configuration")

    def summary(self) -> str:
        """One line: CPU, memory, firmware, disks per controller, NICs."""
        disks = []
        for d in self.disks:
            try:
                where = f"{self.controller(d.controller_key).short}:{d.unit_number}"
            except VmConfigError:
                where = f"controller {d.controller_key}:{d.unit_number}"
            disks.append(f"{d.key}@{where}")
        cores = f" ({self.cores_per_socket}/socket)" if self.cores_per_socket > 1 else ""
        parts = [
            f"{self.num_cpu} vCPU{cores}",
            f"{self.memory_mb} MiB",
            self.firmware or "bios",
            self.guest_id or "guest ?",
        ]
        if self.version:
            parts.append(self.version)
        parts.append(f"disks {' '.join(disks) if disks else '-'}")
        if self.nics:
            parts.append(
                "nics "
                + " ".join(
                    f"{n.type.removeprefix('Virtual').lower()}:{n.network or n.backing}"
                    for n in self.nics
                )
            )
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type(obj: Any) -> str:
    t = obj.get("_vimtype", "") if isinstance(obj, dict) else ""
    return t[len(_DEV) :] if t.startswith(_DEV) else t


def _int(v: Any, default: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return default
    # JSON may carry Infinity or NaN (Python's json reads them): no count of anything
    return int(v) if math.isfinite(v) else default


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _label(dev: dict[str, Any]) -> str:
    info = dev.get("deviceInfo")
    label = _str(info.get("label")) if isinstance(info, dict) else ""
    return label or f"{_type(dev)} {dev.get('key')}"


def load_document(data: bytes) -> dict[str, Any]:
    """The saved configuration as a JSON object (the full thing, for --json output)."""
    if not data:
        raise VmConfigError("the point has no saved VM configuration")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VmConfigError(f"the saved VM configuration is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise VmConfigError("the saved VM configuration is not a JSON object")
    return doc


def parse(data: bytes) -> VmConfig:
    """Read a configuration saved by the coordinator; VmConfigError when unusable."""
    doc = load_document(data)
    hw = doc.get("hardware")
    if not isinstance(hw, dict) or not isinstance(hw.get("device"), list):
        raise VmConfigError("the saved VM configuration has no hardware.device list")
    num_cpu = _int(hw.get("numCPU"))
    memory = _int(hw.get("memoryMB"))
    if num_cpu <= 0 or memory <= 0:
        raise VmConfigError(
            f"the saved VM configuration has numCPU={hw.get('numCPU')!r} "
            f"memoryMB={hw.get('memoryMB')!r}"
        )
    controllers: list[Controller] = []
    disks: list[Disk] = []
    nics: list[Nic] = []
    other: list[str] = []
    for dev in hw["device"]:
        if not isinstance(dev, dict) or not isinstance(dev.get("key"), int):
            raise VmConfigError(f"a device of the saved configuration has no key: {dev!r:.120}")
        t = _type(dev)
        if t in CONTROLLER_TYPES:
            controllers.append(
                Controller(
                    key=dev["key"],
                    type=t,
                    kind=CONTROLLER_TYPES[t][0],
                    bus=_int(dev.get("busNumber")),
                    shared_bus=_str(dev.get("sharedBus")),
                )
            )
        elif t == "VirtualDisk":
            disks.append(_disk(dev))
        elif t in NIC_TYPES:
            nics.append(_nic(dev, t))
        elif t not in _BUILT_IN:
            other.append(_label(dev))
    boot = doc.get("bootOptions")
    return VmConfig(
        name=_str(doc.get("name")),
        guest_id=_str(doc.get("guestId")),
        firmware=_str(doc.get("firmware")),
        version=_str(doc.get("version")),
        num_cpu=num_cpu,
        cores_per_socket=_int(hw.get("numCoresPerSocket"), 1) or 1,
        memory_mb=memory,
        annotation=_str(doc.get("annotation")),
        cpu_hot_add=_bool(doc.get("cpuHotAddEnabled")),
        memory_hot_add=_bool(doc.get("memoryHotAddEnabled")),
        efi_secure_boot=_bool(boot.get("efiSecureBootEnabled")) if isinstance(boot, dict) else None,
        controllers=controllers,
        disks=disks,
        nics=nics,
        other_devices=other,
    )


def _disk(dev: dict[str, Any]) -> Disk:
    b = dev.get("backing") if isinstance(dev.get("backing"), dict) else {}
    assert isinstance(b, dict)
    capacity = _int(dev.get("capacityInBytes")) or _int(dev.get("capacityInKB")) * 1024
    return Disk(
        key=dev["key"],
        label=_label(dev),
        controller_key=_int(dev.get("controllerKey"), -1),
        unit_number=_int(dev.get("unitNumber"), -1),
        capacity=capacity,
        file=_str(b.get("fileName")),
        disk_mode=_str(b.get("diskMode")),
        thin=_bool(b.get("thinProvisioned")),
    )


def _nic(dev: dict[str, Any], t: str) -> Nic:
    b = dev.get("backing") if isinstance(dev.get("backing"), dict) else {}
    assert isinstance(b, dict)
    bt = _type(b)
    network = portgroup = switch = ""
    if bt.endswith("VirtualEthernetCard.NetworkBackingInfo"):
        kind = "network"
        network = _str(b.get("deviceName"))
    elif bt.endswith("DistributedVirtualPortBackingInfo"):
        kind = "dvport"
        port = b.get("port") if isinstance(b.get("port"), dict) else {}
        assert isinstance(port, dict)
        portgroup = _str(port.get("portgroupKey"))
        switch = _str(port.get("switchUuid"))
    elif bt.endswith("OpaqueNetworkBackingInfo"):
        kind = "opaque"
        network = _str(b.get("opaqueNetworkId"))
    else:
        kind = "other"
    conn = dev.get("connectable")
    start = conn.get("startConnected") if isinstance(conn, dict) else None
    return Nic(
        key=dev["key"],
        type=t,
        label=_label(dev),
        backing=kind,
        network=network,
        portgroup_key=portgroup,
        switch_uuid=switch,
        start_connected=start is not False,
        mac=_str(dev.get("macAddress")),
    )


def disk_controllers(data: bytes) -> dict[int, dict[str, Any]]:
    """disk key -> its controller's type and bus number (for DiskCommit.info).

    Empty when the configuration cannot be read: listing metadata must never make a
    backup fail.
    """
    try:
        cfg = parse(data)
    except VmConfigError:
        return {}
    out: dict[int, dict[str, Any]] = {}
    by_key = {c.key: c for c in cfg.controllers}
    for d in cfg.disks:
        c = by_key.get(d.controller_key)
        if c is not None:
            out[d.key] = {"controller_type": c.type, "controller_bus": c.bus}
    return out


def describe_point_config(data: bytes) -> dict[str, Any]:
    """For `repo list`: the saved document, its parsed hardware and a one-line summary.

    Never raises: a point without (or with an unreadable) configuration is listed
    with the reason instead.
    """
    if not data:
        return {
            "vm_config": None,
            "hardware": None,
            "hardware_summary": "",
            "vm_config_error": "no saved VM configuration",
        }
    try:
        doc = load_document(data)
        cfg = parse(data)
    except VmConfigError as exc:
        return {
            "vm_config": None,
            "hardware": None,
            "hardware_summary": f"(VM configuration unreadable: {exc})",
            "vm_config_error": str(exc),
        }
    return {
        "vm_config": doc,
        "hardware": cfg.to_dict(),
        "hardware_summary": cfg.summary(),
        "vm_config_error": "",
    }
