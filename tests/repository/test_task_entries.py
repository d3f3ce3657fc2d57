"""Task entries staged by proxies and named by a commit: the repository side on real
files, the coverage check as a property, and the writer service on the real broker."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.amqp import BrokerParams
from common.messages import (
    CommitRequest,
    DiskCommit,
    StagedTask,
    TaskEntries,
)
from common.packed_entries import entries_digest, pack_entries
from repository.errors import CorruptObjectError, InvalidRequestError, RepositoryError
from repository.gc import gc
from repository.point_commit import DiskChanges, PointCommit, StagedTaskRef
from repository.point_committer import IndexRuns, check_coverage, planned_runs
from repository.repository import Repository
from repository.staging import job_dir_name
from repository.verify import verify
from repository_writer.service import WriterService
from tests.repository.commit_client import CommitClient
from tests.repository.conftest import CS, flip_bit

N = 64  # chunks of the test disk
VM = "vm-uuid-1"
Entries = list[tuple[int, bytes]]


def make_entries(repo: Repository, n: int, tag: str = "") -> Entries:
    """``n`` chunks stored; every 8th is a zero chunk."""
    items, entries = [], []
    for i in range(n):
        if i % 8 == 7:
            entries.append((i, b""))
            continue
        data = f"{tag}chunk {i}".encode() * 8
        cid = repo.chunk_id(data)
        items.append((cid, data))
        entries.append((i, cid))
    repo.store_raw_chunks(items)
    return entries


def stage_tasks(repo: Repository, job: str, entries: Entries, per: int) -> list[StagedTaskRef]:
    """Stage ``entries`` as tasks of ``per`` chunks, as proxies do; their results' refs."""
    refs = []
    for n, start in enumerate(range(0, len(entries), per)):
        part = entries[start : start + per]
        packed = pack_entries(part)
        assert repo.stage_task_entries(job, VM, 2000, f"t{n}", packed) == len(part)
        refs.append(StagedTaskRef(f"t{n}", entries_digest(packed), len(part)))
    return refs


def commit(
    job: str, tasks: list[StagedTaskRef], *, planned: list[tuple[int, int]] | None, **disk: object
) -> PointCommit:
    d = DiskChanges(key=2000, capacity=N * CS, tasks=tasks, planned=planned)
    return PointCommit(
        job_id=job,
        vm_uuid=VM,
        status="complete",
        snapshot_time=1_700_000_000.0,
        disks=[replace(d, **disk)],  # type: ignore[arg-type]
    )


WHOLE = [(0, N * CS)]


def test_staged_tasks_make_the_map_and_are_removed(repo: Repository) -> None:
    entries = make_entries(repo, N)
    refs = stage_tasks(repo, "job-1", entries, 10)
    pid = repo.commit_point(commit("job-1", refs, planned=WHOLE))
    dmap = repo.load_map(pid, 2000)
    assert [dmap.get(i) for i in range(N)] == [c or bytes(32) for _i, c in entries]
    assert repo.get_point(pid).disks[0].changed_chunks == N
    assert list(repo.staging.leftovers()) == []  # removed with the commit
    assert verify(repo).ok
    # a redelivered commit finds its point although the staged entries are gone
    assert repo.commit_point(commit("job-1", refs, planned=WHOLE)) == pid


def test_an_incremental_names_staged_tasks_on_top_of_its_base(repo: Repository) -> None:
    base = repo.commit_point(
        commit("job-1", stage_tasks(repo, "job-1", make_entries(repo, N), 16), planned=WHOLE)
    )
    changed = [(i, c) for i, c in make_entries(repo, N, tag="v2 ") if 20 <= i < 30]
    refs = stage_tasks(repo, "job-2", changed, 4)
    pid = repo.commit_point(
        replace(
            commit("job-2", refs, planned=[(20 * CS, 10 * CS)], base_point_id=base),
            snapshot_time=1_700_000_100.0,
        )
    )
    old, new = repo.load_map(base, 2000), repo.load_map(pid, 2000)
    assert [new.get(i) for i in range(20, 30)] == [c or bytes(32) for _i, c in changed]
    assert [new.get(i) for i in range(20)] == [old.get(i) for i in range(20)]
    assert repo.get_point(pid).disks[0].changed_chunks == 10


