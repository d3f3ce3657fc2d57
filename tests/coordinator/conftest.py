"""Fixtures for coordinator integration tests: the lab, a repository, a runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.amqp import BrokerParams
from common.config import Secret
from coordinator.job import Job
from coordinator.job_runtime import Runtime
from coordinator.previous_points import History
from coordinator.report import JobReport
from coordinator.settings import CoordinatorSettings, LimitSettings, PolicySettings, VCenterSettings
from coordinator.vcenter import Connection

MiB = 2**20
CHUNK = MiB


def vcenter_settings(lab: Any, **kw: Any) -> VCenterSettings:
    base: dict[str, Any] = {
        "name": "lab",
        "url": lab.url,
        "user": Secret(lab.user, "test"),
        "password": Secret(lab.password, "test"),
        "thumbprint": lab.thumbprint,
        "timeout_s": 60.0,
        "backoff_s": 0.05,
    }
    base.update(kw)
    return VCenterSettings(**base)


def lab_hosts(lab: Any) -> list[str]:
    return sorted({v["host"] for v in lab.vms()})


@dataclasses.dataclass
class Env:
    lab: Any
    broker: BrokerParams
    repo_path: Path
    repo: Any
    runtime: Runtime | None = None
    conn: Connection | None = None
    peer: Any = None

    def start(self, **settings: Any) -> Runtime:
        limits = settings.pop("limits", LimitSettings())
        cs = CoordinatorSettings(
            id=settings.pop("id", "coord-test"),
            limits=limits,
            task_max_bytes=settings.pop("task_max_bytes", 8 * MiB),
            task_timeout_s=settings.pop("task_timeout_s", 60.0),
            commit_timeout_s=settings.pop("commit_timeout_s", 60.0),
            snapshot_timeout_s=60.0,
            orphan_min_age_s=settings.pop("orphan_min_age_s", 86400.0),
            **settings,
        )
        self.conn = Connection(vcenter_settings(self.lab)).connect()
        self.runtime = Runtime.start(
            cs, {"lab": self.conn}, History.open(self.repo_path), self.broker
        )
        return self.runtime

    def run(self, policy: PolicySettings | None = None, **kw: Any) -> JobReport:
        assert self.runtime is not None
        return Job(self.runtime, policy or PolicySettings(name="all"), **kw).run()

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
        if self.conn is not None:
            self.conn.close()
        if self.peer is not None:
            self.peer.close()


@pytest.fixture
def make_env(tmp_path: Path, broker: BrokerParams) -> Iterator[Callable[..., Env]]:
    from repository.repository import Repository
    from tests.coordinator.harness import ProtocolPeer

    envs: list[Env] = []

    def make(lab: Any, *, peer: bool = True, repo_path: Path | None = None) -> Env:
        path = repo_path or tmp_path / f"repo{len(envs)}"
        repo = Repository.open(path) if path.exists() else Repository.init(path, chunk_size=CHUNK)
        env = Env(lab, broker, path, repo)
        if peer:
            keys = [f"host.{h}" for h in lab_hosts(lab)]
            env.peer = ProtocolPeer(broker, repo, lab.local_path, keys)
        envs.append(env)
        return env

    yield make
    for e in envs:
        e.close()


def vm_report(rep: JobReport, name: str) -> Any:
    for v in rep.vms:
        if v.name == name:
            return v
    raise AssertionError(f"{name} not in the report: {[v.name for v in rep.vms]}")


def coordinator_only_stack(
    lab: Any, make_env: Callable[..., Any], vhost: str, workdir: Path, coordinator_id: str
) -> tuple[Any, Any]:
    """A stack whose only process is `vmbackup backup` (policy "nightly"); the test's peer
    in the same vhost takes every task and never answers, so a job stays mid-flight."""
    from lab.stack import Stack, StackSpec

    spec = StackSpec(
        writers=0,
        proxies=0,
        vhost=vhost,
        env={"VMBACKUP_COORDINATOR__ID": coordinator_id},
        extra_config='\n[[policies]]\nname = "nightly"\n',
    )
    stack = Stack(lab, workdir, spec).start()
    env = make_env(lab, repo_path=stack.repo)
    env.peer.hold_vm.update(v["name"] for v in lab.vms())
    return stack, env
