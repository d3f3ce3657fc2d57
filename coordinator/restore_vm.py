"""``vmbackup restore-vm``: recreate a VM from a restore point on a vCenter.

Steps: read the point's saved configuration, find the target (datacenter of the
datastore, a connected host that mounts it, its resource pool, a folder, networks
by name), create the VM with CreateVM_Task (CPU, memory, guest, firmware,
controllers with their bus numbers, thin disks at their unit numbers, NICs whose
network exists on the target), then stream each disk from the repository into its
flat file with one HTTP PUT on /folder (every chunk checked against its id on the
way). The VM is left registered and powered off. If anything fails after the VM
was created, the half-restored VM is destroyed so that nothing plausible-looking
but wrong is left behind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

from pyVmomi import vim

from common.logging import get_logger
from coordinator import vm_config
from coordinator.discovery import retrieve_paged
from coordinator.settings import VCenterSettings
from coordinator.vcenter import (
    Connection,
    _pinned_connection_class,
    build_ssl_context,
    normalize_thumbprint,
)
from coordinator.vm_config import VmConfig
from repository_writer.errors import RepositoryError
from repository_writer.points import Point
from repository_writer.repository import Repository
from repository_writer.restore import restore_disk

log = get_logger(__name__)
D = vim.vm.device
TASK_TIMEOUT_S = 600.0

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


class RestoreVmError(Exception):
    """restore-vm cannot go on; the text says what was wrong."""


# --- target ---------------------------------------------------------------------------


@dataclass
class Target:
    datacenter: Any
    dc_path: str  # inventory path of the datacenter, for /folder's dcPath
    datastore: Any
    datastore_name: str
    host: Any
    host_name: str
    pool: Any
    folder: Any
    networks: dict[str, Any]  # name -> Network or DistributedVirtualPortgroup
    portgroups: dict[str, tuple[Any, str]]  # dvportgroup key -> (object, switch uuid)
    vm_names: set[str]  # VMs already in the datacenter


_TARGET_TYPES: dict[type, list[str]] = {
    vim.Folder: ["name", "parent"],
    vim.Datacenter: ["name", "parent", "vmFolder"],
    vim.ComputeResource: ["name", "parent", "resourcePool"],
    vim.ClusterComputeResource: ["name", "parent", "resourcePool"],
    vim.HostSystem: [
        "name",
        "parent",
        "datastore",
        "runtime.connectionState",
        "runtime.inMaintenanceMode",
    ],
    vim.Datastore: ["name", "parent", "summary.accessible"],
    vim.Network: ["name", "parent"],
    vim.dvs.DistributedVirtualPortgroup: [
        "name",
        "parent",
        "key",
        "config.distributedVirtualSwitch",
    ],
    vim.DistributedVirtualSwitch: ["uuid"],
    vim.VirtualMachine: ["name", "parent"],
}


def find_target(conn: Connection, datastore: str, host: str = "", folder: str = "") -> Target:
    """Everything placement needs, from one paged inventory read."""
    props: dict[str, dict[str, Any]] = {}
    objs: dict[str, Any] = {}
    for obj, p in retrieve_paged(conn, _TARGET_TYPES, conn.settings.page_size):
        props[obj._moId] = p
        objs[obj._moId] = obj

    def dc_of(obj: Any) -> Any:
        seen = set()
        while obj is not None and obj._moId not in seen:
            seen.add(obj._moId)
            if isinstance(obj, vim.Datacenter):
                return obj
            obj = props.get(obj._moId, {}).get("parent")
        return None

    of_type = lambda t: [o for o in objs.values() if isinstance(o, t)]  # noqa: E731
    stores = [d for d in of_type(vim.Datastore) if props[d._moId].get("name") == datastore]
    if not stores:
        names = sorted(str(props[d._moId].get("name")) for d in of_type(vim.Datastore))
        raise RestoreVmError(
            f"datastore {datastore!r} not found on vCenter {conn.name}"
            f" (it has: {', '.join(names) or 'none'})"
        )
    hosts = of_type(vim.HostSystem)
    if host:
        hosts = [h for h in hosts if props[h._moId].get("name") == host]
        if not hosts:
            raise RestoreVmError(f"host {host!r} not found on vCenter {conn.name}")
    candidates: list[tuple[Any, Any]] = []  # (host, datastore)
    for h in hosts:
        p = props[h._moId]
        mounted = {d._moId for d in p.get("datastore") or []}
        for ds in stores:
            if ds._moId in mounted:
                candidates.append((h, ds))
    if not candidates:
        where = f"host {host!r}" if host else "any host"
        raise RestoreVmError(f"datastore {datastore!r} is not mounted on {where}")
    usable = [
        (h, ds)
        for h, ds in candidates
        if props[h._moId].get("runtime.connectionState") == "connected"
        and not props[h._moId].get("runtime.inMaintenanceMode")
        and props[ds._moId].get("summary.accessible", True) is not False
    ]
    if not usable:
        raise RestoreVmError(
            f"no connected host outside maintenance mode can reach datastore {datastore!r}"
        )
    dcs = {dc_of(ds)._moId for _h, ds in usable if dc_of(ds) is not None}
    if len(dcs) > 1:
        raise RestoreVmError(
            f"datastore name {datastore!r} exists in {len(dcs)} datacenters: pick one with --host"
        )
    h, ds = sorted(usable, key=lambda c: str(props[c[0]._moId].get("name")))[0]
    dc = dc_of(ds)
    if dc is None:
        raise RestoreVmError(f"datastore {datastore!r} is in no datacenter")
    cr = props[h._moId].get("parent")
    pool = props.get(cr._moId, {}).get("resourcePool") if cr is not None else None
    if pool is None:
        raise RestoreVmError(f"host {props[h._moId].get('name')!r} has no resource pool")

    # the datacenter's inventory path, for /folder's dcPath (folders above it included)
    path: list[str] = []
    walk: Any = dc
    while walk is not None and walk._moId in props:
        if isinstance(walk, vim.Datacenter | vim.Folder) and props[walk._moId].get("parent"):
            path.append(str(props[walk._moId].get("name")))
        walk = props[walk._moId].get("parent")
    dc_path = "/".join(reversed(path))

    vm_folder = props[dc._moId].get("vmFolder")
    target_folder = _find_folder(vm_folder, folder, props, objs) if folder else vm_folder
    in_dc = lambda o: (d := dc_of(o)) is not None and d._moId == dc._moId  # noqa: E731
    networks: dict[str, Any] = {}
    portgroups: dict[str, tuple[Any, str]] = {}
    for n in of_type(vim.Network):
        if not in_dc(n):
            continue
        p = props[n._moId]
        networks[str(p.get("name"))] = n
        if isinstance(n, vim.dvs.DistributedVirtualPortgroup):
            sw = p.get("config.distributedVirtualSwitch")
            uuid = str(props.get(sw._moId, {}).get("uuid", "")) if sw is not None else ""
            portgroups[str(p.get("key"))] = (n, uuid)
    vm_names = {str(props[v._moId].get("name")) for v in of_type(vim.VirtualMachine) if in_dc(v)}
    return Target(
        datacenter=dc,
        dc_path=dc_path,
        datastore=ds,
        datastore_name=datastore,
        host=h,
        host_name=str(props[h._moId].get("name")),
        pool=pool,
        folder=target_folder,
        networks=networks,
        portgroups=portgroups,
        vm_names=vm_names,
    )


def _find_folder(
    root: Any, path: str, props: dict[str, dict[str, Any]], objs: dict[str, Any]
) -> Any:
    """A VM folder by its path below the datacenter's VM folder ("a/b")."""
    cur = root
    for part in [p for p in path.strip("/").split("/") if p]:
        nxt = [
            o
            for o in objs.values()
            if isinstance(o, vim.Folder)
            and props[o._moId].get("name") == part
            and (parent := props[o._moId].get("parent")) is not None
            and parent._moId == cur._moId
        ]
        if not nxt:
            raise RestoreVmError(f"folder {path!r} not found below the datacenter's VM folder")
        cur = nxt[0]
    return cur


