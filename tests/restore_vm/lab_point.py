"""Builds a restore point of a lab VM the way the coordinator would, without the broker.

The VM's snapshot is taken with the coordinator's own snapshot code, its config is
read and serialized by the coordinator's own snapshots.snapshot_disks (so the saved
document is exactly what a backup saves), each frozen disk file is imported with
``repo import-disk``'s code, and one point combining those disks and the config is
committed with the repository's ``commit_point``: what the writer does on a
CommitRequest.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVmomi import vim

from coordinator import snapshots, vm_config
from coordinator.snapshots import snapshot_disks
from coordinator.vcenter import Connection
from repository.import_disk import import_disk
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository

D = vim.vm.device
EXTRA_NET = "Backup Only Net"  # exists when the VM is backed up, removed before restore


@dataclass
class LabPoint:
    point_id: str
    vm_name: str
    config: Any  # the snapshot's vim.vm.ConfigInfo
    disk_sha256: dict[int, str]  # frozen disk contents
    capacities: dict[int, int]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def back_up(conn: Connection, lab: Any, repo: Repository, vm_mo: Any) -> LabPoint:
    vm_name = conn.get_properties(vm_mo, ["name"])["name"]
    job_id = f"restore-test-{uuid.uuid4().hex[:8]}"
    with snapshots.held(
        conn,
        vm_mo,
        prefix="vmbackup-",
        job_id=job_id,
        coordinator_id="restore-test",
        quiesce=False,
        fallback="crash",
        timeout_s=60,
    ) as snap:
        disks, saved = snapshot_disks(conn, snap)
        config = conn.get_properties(snap.mo, ["config"])["config"]
        vm_uuid = config.instanceUuid or config.uuid
        ctrl = vm_config.disk_controllers(saved)
        commit_disks = []
        sums: dict[int, str] = {}
        caps: dict[int, int] = {}
        for d in disks:
            frozen = lab.local_path(d.file)
            r = import_disk(
                repo, vm_name, d.key, frozen, vm_uuid=vm_uuid, job_id=f"{job_id}-{d.key}"
            )
            sums[d.key] = sha256_file(frozen)
            caps[d.key] = d.capacity
            assert r.capacity == d.capacity, (r.capacity, d.capacity)
            commit_disks.append(
                DiskChanges(
                    key=d.key,
                    capacity=d.capacity,
                    change_id=d.change_id,
                    base_point_id=r.point_id,
                    entries=[],
                    info={
                        "label": d.label,
                        "file": d.file,
                        "datastore": d.datastore,
                        "controller_key": d.controller_key,
                        "unit_number": d.unit_number,
                        "disk_mode": d.disk_mode,
                        **ctrl.get(d.key, {}),
                        "mode": "full",
                        "reason": "test import",
                    },
                )
            )
        point_id = repo.commit_point(
            PointCommit(
                job_id=job_id,
                vcenter=conn.name,
                vm_uuid=vm_uuid,
                vm_moref=vm_mo._moId,
                vm_name=vm_name,
                vm_config=saved,
                status="complete",
                snapshot_time=time.time(),
                failed_disks=[],
                disks=commit_disks,
            )
        )
    return LabPoint(point_id, vm_name, config, sums, caps)


def create_rich_vm(conn: Connection, name: str, datastore: str, sizes: list[int]) -> Any:
    """A lab VM with every controller kind restore handles, two NICs and odd sizes.

    Disks: pvscsi bus 0 unit 0, LSI SAS bus 1 unit 3, SATA (AHCI) unit 0, NVMe unit 0,
    IDE bus 1 unit 0 (vSphere's built-in IDE controller 201).
    """
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        host = view.view[0]
    finally:
        view.DestroyView()
    pool = host.parent.resourcePool
    dc = host.parent.parent.parent
    ns = host.configManager.networkSystem
    ns.AddPortGroup(
        portgrp=vim.host.PortGroup.Specification(
            name=EXTRA_NET,
            vlanId=0,
            vswitchName=ns.networkInfo.vswitch[0].name,
            policy=vim.host.NetworkPolicy(),
        )
    )
    nets = {n.name: n for n in dc.network}

    def add(dev: Any, create: bool = False) -> Any:
        s = D.VirtualDeviceSpec(operation="add", device=dev)
        if create:
            s.fileOperation = "create"
        return s

    devs = [
        add(D.ParaVirtualSCSIController(key=-10, busNumber=0, sharedBus="noSharing")),
        add(D.VirtualLsiLogicSASController(key=-11, busNumber=1, sharedBus="noSharing")),
        add(D.VirtualAHCIController(key=-12, busNumber=0)),
        add(D.VirtualNVMEController(key=-13, busNumber=0)),
    ]
    places = [(-10, 0), (-11, 3), (-12, 0), (-13, 0), (201, 0)]
    for i, ((ck, unit), size) in enumerate(zip(places, sizes, strict=False)):
        disk = D.VirtualDisk(
            key=-(100 + i),
            controllerKey=ck,
            unitNumber=unit,
            capacityInKB=size // 1024,
            capacityInBytes=size,
            backing=D.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
            ),
        )
        devs.append(add(disk, create=True))
    devs.append(
        add(
            D.VirtualVmxnet3(
                key=-200,
                backing=D.VirtualEthernetCard.NetworkBackingInfo(
                    deviceName="VM Network", network=nets["VM Network"]
                ),
                addressType="generated",
            )
        )
    )
    devs.append(
        add(
            D.VirtualE1000e(
                key=-201,
                backing=D.VirtualEthernetCard.NetworkBackingInfo(
                    deviceName=EXTRA_NET, network=nets[EXTRA_NET]
                ),
                addressType="generated",
            )
        )
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId="ubuntu64Guest",
        numCPUs=4,
        numCoresPerSocket=2,
        memoryMB=3072,
        firmware="efi",
        version="vmx-19",
        annotation="restore-vm test VM",
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=devs,
    )
    task = dc.vmFolder.CreateVM_Task(config=spec, pool=pool, host=host)
    return conn.wait_task(task, f"create {name}", 60)


def remove_extra_net(conn: Connection) -> None:
    """Take EXTRA_NET away from every host: the restore target then lacks it."""
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        for host in view.view:
            ns = host.configManager.networkSystem
            if any(pg.spec.name == EXTRA_NET for pg in ns.networkInfo.portgroup or []):
                ns.RemovePortGroup(pgName=EXTRA_NET)
    finally:
        view.DestroyView()


def write_disks(conn: Connection, lab: Any, vm_mo: Any, seed: int) -> None:
    """Guest data in every disk of the VM: random runs, zero runs, repeated blocks."""
    import random

    from lab.guest import write_at

    rng = random.Random(seed)
    devices = conn.get_properties(vm_mo, ["config.hardware.device"])["config.hardware.device"]
    for d in devices:
        if not isinstance(d, vim.vm.device.VirtualDisk):
            continue
        cap = int(d.capacityInBytes)
        path = lab.local_path(d.backing.fileName)
        block = rng.randbytes(64 * 1024)
        for off in range(0, cap, 96 * 1024):
            n = min(rng.choice([4096, 32 * 1024, 64 * 1024]), cap - off)
            data = block[:n] if rng.random() < 0.3 else rng.randbytes(n)
            write_at(path, cap, off, data)
        write_at(path, cap, cap - 512, rng.randbytes(512))  # the very last sector too


def create_simple_vm(conn: Connection, name: str, datastore: str, size: int) -> Any:
    """A VM with one pvscsi disk of ``size`` bytes."""
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        host = view.view[0]
    finally:
        view.DestroyView()
    ctrl = D.ParaVirtualSCSIController(key=-10, busNumber=0, sharedBus="noSharing")
    disk = D.VirtualDisk(
        key=-11,
        controllerKey=-10,
        unitNumber=0,
        capacityInKB=size // 1024,
        capacityInBytes=size,
        backing=D.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
        ),
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId="otherLinux64Guest",
        numCPUs=1,
        memoryMB=512,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=[
            D.VirtualDeviceSpec(operation="add", device=ctrl),
            D.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk),
        ],
    )
    dc = host.parent.parent.parent
    task = dc.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host)
    return conn.wait_task(task, f"create {name}", 60)
