"""Checks on the lab's disks used by the demo, the end-to-end tests and benchmarks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lab.process import Lab

MiB = 1 << 20


def disk_digest(lab: Lab, vm: str, key: int, capacity: int) -> str:
    """SHA-256 of a disk's current content (what a snapshot taken now will freeze)."""
    path = lab.local_path(lab.disk(vm, key)["file"])
    h = hashlib.sha256()
    left = capacity
    with open(path, "rb") as f:
        while left:
            block = f.read(min(left, 8 * MiB))
            if not block:  # past the end of a sparse file: zeros
                block = bytes(min(left, 8 * MiB))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def disk_digests(lab: Lab) -> dict[tuple[str, int], str]:
    return {
        (vm["moref"], d["key"]): disk_digest(lab, vm["moref"], d["key"], d["capacity"])
        for vm in lab.vms()
        for d in vm["disks"]
    }


def lab_snapshots(lab: Lab) -> list[str]:
    """Names of snapshots that still exist on any VM of the lab."""
    from pyVmomi import vim

    si = lab.connect()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    left = []
    try:
        for vm in view.view:
            tree = vm.snapshot.rootSnapshotList if vm.snapshot else []
            stack = list(tree)
            while stack:
                node = stack.pop()
                left.append(f"{vm.name}:{node.name}")
                stack.extend(node.childSnapshotList)
    finally:
        view.Destroy()
    return left


def same_content(a: Path, b: Path) -> bool:
    """Byte equality of two (possibly sparse) files, a shorter file read as zero-extended."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MiB), fb.read(8 * MiB)
            if not x and not y:
                return True
            if len(x) != len(y):
                n = max(len(x), len(y))
                x, y = x.ljust(n, b"\0"), y.ljust(n, b"\0")
            if x != y:
                return False


def vm_disk_files(lab: Lab, name: str) -> list[str]:
    """Datastore paths of a VM's disks, in device-key order, looked up through the API."""
    from pyVmomi import vim

    si = lab.connect()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if vm.name == name:
                disks = [
                    d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
                ]
                backings: list[Any] = [d.backing for d in sorted(disks, key=lambda d: d.key)]
                return [str(b.fileName) for b in backings]
    finally:
        view.Destroy()
    return []
