"""Commit protocol follow-ups against the lab and the real broker: the running-job
marker protects a job's chunks from gc, and large disks commit in staged parts."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from common.messages import CommitPart, CommitRequest, JobMarker, Message
from common.packed_entries import unpack_entries
from coordinator import report
from coordinator.settings import PolicySettings
from lab import Lab, LabSpec
from repository.gc import gc
from repository.restore import restore_disk
from repository.staging import request_dir_name
from tests.coordinator.conftest import MiB

pytestmark = pytest.mark.integration

DISK = 40 * MiB


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=2, disk_sizes=[DISK])) as lab:
        for v in lab.vms():
            for i in range(0, DISK // MiB, 1):  # every chunk holds data: 40 entries
                lab.write_guest_data(v["name"], 2000, i * MiB + 17, f"{v['name']}:{i}".encode())
        yield lab


def restored(repo: Any, point_id: str, key: int) -> bytes:
    buf = io.BytesIO()
    restore_disk(repo, point_id, key, buf)
    return buf.getvalue()


def test_gc_during_a_running_job_keeps_its_chunks(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start()
    name = lab.vms()[0]["name"]
    reports = []

    def gc_before_commit(msg: Message) -> None:
        if isinstance(msg, CommitRequest):
            # every chunk of the job is stored and not yet named by any point
            assert [j["job_id"] for j in env.repo.running_jobs()] == [msg.job_id]
            time.sleep(0.05)  # chunk mtimes strictly before gc's start
            reports.append(gc(env.repo, grace=0.0))

    env.peer.on_commit = gc_before_commit
    rep = env.run(PolicySettings(name="one", names=[name]))
    (v,) = rep.vms
    assert v.status == report.OK, rep.to_text()
    (r,) = reports
    # unreferenced and older than gc's start: only the job's marker kept them
    assert r.chunks_removed == 0
    if env.repo.packed:  # in the writers' open packs, which gc never touches
        assert r.packs_removed == r.packs_rewritten == 0
    else:  # chunk files younger than the marker's start
        assert r.chunks_kept_young >= 40
    assert restored(env.repo, v.point_id, 2000) == lab.read_guest_data(v.moref, 2000, 0, DISK)
    # begin before the first task, end after the commit; no marker left
    ops = [m.op for m in env.peer.markers]
    assert ops == ["begin", "end"]
    assert env.peer.tasks and env.repo.running_jobs() == []

    # a gc after the job may sweep what no point names: here, nothing is unreferenced
    after = gc(env.repo, grace=0.0)
    assert after.chunks_removed == 0 and after.missing == []


def test_large_disk_commits_in_staged_parts(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start(commit_part_entries=7)
    name = lab.vms()[1]["name"]
    pol = PolicySettings(name="parts", names=[name])
    rep1 = env.run(pol)
    (v1,) = rep1.vms
    assert v1.status == report.OK, rep1.to_text()
    (req1,) = env.peer.commits
    (disk,) = req1.disks
    assert disk.entries == [] and disk.parts == math.ceil(40 / 7)
    parts: list[CommitPart] = list(env.peer.parts)
    assert sorted(p.part for p in parts) == list(range(disk.parts))
    assert all(p.request_id == req1.request_id and p.disk_key == 2000 for p in parts)
    indexes = sorted(i for p in parts for i, _c in unpack_entries(p.entries))
    assert indexes == list(range(40))
    guest1 = lab.read_guest_data(v1.moref, 2000, 0, DISK)
    assert restored(env.repo, v1.point_id, 2000) == guest1
    assert env.repo.get_point(v1.point_id).disks[0].changed_chunks == 40
    assert list(env.repo.staging.leftovers()) == []  # removed by the commit

    # an incremental of a few chunks goes inline; its base supplies the rest
    lab.write_guest_data(name, 2000, 3 * MiB, b"changed")
    env.peer.parts.clear()
    rep2 = env.run(pol)
    (v2,) = rep2.vms
    assert v2.status == report.OK and v2.disks[0].mode == "incremental", rep2.to_text()
    req2 = env.peer.commits[-1]
    assert req2.disks[0].parts == 0 and len(req2.disks[0].entries) == 1
    assert env.peer.parts == []
    assert restored(env.repo, v2.point_id, 2000) == lab.read_guest_data(v2.moref, 2000, 0, DISK)


def test_refused_part_fails_the_commit_cleanly(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start(commit_part_entries=10)
    name = lab.vms()[0]["name"]

    def break_part(msg: Message) -> None:
        if isinstance(msg, CommitPart) and msg.part == 2:
            # a directory where the part file goes: the writer cannot store it
            d = env.repo.path / "staging" / request_dir_name(msg.request_id)
            (d / f"disk-{msg.disk_key}.part-{msg.part}").mkdir(parents=True, exist_ok=True)

    env.peer.on_commit = break_part
    rep = env.run(PolicySettings(name="broken", names=[name]))
    (v,) = rep.vms
    assert v.status == report.FAILED
    assert "commit part 2 of disk 2000 refused" in v.disks[0].error
    assert env.peer.commits == []  # never asked to commit
    assert isinstance(env.peer.markers[-1], JobMarker) and env.peer.markers[-1].op == "end"