def test_entries_restaged_after_the_result_are_refused(repo: Repository) -> None:
    """A task run again (or a forger with the proxy's account) replaces its staged entries
    after its result was reported: the commit names the reported digest and refuses."""
    entries = make_entries(repo, N)
    refs = stage_tasks(repo, "job-1", entries, 32)
    forged = [(i, b"") for i, _c in entries[:32]]  # every chunk of the task zeroed
    repo.stage_task_entries("job-1", VM, 2000, "t0", pack_entries(forged))
    with pytest.raises(InvalidRequestError, match="not the ones its result reported"):
        repo.commit_point(commit("job-1", refs, planned=WHOLE))
    assert repo.points() == []


def test_wrong_count_missing_task_and_other_vm_are_refused(repo: Repository) -> None:
    entries = make_entries(repo, N)
    refs = stage_tasks(repo, "job-1", entries, 32)
    with pytest.raises(InvalidRequestError, match="its result reported 33"):
        repo.commit_point(commit("job-1", [replace(refs[0], count=33), refs[1]], planned=WHOLE))
    ghost = StagedTaskRef("t9", refs[0].digest, 32)
    with pytest.raises(InvalidRequestError, match="task 't9' of disk 2000 are not staged"):
        repo.commit_point(commit("job-1", [refs[0], ghost], planned=WHOLE))
    # staged for this VM: another VM's commit cannot name them
    with pytest.raises(InvalidRequestError, match="not staged"):
        repo.commit_point(replace(commit("job-1", refs, planned=WHOLE), vm_uuid="vm-uuid-2"))
    assert repo.points() == []


@pytest.mark.parametrize(
    ("planned", "needle"),
    [
        ([(0, (N - 1) * CS)], "do not cover"),  # one too many
        ([(0, N * CS), (N * CS, CS)], "past its end"),
        ([(0, 2 * CS), (CS, CS)], "overlap"),
        ([(5, CS)], "not chunk aligned"),
    ],
)
def test_entries_must_cover_exactly_the_plan(
    repo: Repository, planned: list[tuple[int, int]], needle: str
) -> None:
    refs = stage_tasks(repo, "job-1", make_entries(repo, N), 16)
    with pytest.raises(InvalidRequestError, match=needle):
        repo.commit_point(commit("job-1", refs, planned=planned))
    assert repo.points() == []


def test_two_tasks_naming_one_chunk_are_refused(repo: Repository) -> None:
    entries = make_entries(repo, N)
    refs = stage_tasks(repo, "job-1", entries, 32)
    dup = pack_entries(entries[31:33])  # chunk 31 again
    repo.stage_task_entries("job-1", VM, 2000, "dup", dup)
    extra = StagedTaskRef("dup", entries_digest(dup), 2)
    with pytest.raises(InvalidRequestError, match="chunk 31 is named twice"):
        repo.commit_point(commit("job-1", [*refs, extra], planned=WHOLE))


@pytest.mark.parametrize("encrypted", [False, True])
def test_staged_entries_changed_on_disk_are_caught(
    repo: Repository, enc_repo: Repository, encrypted: bool
) -> None:
    r = enc_repo if encrypted else repo
    refs = stage_tasks(r, "job-1", make_entries(r, N), 32)
    files = sorted((r.path / "staging" / job_dir_name("job-1", VM)).iterdir())
    assert len(files) == len(refs) and all(f.name.startswith("disk-2000.task-") for f in files)
    target = files[0]
    flip_bit(target, 8 + 13 + 5)  # inside the first id, past magic and run header
    want = "fails its authentication" if encrypted else "checksum mismatch"
    with pytest.raises(CorruptObjectError, match=want):
        r.commit_point(commit("job-1", refs, planned=WHOLE))
    assert r.points() == []


def test_abandoned_task_entries_are_removed_by_gc(repo: Repository) -> None:
    stage_tasks(repo, "job-old", make_entries(repo, 8), 4)
    d = repo.path / "staging" / job_dir_name("job-old", VM)
    old = time.time() - 3600
    for p in [d, *d.iterdir()]:
        os.utime(p, (old, old))
    stage_tasks(repo, "job-new", make_entries(repo, 8), 4)
    assert gc(repo, grace=600.0).staged_removed == 1
    assert not d.exists() and (repo.path / "staging" / job_dir_name("job-new", VM)).is_dir()


