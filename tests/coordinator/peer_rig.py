"""The rig of coordinator tests that run `vmbackup backup` (a process) or the daemon
against the lab: a small lab with guest data, and a stack with the config, repository and
broker accounts but no writer or proxy, whose work the test's protocol peer (harness.py)
answers in the same vhost."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec
from tests.coordinator.conftest import MiB
from tests.coordinator.harness import ProtocolPeer


@contextlib.contextmanager
def small_lab() -> Iterator[Lab]:
    """One host, two VMs of one 4 MiB disk each, each with a little guest data."""
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=2, disk_sizes=[4 * MiB])) as lab:
        for v in lab.vms():
            lab.write_guest_data(v["name"], 2000, 0, b"data" * 1024)
        yield lab


@dataclass
class Rig:
    stack: Stack  # config, repository, broker accounts; no writer or proxy process
    peer: ProtocolPeer  # in the same vhost: takes every task, commit and job record
    env: Any  # the conftest's make_env environment (the peer's repository, runtimes)


@contextlib.contextmanager
def peer_rig(lab: Lab, make_env: Any, vhost: str, tmp_path: Path) -> Iterator[Rig]:
    s = Stack(lab, tmp_path / "stack", StackSpec(writers=0, proxies=0, vhost=vhost)).start()
    try:
        env = make_env(lab, repo_path=s.repo)
        yield Rig(s, env.peer, env)
    finally:
        s.stop()
