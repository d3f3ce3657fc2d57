"""The coordinator with the real services: `vmbackup writer`, `vmbackup proxy` and
`vmbackup backup` as processes, the lab, RabbitMQ and a repository on disk.

Two runs (a full, then an incremental after guest writes); every committed disk is
restored and compared with the guest's data byte for byte.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.restore import restore_disk
from tests.coordinator.conftest import MiB

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        hosts_per_cluster=2, vms_per_host=2, disks_per_vm=2, disk_sizes=[12 * MiB, 8 * MiB + 4096]
    )
    with Lab.start(spec) as lab:
        yield lab


def test_backup_with_real_proxy_and_writer(lab: Lab, tmp_path: Path) -> None:
    spec = StackSpec(writers=1, proxies=1, transport="file", chunk_size=MiB, task_max_bytes=4 * MiB)
    with Stack(lab, tmp_path, spec) as stack:
        vms = lab.vms()
        for i, v in enumerate(vms):
            lab.write_guest_data(v["name"], 2000, i * MiB + 17, os.urandom(300_000))
            lab.write_guest_data(v["name"], 2001, 8 * MiB, b"tail" * 1024)  # the short last chunk

        def backup() -> dict[str, Any]:
            run = stack.backup(timeout=300)
            assert run.returncode == 0, run.log_path.read_text()[-6000:]
            return run.report

        first = backup()
        assert first["status"] == "ok"
        assert {d["mode"] for v in first["vms"] for d in v["disks"]} == {"full"}

        lab.write_guest_data(vms[0]["name"], 2000, 3 * MiB, b"changed" * 100)
        second = backup()
        assert second["status"] == "ok"
        modes = {(v["name"], d["key"]): d for v in second["vms"] for d in v["disks"]}
        assert all(d["mode"] == "incremental" for d in modes.values()), modes
        assert modes[(vms[0]["name"], 2000)]["bytes_planned"] == MiB
        assert sum(d["bytes_planned"] for d in modes.values()) == MiB

        repo = Repository.open(stack.repo)
        for v in second["vms"]:
            for d in v["disks"]:
                buf = io.BytesIO()
                restore_disk(repo, v["point_id"], d["key"], buf)
                assert buf.getvalue() == lab.read_guest_data(v["moref"], d["key"], 0, d["capacity"])
        assert all(e["removed_at"] for e in lab.snapshot_events())
        assert (stack.reports / f"{second['job_id']}.txt").exists()
