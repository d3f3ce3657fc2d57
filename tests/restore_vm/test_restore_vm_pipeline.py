"""restore-vm of points made the real way: `vmbackup writer`, `vmbackup proxy` and
`vmbackup backup` as processes over RabbitMQ, from the lab, into a repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from coordinator.vcenter import Connection
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.restore import restore_disk
from tests.coordinator.conftest import vcenter_settings
from tests.restore_vm.conftest import same_bytes
from tests.restore_vm.lab_point import (
    create_rich_vm,
    remove_extra_net,
    sha256_file,
    write_disks,
)

pytestmark = [pytest.mark.integration]
MiB = 2**20


def _disk_sums(conn: Connection, lab: Any, vm: Any) -> dict[int, str]:
    """sha256 of each disk's current data (the guest writes nothing after this)."""
    devices = conn.get_properties(vm, ["config.hardware.device"])["config.hardware.device"]
    return {
        d.key: sha256_file(lab.local_path(d.backing.fileName))
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk)
    }


def test_restore_vm_from_a_real_backup(tmp_path: Path) -> None:
    from lab import Lab, LabSpec

    spec = LabSpec(hosts_per_cluster=1, vms_per_host=1, disks_per_vm=2, disk_sizes=[5 * MiB + 512])
    with Lab.start(spec) as lab:
        conn = Connection(vcenter_settings(lab)).connect()
        try:
            shared = next(d for d in lab.datastores if "Shared" in d)
            rich = create_rich_vm(conn, "rich", shared, [2 * MiB + 4096, MiB, 3 * MiB + 512])
            write_disks(conn, lab, rich, seed=3)
            plain = lab.vms()[0]
            write_disks(conn, lab, conn.moref("VirtualMachine", plain["moref"]), seed=4)

            guest = {
                "rich": _disk_sums(conn, lab, rich),
                plain["name"]: _disk_sums(conn, lab, conn.moref("VirtualMachine", plain["moref"])),
            }
            pipeline = StackSpec(writers=1, proxies=1, transport="file", chunk_size=MiB)
            with Stack(lab, tmp_path, pipeline) as stack:
                run = stack.backup(timeout=300)
            assert run.returncode == 0, run.log_path.read_text()[-6000:]
            points = {v["name"]: v["point_id"] for v in run.report["vms"]}
            assert set(points) == {"rich", plain["name"]}, points
            remove_extra_net(conn)
            repo = Repository.open(stack.repo)
            for vm_name, point_id in points.items():
                new = f"{vm_name}-restored"
                args = ["restore-vm", point_id, "--config", str(stack.config_path), "--to", "lab"]
                args += ["--datastore", shared, "--name", new, "--json"]
                # the stack logs at info on stdout: keep stdout for the JSON result
                r = stack.run(*args, env={"VMBACKUP_LOG__LEVEL": "warning"}, timeout=300)
                assert r.returncode == 0, r.stderr
                res = json.loads(r.stdout)["result"]
                assert res["power_state"] == "poweredOff"
                point = repo.get_point(point_id)
                assert {d["saved_key"] for d in res["disks"]} == {d.key for d in point.disks}
                # the job saved each disk's controller with the point (repo list shows it)
                for pd in point.disks:
                    assert {"controller_key", "controller_type", "controller_bus"} <= set(pd.info)
                for d in res["disks"]:
                    out = tmp_path / f"{point_id}-{d['saved_key']}.raw"
                    restore_disk(repo, point_id, d["saved_key"], out)
                    assert same_bytes(lab.local_path(d["file"]), out)
                    # and the guest's data, unchanged since the backup
                    assert sha256_file(out) == guest[vm_name][d["saved_key"]]
                    out.unlink()
                if vm_name == "rich":
                    assert len(res["disks"]) == 3
                    assert any("Backup Only Net" in n for n in res["notes"])
        finally:
            conn.close()