# --- the VM spec ----------------------------------------------------------------------


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


# --- upload ---------------------------------------------------------------------------


def flat_file(ds_path: str) -> str:
    """ "[ds] dir/name.vmdk" -> "dir/name-flat.vmdk" (the data file of a flat disk)."""
    if not ds_path.startswith("[") or "]" not in ds_path or not ds_path.endswith(".vmdk"):
        raise RestoreVmError(f"unexpected disk file name {ds_path!r}")
    rel = ds_path.split("]", 1)[1].strip()
    return rel if rel.endswith("-flat.vmdk") else rel[: -len(".vmdk")] + "-flat.vmdk"


def _http_connection(s: VCenterSettings) -> http.client.HTTPConnection:
    u = urlparse(s.url)
    host = u.hostname or ""
    if u.scheme != "https":
        return http.client.HTTPConnection(host, u.port or 80, timeout=s.timeout_s)
    ctx = build_ssl_context(s)
    if s.thumbprint:
        cls = _pinned_connection_class(normalize_thumbprint(s.thumbprint))
        return cls(host, u.port or 443, context=ctx, timeout=s.timeout_s)
    return http.client.HTTPSConnection(host, u.port or 443, context=ctx, timeout=s.timeout_s)


class _PutBody:
    """File-like sink that sends what restore_disk writes as the PUT request body."""

    def __init__(
        self, conn: http.client.HTTPConnection, total: int, progress: Callable[[int], None]
    ) -> None:
        self._conn = conn
        self.total = total
        self.sent = 0
        self._progress = progress

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if self.sent + n > self.total:
            raise RestoreVmError(f"disk data longer than its capacity {self.total}")
        self._conn.send(data)
        self.sent += n
        self._progress(self.sent)
        return n

    def flush(self) -> None:
        return None


