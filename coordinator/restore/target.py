"""Where the restored VM goes: datacenter, host, pool, folder, networks, from one paged
inventory read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from coordinator.discovery import retrieve_paged
from coordinator.restore.errors import RestoreVmError
from coordinator.vcenter import (
    Connection,
)


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

    def of_type(t: type) -> list[Any]:
        return [o for o in objs.values() if isinstance(o, t)]

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

    def in_dc(o: Any) -> bool:
        d = dc_of(o)
        return d is not None and bool(d._moId == dc._moId)

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
