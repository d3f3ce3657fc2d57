"""Staged commit parts and running-job markers: repository side and the writer service
on the real broker."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from common.amqp import BrokerParams
from common.messages import (
    CommitPart,
    CommitRequest,
    DiskCommit,
    JobMarker,
    part_key,
)
from common.packed_entries import pack_entries
from repository.errors import CorruptObjectError, InvalidRequestError
from repository.gc import gc
from repository.repository import Repository
from repository.staging import request_dir_name
from repository.verify import verify
from repository_writer.commit_translation import point_commit
from repository_writer.service import WriterService
from tests.repository.commit_client import CommitClient

CS = 256 * 1024
N_CHUNKS = 3000  # a disk of many chunks


def make_chunks(repo: Repository, n: int, tag: str = "") -> list[tuple[int, bytes]]:
    """``n`` distinct small chunks stored; every 10th chunk is a zero chunk."""
    items = []
    entries: list[tuple[int, bytes]] = []
    for i in range(n):
        if i % 10 == 9:
            entries.append((i, b""))
            continue
        data = f"{tag}chunk {i}".encode() * 4
        cid = repo.chunk_id(data)
        items.append((cid, data))
        entries.append((i, cid))
    repo.store_raw_chunks(items)
    return entries


def request(
    request_id: str, disks: list[DiskCommit], reply_to: str = "", job: str = "job-1"
) -> CommitRequest:
    return CommitRequest(
        request_id=request_id,
        reply_to=reply_to,
        job_id=job,
        vcenter="vc",
        vm_uuid="vm-uuid-1",
        vm_moref="vm-1",
        vm_name="vm",
        vm_config=b"{}",
        status="complete",
        snapshot_time=1_700_000_000.0,
        disks=disks,
        failed_disks=[],
    )


def disk(parts: int, entries: list[tuple[int, bytes]] | None = None, base: str = "") -> DiskCommit:
    return DiskCommit(
        key=2000,
        capacity=N_CHUNKS * CS,
        change_id="",
        base_point_id=base,
        entries=entries or [],
        info={},
        parts=parts,
    )


def stage(repo: Repository, rid: str, entries: list[tuple[int, bytes]], per: int) -> int:
    slices = [entries[i : i + per] for i in range(0, len(entries), per)]
    for n, s in enumerate(slices):
        repo.stage_commit_part(rid, 2000, n, pack_entries(s))
    return len(slices)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", chunk_size=CS)


def test_parts_assemble_into_one_map(repo: Repository) -> None:
    entries = make_chunks(repo, N_CHUNKS)
    parts = stage(repo, "r1", entries, 256)
    assert parts == 12
    pid = repo.commit_point(point_commit(request("r1", [disk(parts)])))
    dmap = repo.load_map(pid, 2000)
    assert [dmap.get(i) for i in range(5)] == [e[1] for e in entries[:5]]
    assert dmap.zero_count() == N_CHUNKS // 10
    assert repo.get_point(pid).disks[0].changed_chunks == N_CHUNKS
    assert list(repo.staging.leftovers()) == []
    assert verify(repo).ok
    # a redelivered final request finds its point (the parts are gone by then)
    assert repo.commit_point(point_commit(request("r1", [disk(parts)]))) == pid

    # an incremental: parts and inline entries on top of a base map
    new = make_chunks(repo, 20, tag="v2 ")
    p2 = stage(repo, "r2", new[:15], 4)
    pid2 = repo.commit_point(
        point_commit(request("r2", [disk(p2, entries=new[15:], base=pid)], job="job-2")),
    )
    m2 = repo.load_map(pid2, 2000)
    assert m2.get(3) == new[3][1] and m2.get(17) == new[17][1]
    assert m2.get(2500) == dmap.get(2500)


def test_missing_or_damaged_part_commits_nothing(repo: Repository) -> None:
    entries = make_chunks(repo, 100)
    stage(repo, "r1", entries[:50], 50)  # part 1 never arrives
    with pytest.raises(InvalidRequestError, match="commit part 1 of 2 of disk 2000 is not staged"):
        repo.commit_point(point_commit(request("r1", [disk(2)])))
    assert repo.points() == []
    part0 = repo.path / "staging" / request_dir_name("r1") / "disk-2000.part-0"
    data = bytearray(part0.read_bytes())
    data[20] ^= 1
    part0.write_bytes(bytes(data))
    repo.stage_commit_part("r1", 2000, 1, pack_entries(entries[50:]))
    with pytest.raises(CorruptObjectError, match=r"commit part 0 of 2 of disk 2000.*checksum"):
        repo.commit_point(point_commit(request("r1", [disk(2)])))
    assert repo.points() == []
    # a part naming a chunk that is not stored: the usual missing-chunk refusal
    repo.stage_commit_part("r1", 2000, 0, pack_entries([(0, b"\x07" * 32)]))
    with pytest.raises(Exception, match="not in the repository"):
        repo.commit_point(point_commit(request("r1", [disk(2)])))
    assert repo.points() == []
    with pytest.raises(InvalidRequestError, match="packed entries: truncated"):
        repo.stage_commit_part("r1", 2000, 0, b"\x00" * 5)
    with pytest.raises(InvalidRequestError, match="outside the disk"):
        repo.stage_commit_part("r3", 2000, 0, pack_entries([(N_CHUNKS, b"")]))
        repo.commit_point(point_commit(request("r3", [disk(1)])))


def test_gc_sweeps_abandoned_parts_after_the_grace(repo: Repository) -> None:
    entries = make_chunks(repo, 30)
    stage(repo, "abandoned", entries, 10)
    stage(repo, "recent", entries, 10)
    d_old = repo.path / "staging" / request_dir_name("abandoned")
    old = time.time() - 3600
    for p in [d_old, *d_old.iterdir()]:
        os.utime(p, (old, old))
    r = gc(repo, grace=600.0)
    assert r.staged_removed == 1
    assert not d_old.exists()
    assert (repo.path / "staging" / request_dir_name("recent")).is_dir()
    # a running job keeps what it staged after its start, even with no grace
    repo.begin_job("job-x")
    time.sleep(0.05)
    stage(repo, "during", entries, 10)
    r = gc(repo, grace=0.0)
    assert r.staged_removed == 1  # "recent": older than the job's start
    assert (repo.path / "staging" / request_dir_name("during")).is_dir()
    repo.end_job("job-x")
    r = gc(repo, grace=0.0)
    assert r.staged_removed == 1
    assert list(repo.staging.leftovers()) == []


# --- the writer service over the real broker -----------------------------------------


@pytest.mark.integration
def test_writer_service_parts_and_markers(repo: Repository, broker: BrokerParams) -> None:
    svc = WriterService(repo, broker, n_shards=2, name="w-parts").start()
    client = CommitClient(broker, "test-parts")
    ask = client.ask
    try:
        rq = client.reply_to
        assert ask(JobMarker("m1", rq, "job-9", "begin"), "m1").ok
        assert [j["job_id"] for j in repo.running_jobs()] == ["job-9"]

        entries = make_chunks(repo, N_CHUNKS)
        rid = uuid.uuid4().hex
        per = 200
        slices = [entries[i : i + per] for i in range(0, N_CHUNKS, per)]
        for n, s in enumerate(slices):
            pk = part_key(rid, 2000, n)
            r = ask(CommitPart(rid, pk, rq, 2000, n, pack_entries(s)), pk)
            assert r.ok and r.request_id == pk, r.error
        reply = ask(request(rid, [disk(len(slices))], reply_to=rq, job="job-9"), rid)
        assert reply.ok, reply.error
        dmap = repo.load_map(reply.point_id, 2000)
        assert [dmap.get(i) for i in (0, 1, 2999)] == [
            entries[i][1] or bytes(32) for i in (0, 1, 2999)
        ]

        # an empty part is valid (a slice of a disk with no entries)
        empty = part_key(rid, 2000, 99)
        assert ask(CommitPart(rid, empty, rq, 2000, 99, b""), empty).ok
        # a commit naming parts nobody staged: refused, and the reply says why
        missing = ask(request("other", [disk(3)], reply_to=rq, job="job-10"), "other")
        assert not missing.ok and "commit part 0 of 3 of disk 2000 is not staged" in missing.error

        assert ask(JobMarker("m2", rq, "job-9", "end"), "m2").ok
        assert repo.running_jobs() == []
    finally:
        client.close()
        svc.close()
