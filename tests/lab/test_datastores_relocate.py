"""The lab as a host for instant recovery: an NFS datastore from this machine
(CreateNasDatastore to 127.0.0.1), RemoveDatastore, and RelocateVM_Task that moves a VM's
files to another datastore (vcsim alone moves nothing), sparse and byte for byte."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from lab import Lab, LabSpec

MiB = 2**20
CAPACITY = 4 * MiB + 512


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=2, disk_sizes=[CAPACITY])) as running:
        yield running


def _host(si: Any) -> Any:
    return si.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[0]


def _nas(name: str, path: Path, host: str = "127.0.0.1") -> Any:
    return vim.host.NasVolume.Specification(
        remoteHost=host, remotePath=str(path), localPath=name, accessMode="readWrite", type="NFS"
    )


def _vm(si: Any, moref: str) -> Any:
    return vim.VirtualMachine(moref, si._stub)


def test_nfs_datastore_from_this_machine_mounts_and_unmounts(lab: Lab, si: Any) -> None:
    host = _host(si)
    dss = host.configManager.datastoreSystem
    with tempfile.TemporaryDirectory() as d:
        ds = dss.CreateNasDatastore(_nas("nfs-here", Path(d)))
        assert ds.name == "nfs-here" and ds.summary.url == d
        assert "nfs-here" in [x.name for x in host.datastore]
        with pytest.raises(vim.fault.DuplicateName):
            dss.CreateNasDatastore(_nas("nfs-here", Path(d)))
        with pytest.raises(vmodl.fault.InvalidArgument):
            dss.CreateNasDatastore(_nas("bad/name", Path(d)))
        dss.RemoveDatastore(ds)
        assert "nfs-here" not in [x.name for x in host.datastore]
        # mounting again after a removal does not bring the old one back
        ds2 = dss.CreateNasDatastore(_nas("nfs-again", Path(d)))
        assert [x.name for x in host.datastore].count("nfs-here") == 0
        dss.RemoveDatastore(ds2)


def test_relocate_copies_the_disks_sparse_and_exact(lab: Lab, si: Any) -> None:
    host = _host(si)
    info = next(v for v in lab.vms() if v["host"] == host.name)
    disk = info["disks"][0]
    data = os.urandom(MiB)
    lab.write_guest_data(info["name"], disk["key"], 2 * MiB, data)
    lab.write_guest_data(info["name"], disk["key"], CAPACITY - 512, b"e" * 512)
    before = Path(disk["flat_path"]).read_bytes()
    with tempfile.TemporaryDirectory() as d:
        dss = host.configManager.datastoreSystem
        target = dss.CreateNasDatastore(_nas("prod-nfs", Path(d)))
        vm = _vm(si, info["moref"])
        WaitForTask(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(datastore=target)))
        moved: Any
        [moved] = [x for x in vm.config.hardware.device if isinstance(x, vim.vm.device.VirtualDisk)]
        assert moved.backing.fileName.startswith("[prod-nfs] ")
        assert moved.backing.datastore._moId == target._moId
        assert vm.config.files.vmPathName.startswith("[prod-nfs] ")
        assert [x.name for x in vm.datastore] == ["prod-nfs"]
        [now] = [v for v in lab.vms() if v["moref"] == info["moref"]]  # a fresh listing
        flat = Path(now["disks"][0]["flat_path"])
        assert flat.is_relative_to(d) and flat.read_bytes() == before
        assert not Path(disk["flat_path"]).exists()  # the source is deleted, as svMotion does
        assert os.stat(flat).st_blocks * 512 < CAPACITY  # the hole at the start stayed a hole
        with pytest.raises(vim.fault.ResourceInUse):
            dss.RemoveDatastore(target)  # the VM lives there now
        WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())
        dss.RemoveDatastore(target)


def test_fail_relocate_vm_fails_the_task_and_moves_nothing(lab: Lab, si: Any) -> None:
    host = _host(si)
    info = [v for v in lab.vms() if v["host"] == host.name][-1]
    flat = info["disks"][0]["flat_path"]
    with tempfile.TemporaryDirectory() as d:
        dss = host.configManager.datastoreSystem
        target = dss.CreateNasDatastore(_nas("prod-fail", Path(d)))
        lab.inject(fail_relocate_vm=info["name"])
        try:
            vm = _vm(si, info["moref"])
            with pytest.raises(vim.fault.NoDiskSpace):
                WaitForTask(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(datastore=target)))
        finally:
            lab.inject(fail_relocate_vm=None)
        [now] = [v for v in lab.vms() if v["moref"] == info["moref"]]
        assert now["disks"][0]["flat_path"] == flat
        assert Path(flat).exists() and os.listdir(d) == []
        dss.RemoveDatastore(target)
