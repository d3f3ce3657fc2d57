"""The unmodified simulator (--plain): same inventory, no CBT (VMware's code alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from lab import Lab, LabError, LabSpec
from tests.lab.helpers import MIB, disk_of, set_cbt, snapshot, vm_obj

pytestmark = pytest.mark.integration

SPEC = LabSpec(
    clusters=2,
    hosts_per_cluster=1,
    standalone_hosts=1,
    vms_per_host=2,
    disks_per_vm=2,
    disk_sizes=[16 * MIB, 8 * MIB + 777],
    odd_names=True,
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(SPEC, plain=True) as running:
        yield running


def _shape(vms: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            v["name"],
            v["moref"],
            v["host"],
            v["cluster"],
            v["datacenter"],
            tuple((d["key"], d["capacity"], d["file"], d["datastore"]) for d in v["disks"]),
        )
        for v in vms
    ]


def test_plain_has_the_same_inventory_as_the_lab(lab: Lab) -> None:
    assert lab.plain
    with Lab.start(SPEC) as full:
        assert not full.plain
        assert _shape(lab.vms()) == _shape(full.vms())
        assert set(lab.datastores) == set(full.datastores)
        dirs = [Path(d) for d in full.datastores.values()]
        assert all(d.is_dir() for d in dirs)
    assert not full.running
    assert not any(d.exists() for d in dirs)  # SIGTERM removed the lab's temp files


def test_plain_answers_query_changed_disk_areas_with_a_fault(lab: Lab, si: Any) -> None:
    info = lab.vms()[0]
    vm = vm_obj(si, info["moref"])
    key = info["disks"][0]["key"]
    set_cbt(vm, True)
    snap = snapshot(vm, "plain")
    try:
        assert not disk_of(snap.config, key).backing.changeId  # vcsim keeps no changeId
        with pytest.raises(vmodl.fault.MethodNotFound):
            vm.QueryChangedDiskAreas(snap, key, 0, "*")
    finally:
        # vcsim 0.24 names the snapshot as the task's entity, which pyVmomi's
        # WaitForTask rejects; fetch only the task's state instead.
        task = snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
        pc = si.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=vim.Task, pathSet=["info.state"])
            ],
        )
        state = pc.RetrieveContents([spec])[0].propSet[0].val
        assert state == "success"


def test_plain_disk_files_are_sparse_and_writable(lab: Lab) -> None:
    info = lab.vms()[1]
    disk = info["disks"][1]
    assert disk["capacity"] == 8 * MIB + 777
    lab.write_guest_data(info["name"], disk["key"], disk["capacity"] - 3, b"end")
    assert lab.read_guest_data(info["moref"], disk["key"], disk["capacity"] - 3, 3) == b"end"
    assert lab.local_path(disk["file"]).stat().st_size == disk["capacity"]


def test_plain_rejects_cbt_fault_injection(lab: Lab) -> None:
    with pytest.raises(LabError, match="plain"):
        lab.inject(slow_soap_ms=10)