def test_bad_staging_input_is_refused(repo: Repository) -> None:
    good = pack_entries([(0, b"")])
    with pytest.raises(InvalidRequestError, match="truncated"):
        repo.stage_task_entries("job-1", VM, 2000, "t0", good[:-1])
    with pytest.raises(InvalidRequestError, match="without a task id"):
        repo.stage_task_entries("job-1", VM, 2000, "", good)
    with pytest.raises(RepositoryError, match="vm"):
        repo.stage_task_entries("job-1", "../etc", 2000, "t0", good)


# --- the coverage check, as a property ---------------------------------------------------


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Planned chunk-aligned ranges of a disk and their chunks cut into tasks."""
    n = draw(st.integers(1, 200))
    picked = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    ranges: list[tuple[int, int]] = []
    for i in picked:
        if ranges and ranges[-1][0] + ranges[-1][1] == i * CS:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + CS)
        else:
            ranges.append((i * CS, CS))
    shuffled = draw(st.permutations(picked))
    cuts = sorted(draw(st.sets(st.integers(1, len(picked)), max_size=8)))
    tasks = [
        sorted(shuffled[a:b])
        for a, b in zip([0, *cuts], [*cuts, len(picked)], strict=True)
        if a < b
    ]
    return ranges, tasks


def named(tasks: list[list[int]]) -> list[tuple[int, int]]:
    runs = IndexRuns()
    for t in tasks:
        for i in t:
            runs.add(i)
    return runs.done()


@given(plans(), st.integers(0, 10**6))
@settings(max_examples=300)
def test_coverage_accepts_every_split_and_refuses_a_lost_or_extra_chunk(
    plan: tuple[list[tuple[int, int]], list[list[int]]], pick: int
) -> None:
    ranges, tasks = plan
    want = planned_runs(ranges, CS, 10**6, 2000)
    check_coverage(named(tasks), want, 2000)
    flat = sorted(i for t in tasks for i in t)
    victim = flat[pick % len(flat)]
    lost = [[i for i in t if i != victim] for t in tasks]
    with pytest.raises(InvalidRequestError):
        check_coverage(named(lost), want, 2000)
    with pytest.raises(InvalidRequestError):
        check_coverage(named([*tasks, [victim]]), want, 2000)  # named twice
    outside = max(flat) + 1
    with pytest.raises(InvalidRequestError):
        check_coverage(named([*tasks, [outside]]), want, 2000)


# --- the writer service over the real broker ---------------------------------------------


@pytest.mark.integration
def test_writer_stages_task_entries_and_commits_them(
    repo: Repository, broker: BrokerParams
) -> None:
    svc = WriterService(repo, broker, n_shards=2, name="w-tasks").start()
    client = CommitClient(broker, "test-tasks")
    ask = client.ask
    try:
        rq = client.reply_to
        entries = make_entries(repo, N)
        tasks = []
        for n, start in enumerate(range(0, N, 20)):
            packed = pack_entries(entries[start : start + 20])
            key = uuid.uuid4().hex
            r = ask(TaskEntries(key, rq, "job-w", VM, 2000, f"t{n}", packed), key)
            assert r.ok and r.request_id == key, r.error
            tasks.append(
                StagedTask(f"t{n}", entries_digest(packed), len(entries[start : start + 20]))
            )
        # indexes past the largest disk a commit may name: refused with the reason
        key = uuid.uuid4().hex
        far = pack_entries([(2**50, b"")])
        bad = ask(TaskEntries(key, rq, "job-w", VM, 2000, "far", far), key)
        assert not bad.ok and "beyond the largest disk" in bad.error

        disk = DiskCommit(2000, N * CS, "", "", [], {}, 0, tasks, [(0, N * CS)])
        req = CommitRequest(
            "c-1", rq, "job-w", "vc", VM, "vm-1", "vm", b"{}", "complete", 5.0, [disk], []
        )
        reply = ask(req, "c-1")
        assert reply.ok, reply.error
        dmap = repo.load_map(reply.point_id, 2000)
        assert [dmap.get(i) for i in range(N)] == [c or bytes(32) for _i, c in entries]
        assert not (repo.path / "staging" / job_dir_name("job-w", VM)).exists()
    finally:
        client.close()
        svc.close()
