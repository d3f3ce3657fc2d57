"""Skipped VMs and disks carry their reason into the job report (templates, independent)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim

from coordinator import report
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB, vm_report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(vms_per_host=2, disks_per_vm=2, disk_sizes=[4 * MiB])) as lab:
        yield lab


def test_template_and_independent_disk_are_skipped_with_reasons(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    rt = env.start()
    conn = rt.connections["lab"]
    vms = lab.vms()
    indep, tmpl = vms[0], vms[1]
    vm0 = conn.moref("VirtualMachine", indep["moref"])
    disk = next(
        d
        for d in conn.get_properties(vm0, ["config.hardware.device"])["config.hardware.device"]
        if isinstance(d, vim.vm.device.VirtualDisk) and d.key == 2001
    )
    disk.backing.diskMode = "independent_persistent"
    edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    conn.wait_task(vm0.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[edit])), "edit", 30)
    vm1 = conn.moref("VirtualMachine", tmpl["moref"])
    conn.wait_task(vm1.PowerOffVM_Task(), "power off", 30)
    vm1.MarkAsTemplate()
    lab.write_guest_data(indep["name"], 2000, 0, b"data" * 100)

    rep = env.run()
    v = vm_report(rep, indep["name"])
    assert v.status == report.OK, rep.to_text()
    by_key = {d.key: d for d in v.disks}
    assert by_key[2000].status == report.OK
    assert by_key[2001].status == report.SKIPPED
    assert "independent disk" in by_key[2001].reason
    t = vm_report(rep, tmpl["name"])
    assert t.status == report.SKIPPED and t.reason == "template"
    assert report.exit_status(rep) == report.EXIT_OK  # skips are not failures
    text = rep.to_text()
    assert "independent disk" in text and "template" in text
    point = env.repo.get_point(v.point_id)
    assert [d.key for d in point.disks] == [2000]