def upload_disk(
    conn: Connection,
    repo: Repository,
    point: Point,
    disk_key: int,
    target: Target,
    ds_path: str,
    progress: Callable[[int], None] = lambda _n: None,
) -> float:
    """Stream one disk of the point into its flat file; returns seconds taken."""
    capacity = point.disk(disk_key).capacity
    path = flat_file(ds_path)
    query = (
        f"dcPath={quote(target.dc_path, safe='')}&dsName={quote(target.datastore_name, safe='')}"
    )
    url = f"/folder/{quote(path)}?{query}"
    cookie = (getattr(conn.stub, "cookie", "") or "").split(";", 1)[0].strip()
    if not cookie:
        raise RestoreVmError(f"vcenter {conn.name}: no session cookie for the upload")
    t0 = time.monotonic()
    http_conn = _http_connection(conn.settings)
    try:
        # vcsim writes the whole body and takes no ranges: one PUT of the whole disk,
        # streamed chunk by chunk (never the whole disk in memory)
        http_conn.putrequest("PUT", url, skip_accept_encoding=True)
        http_conn.putheader("Cookie", cookie)
        http_conn.putheader("Content-Type", "application/octet-stream")
        http_conn.putheader("Content-Length", str(capacity))
        http_conn.endheaders()
        body = _PutBody(http_conn, capacity, progress)
        restore_disk(repo, point.id, disk_key, body)  # type: ignore[arg-type]
        if body.sent != capacity:
            raise RestoreVmError(f"disk {disk_key}: sent {body.sent} of {capacity} bytes")
        resp = http_conn.getresponse()
        detail = resp.read(2000).decode(errors="replace").strip()
        if resp.status not in (200, 201, 204):
            raise RestoreVmError(
                f"upload of disk {disk_key} to [{target.datastore_name}] {path} refused: "
                f"HTTP {resp.status} {resp.reason} {detail[:200]}"
            )
    except RepositoryError as exc:  # a chunk missing or damaged: stop before the end
        raise RestoreVmError(f"disk {disk_key}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise RestoreVmError(
            f"upload of disk {disk_key} to [{target.datastore_name}] {path} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        http_conn.close()
    return time.monotonic() - t0


# --- the whole restore ------------------------------------------------------------------


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

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
                f"{d.capacity} bytes in {d.seconds:.2f} s"
            )
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(
            f"{len(self.disks)} disk(s), {self.bytes_uploaded} bytes uploaded in "
            f"{self.seconds:.2f} s ({rate:.1f} MiB/s)"
        )
        return "\n".join(lines) + "\n"


