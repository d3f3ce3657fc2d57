"""Per-policy retention with the real services: `vmbackup backup` of two policies that
share a VM, a third policy without retention, real writer and proxy processes.

After each job the coordinator has the writer apply the policy's rules (a PruneRequest on
the commits queue): only that policy's points go, the other policies' points of the same
VM stay, the report says what went and why, and what is left restores bit-exact.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.job_ids import policy_of_job
from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.restore import restore_disk
from tests.coordinator.conftest import MiB
from tests.repository.conftest import point_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=3, disk_sizes=[8 * MiB])
    with Lab.start(spec) as lab:
        yield lab


def _policies(names: list[str]) -> str:
    """gold: VMs 0 and 1, the last 2 points; silver: VMs 1 and 2, the newest of the day."""
    return f"""
[[policies]]
name = "gold"
names = {json.dumps(names[:2])}
[policies.retention]
last = 2

[[policies]]
name = "silver"
names = {json.dumps(names[1:])}
[policies.retention]
daily = 1
"""


def _by_policy(repo: Repository) -> dict[str, dict[str, list[str]]]:
    """policy -> VM name -> its point ids, oldest first."""
    out: dict[str, dict[str, list[str]]] = {}
    for p in repo.points():
        out.setdefault(policy_of_job(p.job_id), {}).setdefault(p.vm_name, []).append(p.id)
    return out


def test_two_policies_each_prune_only_their_own_points(lab: Lab, tmp_path: Path) -> None:
    names = sorted(v["name"] for v in lab.vms())
    spec = StackSpec(
        writers=1,
        proxies=1,
        n_shards=2,
        transport="file",
        chunk_size=MiB,
        extra_config=_policies(names),
    )
    with Stack(lab, tmp_path, spec) as stack:
        members = {"all": names, "gold": names[:2], "silver": names[1:]}

        def backup(policy: str) -> dict[str, Any]:
            for i, name in enumerate(members[policy]):  # something new on each of its disks
                lab.write_guest_data(name, 2000, (i % 8) * MiB + 11, os.urandom(4096))
            run = stack.backup(policy, timeout=300)
            assert run.returncode == 0, run.log_path.read_text()[-6000:]
            return run.report

        everything = backup("all")  # a policy without retention: its points always stay
        assert everything["retention"] is None
        gold = [backup("gold") for _ in range(3)]
        silver = [backup("silver") for _ in range(2)]

        repo = Repository.open(stack.repo)
        held = _by_policy(repo)
        assert {vm: len(ids) for vm, ids in held["all"].items()} == dict.fromkeys(names, 1)
        # gold kept its last 2 of VMs 0 and 1; silver the newest of VMs 1 and 2 (one day)
        assert {vm: len(ids) for vm, ids in held["gold"].items()} == {names[0]: 2, names[1]: 2}
        assert {vm: len(ids) for vm, ids in held["silver"].items()} == {names[1]: 1, names[2]: 1}
        assert set(held) == {"all", "gold", "silver"}

        def points_of(rep: dict[str, Any]) -> set[str]:
            return {v["point_id"] for v in rep["vms"]}

        # the first two gold jobs removed nothing; the third removed the first one's points
        assert [r["retention"]["removed_count"] for r in gold] == [0, 0, 2]
        third = gold[2]["retention"]
        assert (third["keep"], third["dry_run"], third["kept"], third["error"]) == (
            "last 2",
            False,
            4,
            "",
        )
        assert {r["point"] for r in third["removed"]} == points_of(gold[0])
        assert all(r["why"].startswith("not among the last 2") for r in third["removed"])
        assert set(held["gold"][names[0]] + held["gold"][names[1]]) == points_of(
            gold[1]
        ) | points_of(gold[2])
        # silver's second job removed its first one's points, and nothing of gold or all
        assert silver[1]["retention"]["removed_count"] == 2
        assert {r["point"] for r in silver[1]["retention"]["removed"]} == points_of(silver[0])
        assert points_of(everything) <= {p.id for p in repo.points()}

        # the dry run says why each point of the policy stays: nothing more would go
        out = stack.vmbackup("prune", "--config", str(stack.config_path), "--policy", "silver")
        assert out.splitlines()[-1] == "2 kept, 0 removed"
        assert out.count("(daily ") == 2

        # what is left restores bit-exact (the points they were based on are gone: every
        # map is whole): gold's last of VM 0, silver's last of VMs 1 and 2 (their guests
        # have not changed since)
        newest = [v for v in gold[2]["vms"] if v["name"] == names[0]] + silver[1]["vms"]
        assert len(newest) == 3
        for v in newest:
            buf = io.BytesIO()
            restore_disk(repo, v["point_id"], 2000, buf)
            assert buf.getvalue() == lab.read_guest_data(v["moref"], 2000, 0, 8 * MiB), v["name"]
        text = (stack.reports / f"{gold[2]['job_id']}.txt").read_text()
        assert "retention (last 2): 4 point(s) kept, 2 removed" in text
        assert ": OK;" in stack.verify()


def test_a_failed_retention_leaves_the_points_and_the_jobs_status(
    lab: Lab, make_env: Any, tmp_path: Path
) -> None:
    """The writer cannot apply the rules (a point's metadata is unreadable): nothing is
    removed, the report says why, and the job is still ok (exit 0): its backups are what
    the status reports. The next job, once the point is readable again, prunes."""
    from coordinator import report
    from coordinator.settings import PolicySettings, RetentionSettings
    from repository.import_disk import import_disk

    env = make_env(lab)
    env.start(commit_timeout_s=30.0)
    name = sorted(v["name"] for v in lab.vms())[0]
    policy = PolicySettings(name="gold", names=[name], retention=RetentionSettings(last=1))
    first = env.run(policy)
    assert first.status == report.OK and first.retention is not None, first.to_text()
    assert (first.retention.kept, first.retention.removed_count) == (1, 0)
    # a point of a VM no policy backs up, whose metadata cannot be read
    img = tmp_path / "other.img"
    img.write_bytes(os.urandom(MiB))
    other = import_disk(env.repo, "other", 2000, img).point_id
    meta = point_file(env.repo, other, "meta")
    good = meta.read_bytes()
    meta.write_bytes(b"junk")

    second = env.run(policy)
    assert second.status == report.OK and report.exit_status(second) == 0, second.to_text()
    r = second.retention
    assert r is not None and "refused by the writer" in r.error and "meta" in r.error, r
    assert "retention (last 1): not applied: refused by the writer" in second.to_text()
    gold = [p for p in _points_readable(env.repo, other) if policy_of_job(p) == "gold"]
    assert len(gold) == 2  # nothing removed
    assert [m.policy for m in env.peer.prunes] == ["gold", "gold"]

    meta.write_bytes(good)
    third = env.run(policy)
    assert third.retention is not None and not third.retention.error
    assert third.retention.removed_count == 2  # the two older gold points
    held = _by_policy(env.repo)
    assert [len(ids) for ids in held["gold"].values()] == [1]
    assert held[""] == {"other": [other]}  # no policy's point: never touched


def _points_readable(repo: Repository, skip: str) -> list[str]:
    """Job ids of every point but ``skip`` (whose metadata is unreadable)."""
    out = []
    for ref in repo.point_store.point_refs():
        if ref.point_id != skip:
            out.append(repo.point_store.load(ref).job_id)
    return out
