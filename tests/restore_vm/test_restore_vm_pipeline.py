"""restore-vm of points made the real way: `vmbackup writer`, `vmbackup proxy` and
`vmbackup backup` as processes over RabbitMQ, from the lab, into a repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from pyVmomi import vim

from common.amqp import task_queue
from coordinator.vcenter import Connection
from repository_writer.repository import Repository
from repository_writer.restore import restore_disk
from tests.restore_vm.conftest import ROOT, same_bytes, vcenter_settings
from tests.restore_vm.lab_point import (
    create_rich_vm,
    remove_extra_net,
    sha256_file,
    write_disks,
)

pytestmark = [pytest.mark.integration]
MiB = 2**20
EXE = str(Path(sys.executable).with_name("vmbackup"))


def _config(path: Path, lab: Any, broker: Any, repo: Path) -> Path:
    hosts = sorted({v["host"] for v in lab.vms()})
    mounts = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in lab.datastores.items())
    path.write_text(
        f"""
[broker]
url = "{broker.url}"

[metrics]
port = 0

[log]
level = "warning"

[repository]
path = "{repo}"

[proxy]
name = "proxy-restore-vm"
queues = {json.dumps([f"host.{h}" for h in hosts])}
transport = "file"
datastore_mounts = {{ {mounts} }}

[coordinator]
id = "coord-restore-vm"
task_timeout_s = 120.0
commit_timeout_s = 120.0

[[vcenters]]
name = "lab"
url = "{lab.url}"
user = "{lab.user}"
password = {{ env = "LAB_PASSWORD" }}
thumbprint = "{lab.thumbprint}"

[[policies]]
name = "all"
""",
        encoding="utf-8",
    )
    return path


def _disk_sums(conn: Connection, lab: Any, vm: Any) -> dict[int, str]:
    """sha256 of each disk's current data (the guest writes nothing after this)."""
    devices = conn.get_properties(vm, ["config.hardware.device"])["config.hardware.device"]
    return {
        d.key: sha256_file(lab.local_path(d.backing.fileName))
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk)
    }


def _wait_for_queues(broker: Any, queues: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        conn = pika.BlockingConnection(broker.pika_params("restore-vm-probe"))
        missing = []
        try:
            for q in queues:
                try:
                    conn.channel().queue_declare(q, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    missing.append(q)
        finally:
            conn.close()
        if not missing:
            return
        assert time.monotonic() < deadline, f"queues never appeared: {missing}"
        time.sleep(0.3)


def test_restore_vm_from_a_real_backup(broker: Any, tmp_path: Path) -> None:
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
            repo_path = tmp_path / "repo"
            Repository.init(repo_path, chunk_size=MiB)
            cfg = _config(tmp_path / "vmbackup.toml", lab, broker, repo_path)
            env = {**os.environ, "LAB_PASSWORD": lab.password}
            logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("writer", "proxy")}  # noqa: SIM115
            procs = [
                subprocess.Popen([EXE, n, "--config", str(cfg)], env=env, stdout=f, stderr=f)
                for n, f in logs.items()
            ]
            try:
                _wait_for_queues(broker, [task_queue(f"host.{plain['host']}"), "vmbackup.commits"])
                report = tmp_path / "report.json"
                r = subprocess.run(
                    [
                        EXE,
                        "backup",
                        "--config",
                        str(cfg),
                        "--policy",
                        "all",
                        "--report",
                        str(report),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                for f in logs.values():
                    f.close()
            points = {v["name"]: v["point_id"] for v in json.loads(report.read_text())["vms"]}
            assert set(points) == {"rich", plain["name"]}, points
            remove_extra_net(conn)
            repo = Repository.open(repo_path)
            for vm_name, point_id in points.items():
                new = f"{vm_name}-restored"
                args = ["restore-vm", point_id, "--config", str(cfg), "--to", "lab"]
                args += ["--datastore", shared, "--name", new, "--json"]
                r = subprocess.run(
                    [EXE, *args],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                assert r.returncode == 0, r.stderr
                res = json.loads(r.stdout)
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