def load_point(repo: Repository, point_id: str) -> tuple[Point, VmConfig]:
    point = repo.get_point(point_id)  # PointNotFoundError names an unknown point
    if not point.vm_config:
        raise RestoreVmError(
            f"point {point_id} has no saved VM configuration (made by import-disk?):"
            " restore its disks to files with `vmbackup restore` instead"
        )
    try:
        cfg = vm_config.parse(point.vm_config)
    except vm_config.VmConfigError as exc:
        raise RestoreVmError(f"point {point_id}: {exc}") from None
    return point, cfg


def restore_vm(
    conn: Connection,
    repo: Repository,
    point_id: str,
    *,
    datastore: str,
    name: str = "",
    host: str = "",
    folder: str = "",
    keep_failed: bool = False,
    progress: Callable[[str, int, int], None] = lambda _d, _n, _t: None,
) -> RestoreVmResult:
    t0 = time.monotonic()
    point, cfg = load_point(repo, point_id)
    name = name or cfg.name or point.vm_name
    if not name:
        raise RestoreVmError(f"point {point_id} names no VM: give --name")
    target = find_target(conn, datastore, host, folder)
    if name in target.vm_names:
        raise RestoreVmError(
            f"a VM named {name!r} already exists in datacenter {target.dc_path!r}:"
            " give another name with --name"
        )
    plan = build_spec(cfg, point, name, target)
    log.info("restore_vm_create", point=point_id, vm=name, host=target.host_name, ds=datastore)
    task = target.folder.CreateVM_Task(config=plan.spec, pool=target.pool, host=target.host)
    vm = conn.wait_task(task, f"create VM {name!r}", TASK_TIMEOUT_S)
    result = RestoreVmResult(
        point_id=point_id,
        vcenter=conn.name,
        vm_name=name,
        vm_moref=vm._moId,
        datacenter=target.dc_path,
        datastore=datastore,
        host=target.host_name,
        power_state="",
        notes=list(plan.notes),
    )
    try:
        files = _created_disks(conn, vm, plan)
        for dp in plan.disks:
            key, file, ctrl = files[dp.saved_key]

            def report(n: int, dp: DiskPlan = dp) -> None:
                progress(f"disk {dp.saved_key}", n, dp.capacity)

            secs = upload_disk(conn, repo, point, dp.saved_key, target, file, report)
            result.disks.append(
                RestoredDisk(
                    dp.saved_key, key, dp.label, file, dp.capacity, ctrl, dp.unit_number, secs
                )
            )
            result.bytes_uploaded += dp.capacity
            log.info("restore_vm_disk", disk=dp.saved_key, file=file, seconds=round(secs, 3))
        state = conn.get_properties(vm, ["runtime.powerState"]).get("runtime.powerState")
        result.power_state = str(state)
        if state != "poweredOff":
            raise RestoreVmError(f"the new VM is {state}, expected poweredOff")
    except BaseException as exc:
        if not keep_failed:
            _destroy(conn, vm, name, exc)
        raise
    result.seconds = time.monotonic() - t0
    return result


def _created_disks(conn: Connection, vm: Any, plan: SpecPlan) -> dict[int, tuple[int, str, str]]:
    """saved disk key -> (new key, "[ds] file.vmdk", "type bus") as vCenter created them."""
    devices = conn.get_properties(vm, ["config.hardware.device"]).get("config.hardware.device", [])
    ctrls = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    out: dict[int, tuple[int, str, str]] = {}
    for dp in plan.disks:
        want_type = vm_config.CONTROLLER_TYPES[dp.controller_type][0]
        found = None
        for d in disks:
            c: Any = ctrls.get(d.controllerKey) if d.controllerKey is not None else None
            if c is None or d.unitNumber != dp.unit_number or c.busNumber != dp.controller_bus:
                continue
            ctype = type(c).__name__.rsplit(".", 1)[-1]
            file = str(getattr(d.backing, "fileName", "") or "")
            if vm_config.CONTROLLER_TYPES.get(ctype, ("", ""))[0] == want_type and file:
                found = (int(d.key), file, f"{ctype} {c.busNumber}")
                break
        if found is None:
            raise RestoreVmError(
                f"the new VM has no disk at {dp.controller_type} bus {dp.controller_bus}"
                f" unit {dp.unit_number} (for saved disk {dp.saved_key})"
            )
        out[dp.saved_key] = found
    return out


