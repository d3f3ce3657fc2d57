"""pyVmomi helpers shared by the lab conformance tests."""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

from lab import Lab

MIB = 2**20
KIB = 1024


def vm_obj(si: Any, moref: str) -> vim.VirtualMachine:
    return vim.VirtualMachine(moref, si._stub)


def disks_of(config: Any) -> list[Any]:
    return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def disk_of(config: Any, key: int) -> Any:
    for d in disks_of(config):
        if d.key == key:
            return d
    raise AssertionError(f"no disk {key}")


def set_cbt(vm: vim.VirtualMachine, on: bool) -> None:
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=on)))


def snapshot(vm: vim.VirtualMachine, name: str = "backup", quiesce: bool = False) -> Any:
    task = vm.CreateSnapshot_Task(name=name, description="", memory=False, quiesce=quiesce)
    WaitForTask(task)
    return task.info.result


def remove(snap: Any) -> None:
    WaitForTask(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))


def all_areas(
    vm: vim.VirtualMachine, snap: Any, key: int, change_id: str, capacity: int
) -> tuple[list[tuple[int, int]], int]:
    """Loop QueryChangedDiskAreas over the whole disk, checking each reply chains on."""
    areas: list[tuple[int, int]] = []
    offset = 0
    calls = 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snap, key, offset, change_id)
        calls += 1
        assert info.startOffset == offset
        assert info.length > 0
        for a in info.changedArea:
            start, length = int(a.start), int(a.length)
            assert offset <= start and start + length <= offset + int(info.length)
            areas.append((start, length))
        offset += int(info.length)
    assert offset == capacity
    return areas, calls


def folder_get(lab: Lab, si: Any, ds_path: str, datacenter: str, start: int, length: int) -> bytes:
    """GET a disk's data file through the simulator's /folder, with a Range."""
    ds, rel = ds_path[1:].split("] ", 1)
    rel = rel[: -len(".vmdk")] + "-flat.vmdk"
    query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": ds})
    url = f"https://{lab.host}:{lab.port}/folder/{urllib.parse.quote(rel)}?{query}"
    req = urllib.request.Request(
        url,
        headers={"Cookie": si._stub.cookie, "Range": f"bytes={start}-{start + length - 1}"},
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        assert resp.status == 206
        data: bytes = resp.read()
        return data
