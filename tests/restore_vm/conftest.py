"""One lab, one repository and two backed-up VMs shared by the restore-vm tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from coordinator.vcenter import Connection
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from tests.coordinator.conftest import vcenter_settings
from tests.restore_vm.lab_point import (
    LabPoint,
    back_up,
    create_rich_vm,
    remove_extra_net,
    write_disks,
)

MiB = 2**20
CHUNK = 256 * 1024
# odd sizes: a chunk plus a sector, a partial last chunk, less than one chunk
RICH_SIZES = [2 * MiB + 4096, 1 * MiB, 5 * MiB + 512, 768 * 1024, CHUNK + 512]


@dataclass
class Env:
    lab: Any
    conn: Connection
    repo: Repository
    repo_path: Path
    stack: Stack  # not started: only its config writer and its way to run `vmbackup`
    config: Path
    shared_ds: str
    rich: LabPoint  # a VM with every controller kind and two NICs
    plain: LabPoint  # a VM as the lab makes them (pvscsi, no NIC)
    tmp: Path

    def vmbackup(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        if args and args[0] == "restore-vm":
            args += ("--config", str(config or self.config))
        return self.stack.run(*args, timeout=300)

    def restore_vm(
        self, point: str, name: str, *extra: str, config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``vmbackup restore-vm POINT --to lab --datastore <shared> --name NAME EXTRA...``"""
        args = ("--to", "lab", "--datastore", self.shared_ds, "--name", name, *extra)
        return self.vmbackup("restore-vm", point, *args, config=config)

    def vms_named(self, name: str) -> list[Any]:
        content = self.conn.content
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return [v for v in view.view if v.name == name]
        finally:
            view.DestroyView()


def config_stack(lab: Any, workdir: Path) -> Stack:
    """A stack that is never started: restore-vm needs only its config (quiet logs)."""
    return Stack(lab, workdir, StackSpec(writers=0, proxies=0, log_level="warning"))


def write_config(
    stack: Stack,
    path: Path,
    repo: Path,
    url: str | None = None,
    password: str | None = None,
    thumbprint: str | None = None,
) -> Path:
    """A config for restore-vm: ``repo``, and the lab's vCenter (or ``url``/``password``/
    ``thumbprint``) with a short timeout and no retries so that the error tests fail fast."""
    vcenter: dict[str, str | float | int] = {"timeout_s": 20.0, "retries": 0}
    if url is not None:
        vcenter["url"] = url
    if thumbprint is not None:
        vcenter["thumbprint"] = thumbprint
    return stack.write_config(path, repo=repo, password=password, **vcenter)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    from lab import Lab, LabSpec

    tmp = Path(tempfile.mkdtemp(prefix="vmbackup-restore-vm-"))
    spec = LabSpec(
        hosts_per_cluster=2,
        vms_per_host=1,
        disks_per_vm=2,
        disk_sizes=[3 * MiB + 512, 2 * MiB],
        power_on=False,
    )
    try:
        with Lab.start(spec) as lab:
            conn = Connection(vcenter_settings(lab)).connect()
            try:
                repo_path = tmp / "repo"
                repo = Repository.init(repo_path, chunk_size=CHUNK)
                shared = next(d for d in lab.datastores if "Shared" in d)
                rich_mo = create_rich_vm(conn, "rich", shared, RICH_SIZES)
                write_disks(conn, lab, rich_mo, seed=7)
                plain_name = lab.vms()[0]["name"]
                plain_mo = conn.moref("VirtualMachine", lab.vm(plain_name)["moref"])
                write_disks(conn, lab, plain_mo, seed=8)
                rich = back_up(conn, lab, repo, rich_mo)
                plain = back_up(conn, lab, repo, plain_mo)
                remove_extra_net(conn)  # the target now lacks one of rich's networks
                stack = config_stack(lab, tmp)
                config = write_config(stack, tmp / "vmbackup.toml", repo_path)
                yield Env(lab, conn, repo, repo_path, stack, config, shared, rich, plain, tmp)
            finally:
                conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tmp_file(tmp_path: Path) -> Path:
    return tmp_path / "disk.raw"


def flat_of(env: Env, ds_path: str) -> Path:
    p: Path = env.lab.local_path(ds_path)
    assert p.exists(), f"{ds_path}: no flat file {p}"
    return p


def same_bytes(a: Path, b: Path) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