def _destroy(conn: Connection, vm: Any, name: str, why: BaseException) -> None:
    log.warning("restore_vm_failed_destroying", vm=name, error=str(why))
    try:
        conn.wait_task(vm.Destroy_Task(), f"destroy half-restored VM {name!r}", TASK_TIMEOUT_S)
    except Exception as exc:  # report the original failure, not this one
        log.error("restore_vm_destroy_failed", vm=name, error=str(exc))


# --- CLI ------------------------------------------------------------------------------


def register_restore_vm(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore-vm",
        help="recreate the VM of a restore point on a vCenter (registered, powered off)",
    )
    p.add_argument("point", metavar="POINT", help="restore point id (see `vmbackup repo list`)")
    p.add_argument("--config", required=True, help="vmbackup TOML config (vCenters, repository)")
    p.add_argument("--to", required=True, metavar="VCENTER", help="vCenter name from the config")
    p.add_argument("--datastore", required=True, metavar="DS", help="datastore for files and disks")
    p.add_argument("--name", default="", help="name of the new VM (default: the saved name)")
    p.add_argument("--host", default="", help="host to register the VM on (default: any)")
    p.add_argument("--folder", default="", help="VM folder path below the datacenter")
    p.add_argument("--repo", default="", metavar="PATH", help="repository (default: config)")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="keep the new VM when an upload fails (default: destroy it)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_restore_vm)


def cmd_restore_vm(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from common.logging import setup_logging
    from common.settings import load_config
    from coordinator.vcenter import VCenterError

    def fail(msg: str, code: int = 1) -> int:
        print(f"vmbackup: restore-vm: {msg}", file=sys.stderr)
        return code

    try:
        cfg = load_config(args.config)
    except (ConfigError, ValueError) as exc:
        return fail(f"config error: {exc}", 2)
    setup_logging(cfg.log.level, cfg.log.format, role="restore-vm")
    vcs = [vc for vc in cfg.vcenters if vc.name == args.to]
    if not vcs:
        names = ", ".join(vc.name for vc in cfg.vcenters) or "none"
        return fail(f"no vCenter named {args.to!r} in {args.config} (configured: {names})", 2)
    repo_path = args.repo or cfg.repository.path
    if not repo_path:
        return fail(f"no repository: give --repo or set repository.path in {args.config}", 2)
    passphrase = cfg.repository.passphrase.value if cfg.repository.passphrase else None
    try:
        repo = Repository.open(repo_path, passphrase)
        load_point(repo, args.point)  # bad point: fail before touching vCenter
    except (RepositoryError, RestoreVmError) as exc:
        return fail(str(exc))
    try:
        conn = Connection(vcs[0]).connect()
    except (VCenterError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, VCenterError) else exc
        down = isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
        return fail(f"vCenter {args.to} {'unreachable' if down else 'refused us'}: {exc}")
    last = [0.0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 1.0:
            last[0] = now
            pct = 100.0 * done / total if total else 100.0
            print(f"  {what}: {done}/{total} bytes ({pct:.0f}%)", file=sys.stderr, flush=True)

    try:
        res = restore_vm(
            conn,
            repo,
            args.point,
            datastore=args.datastore,
            name=args.name,
            host=args.host,
            folder=args.folder,
            keep_failed=args.keep_failed,
            progress=progress,
        )
    except (RestoreVmError, RepositoryError, VCenterError) as exc:
        return fail(str(exc))
    except vim.fault.VimFault as exc:
        return fail(f"vCenter refused: {type(exc).__name__}: {getattr(exc, 'msg', exc)}")
    finally:
        conn.close()
    sys.stdout.write(res.to_json() + "\n" if args.json else res.to_text())
    return 0
