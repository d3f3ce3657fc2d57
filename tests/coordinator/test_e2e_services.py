"""The coordinator with the real services: `vmbackup writer`, `vmbackup proxy` and
`vmbackup backup` as processes, the lab, RabbitMQ and a repository on disk.

Two runs (a full, then an incremental after guest writes); every committed disk is
restored and compared with the guest's data byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from common.amqp import task_queue
from lab import Lab, LabSpec
from repository_writer.repository import Repository
from repository_writer.restore import restore_disk
from tests.coordinator.conftest import MiB, lab_hosts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXE = str(Path(sys.executable).with_name("vmbackup"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        hosts_per_cluster=2, vms_per_host=2, disks_per_vm=2, disk_sizes=[12 * MiB, 8 * MiB + 4096]
    )
    with Lab.start(spec) as lab:
        yield lab


def config(path: Path, lab: Lab, broker: Any, repo: Path, reports: Path) -> Path:
    keys = json.dumps([f"host.{h}" for h in lab_hosts(lab)])
    mounts = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in lab.datastores.items())
    path.write_text(
        f"""
[broker]
url = "{broker.url}"

[metrics]
port = 0

[log]
format = "json"

[repository]
path = "{repo}"

[writer]
name = "writer-e2e"

[proxy]
name = "proxy-e2e"
queues = {keys}
transport = "file"
datastore_mounts = {{ {mounts} }}

[coordinator]
id = "coord-e2e"
task_max_bytes = 4194304
task_timeout_s = 120.0
commit_timeout_s = 120.0
report_dir = "{reports}"

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


def wait_for_queues(broker: Any, queues: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        conn = pika.BlockingConnection(broker.pika_params("e2e-probe"))
        try:
            missing = []
            for q in queues:
                ch = conn.channel()
                try:
                    ch.queue_declare(q, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    missing.append(q)
            if not missing:
                return
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"queues never appeared: {missing}")
        time.sleep(0.3)


def test_backup_with_real_proxy_and_writer(lab: Lab, broker: Any, tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, chunk_size=MiB)
    cfg = config(tmp_path / "vmbackup.toml", lab, broker, repo_path, tmp_path / "reports")
    env = {**os.environ, "LAB_PASSWORD": lab.password}
    logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("writer", "proxy")}  # noqa: SIM115
    procs = [
        subprocess.Popen([EXE, n, "--config", str(cfg)], env=env, stdout=logs[n], stderr=logs[n])
        for n in ("writer", "proxy")
    ]
    try:
        wait_for_queues(
            broker, [task_queue(f"host.{h}") for h in lab_hosts(lab)] + ["vmbackup.commits"]
        )
        vms = lab.vms()
        for i, v in enumerate(vms):
            lab.write_guest_data(v["name"], 2000, i * MiB + 17, os.urandom(300_000))
            lab.write_guest_data(v["name"], 2001, 8 * MiB, b"tail" * 1024)  # the short last chunk

        def backup(report: Path) -> dict[str, Any]:
            r = subprocess.run(
                [EXE, "backup", "--config", str(cfg), "--policy", "all", "--report", str(report)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            return json.loads(report.read_text())

        first = backup(tmp_path / "r1.json")
        assert first["status"] == "ok"
        assert {d["mode"] for v in first["vms"] for d in v["disks"]} == {"full"}

        lab.write_guest_data(vms[0]["name"], 2000, 3 * MiB, b"changed" * 100)
        second = backup(tmp_path / "r2.json")
        assert second["status"] == "ok"
        modes = {(v["name"], d["key"]): d for v in second["vms"] for d in v["disks"]}
        assert all(d["mode"] == "incremental" for d in modes.values()), modes
        assert modes[(vms[0]["name"], 2000)]["bytes_planned"] == MiB
        assert sum(d["bytes_planned"] for d in modes.values()) == MiB

        repo = Repository.open(repo_path)
        for v in second["vms"]:
            for d in v["disks"]:
                buf = io.BytesIO()
                restore_disk(repo, v["point_id"], d["key"], buf)
                assert buf.getvalue() == lab.read_guest_data(v["moref"], d["key"], 0, d["capacity"])
        assert all(e["removed_at"] for e in lab.snapshot_events())
        assert (tmp_path / "reports" / f"{second['job_id']}.txt").exists()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
