"""prune policies and gc (mark & sweep with running-backup protection) on real files."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.job_ids import new_job_id
from repository.errors import InvalidRequestError, LockedError
from repository.gc import gc, gc_lock
from repository.import_disk import import_disk
from repository.points import Point
from repository.prune import KeepPolicy, prune
from repository.repository import Repository
from repository.restore import restore_disk
from repository.retention import CLOCK_SKEW, decide
from repository.verify import verify
from tests.repository.conftest import CS, make_image, point_file


@pytest.fixture
def repo(v2_repo: Repository) -> Repository:
    """Format 2: these tests age chunk files' mtimes (gc on packs: test_packs.py)."""
    return v2_repo


def _pt(vm: str, when: str, n: int = 0) -> Point:
    t = datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    return Point(f"{when}-{n}", "j", "", vm, "", vm, b"", "complete", t, t, CS)


def test_decide_keeps_per_period_and_per_vm() -> None:
    pts = [
        _pt("a", "2024-01-01 10:00"),
        _pt("a", "2024-01-01 22:00"),
        _pt("a", "2024-01-02 10:00"),
        _pt("a", "2024-01-03 10:00"),
        _pt("a", "2024-02-15 10:00"),
        _pt("b", "2023-06-01 00:00"),
    ]
    now = time.time()
    decisions = decide(pts, KeepPolicy(daily=2, monthly=2), now)
    kept = {d.point.id: d.reasons for d in decisions if d.keep}
    # daily: newest per day for the 2 newest days; monthly: newest per month for 2 months
    assert set(kept) == {"2024-02-15 10:00-0", "2024-01-03 10:00-0", "2023-06-01 00:00-0"}
    assert kept["2024-02-15 10:00-0"] == ("daily 2024-02-15", "monthly 2024-02")
    assert kept["2024-01-03 10:00-0"] == ("daily 2024-01-03", "monthly 2024-01")
    removed = [d.point for d in decide(pts, KeepPolicy(last=3), now) if not d.keep]
    assert len(removed) == 2 and all(p.vm_uuid == "a" for p in removed)
    with pytest.raises(InvalidRequestError, match="no keep rule"):
        KeepPolicy()
    with pytest.raises(InvalidRequestError, match="negative"):
        KeepPolicy(last=-1)


def _three_points(repo: Repository, tmp_path: Path) -> list[str]:
    img = tmp_path / "i.img"
    ids = []
    for seed in range(3):
        make_image(img, "rrt", seed=seed)
        ids.append(import_disk(repo, "vm", 1, img, snapshot_time=1000.0 + seed).point_id)
    return ids


def _age_chunks(repo: Repository, seconds: float) -> None:
    t = time.time() - seconds
    for cf in repo.chunks.iter_chunks():
        os.utime(cf.path, (t, t))


def test_prune_then_gc_frees_only_unreferenced(repo: Repository, tmp_path: Path) -> None:
    ids = _three_points(repo, tmp_path)
    dry = prune(repo, KeepPolicy(last=1), dry_run=True)
    assert len(dry.remove) == 2 and len(repo.points()) == 3
    prune(repo, KeepPolicy(last=1))
    assert [p.id for p in repo.points()] == [ids[2]]
    before = sum(1 for _ in repo.chunks.iter_chunks())
    # default grace protects just-written chunks: nothing freed yet
    assert gc(repo).chunks_removed == 0
    _age_chunks(repo, 3600)
    r = gc(repo, grace=60)
    assert r.chunks_removed == before - 3 and r.bytes_freed > 0 and not r.missing
    assert verify(repo).ok


def test_gc_spares_chunks_of_running_backup(repo: Repository, tmp_path: Path) -> None:
    ids = _three_points(repo, tmp_path)
    for p in ids:
        repo.delete_point(p)
    repo.begin_job("job-running")
    # a backup that started before these chunks were unreferenced may dedup against them
    time.sleep(0.05)
    # the job deduplicated against these chunks (touched after it started) ...
    assert all(repo.has_chunks([cf.id for cf in repo.chunks.iter_chunks()]))
    time.sleep(0.05)
    r = gc(repo, grace=0)
    assert r.chunks_removed == 0 and r.chunks_kept_young == r.chunks_seen > 0
    repo.end_job("job-running")
    time.sleep(0.05)
    r = gc(repo, grace=0)
    assert r.chunks_removed == r.chunks_seen > 0


def test_gc_exclusive_and_stale_markers(repo: Repository) -> None:
    with gc_lock(repo), pytest.raises(LockedError, match="another gc"):
        gc(repo)
    repo.begin_job("crashed")
    marker = repo.running_jobs()[0]["marker"]
    Path(marker).write_text('{"job_id": "crashed", "started": %f}' % (time.time() - 4 * 86400))
    r = gc(repo)
    assert r.stale_markers and "crashed" in r.stale_markers[0]


def test_gc_refuses_on_unreadable_point(repo: Repository, tmp_path: Path) -> None:
    ids = _three_points(repo, tmp_path)
    (point_file(repo, ids[0], "meta")).write_bytes(b"junk")
    n = sum(1 for _ in repo.chunks.iter_chunks())
    with pytest.raises(Exception, match="gc stopped, nothing removed"):
        gc(repo, grace=0)
    assert sum(1 for _ in repo.chunks.iter_chunks()) == n


def _policy_points(repo: Repository, tmp_path: Path, policy: str, vm: str, n: int) -> list[str]:
    """``n`` backups of one VM by jobs of ``policy``, a day apart, each an incremental on
    the one before (import_disk bases on the VM's latest point)."""
    img = tmp_path / f"{policy}-{vm}.img"
    out = []
    for i in range(n):
        make_image(img, "rrtz", seed=hash((policy, vm, i)) & 0xFFFF)
        when = datetime(2026, 11, 1 + i, 22, tzinfo=UTC)
        r = import_disk(
            repo, vm, 2000, img, job_id=new_job_id(policy, when), snapshot_time=when.timestamp()
        )
        out.append(r.point_id)
    return out


def test_prune_of_a_policy_touches_only_its_points(repo: Repository, tmp_path: Path) -> None:
    gold = _policy_points(repo, tmp_path, "gold", "web", 3)
    silver = _policy_points(repo, tmp_path, "silver", "web", 2)  # the same VM
    other = import_disk(repo, "web", 2000, tmp_path / "gold-web.img").point_id  # no policy's
    dry = prune(repo, KeepPolicy(last=1), policy="gold", dry_run=True)
    assert {d.point.id for d in dry.decisions} == set(gold)
    assert [d.point.id for d in dry.remove] == [gold[1], gold[0]]  # newest first
    assert len(repo.points()) == 6
    prune(repo, KeepPolicy(last=1), policy="gold")
    assert {p.id for p in repo.points()} == {gold[2], *silver, other}
    assert verify(repo).ok


def test_prune_never_removes_points_of_a_running_job(repo: Repository, tmp_path: Path) -> None:
    gold = _policy_points(repo, tmp_path, "gold", "web", 3)
    running = repo.get_point(gold[1]).job_id
    repo.begin_job(running)  # still running (its marker is there)
    r = prune(repo, KeepPolicy(last=1), policy="gold")
    # every point was committed right now: within the clock skew allowed between writer
    # hosts of the marker's start, so any of them may be what the job bases on
    assert not r.remove
    # the job started well after the points were committed (its marker says so)
    marker = Path(repo.running_jobs()[0]["marker"])
    later = time.time() + 3 * CLOCK_SKEW
    marker.write_text(json.dumps({"job_id": running, "started": later}))
    os.utime(marker, (later, later))
    r = prune(repo, KeepPolicy(last=1), policy="gold")
    why = {d.point.id: d.text() for d in r.decisions}
    assert why[gold[1]] == f"keep (running job {running})"
    # the newest existed when the job started: it may base on it; the oldest goes
    assert why[gold[2]] == f"keep (running job {running} may base on it; last #1)"
    assert [d.point.id for d in r.remove] == [gold[0]]
    assert {p.id for p in repo.points()} == {gold[1], gold[2]}
    repo.end_job(running)
    prune(repo, KeepPolicy(last=1), policy="gold")
    assert [p.id for p in repo.points()] == [gold[2]]


def test_stale_markers_protect_nothing(repo: Repository, tmp_path: Path) -> None:
    gold = _policy_points(repo, tmp_path, "gold", "web", 2)
    job = repo.get_point(gold[0]).job_id
    repo.begin_job(job)
    marker = repo.running_jobs()[0]["marker"]
    Path(marker).write_text(json.dumps({"job_id": job, "started": time.time() - 4 * 86400}))
    r = prune(repo, KeepPolicy(last=1), policy="gold")
    assert r.stale_markers and job in r.stale_markers[0]
    assert [p.id for p in repo.points()] == [gold[1]]


def test_removing_the_base_of_a_kept_incremental_loses_nothing(
    repo: Repository, tmp_path: Path
) -> None:
    """Maps are synthetic fulls: the kept newest point restores bit-exact after its base
    (and the base's base) are pruned and their chunks collected."""
    gold = _policy_points(repo, tmp_path, "gold", "web", 3)
    newest = repo.get_point(gold[2])
    assert newest.disks[0].base_point_id == gold[1]  # an incremental
    assert 0 < newest.disks[0].changed_chunks < newest.disks[0].chunks
    want = (tmp_path / "gold-web.img").read_bytes()  # the image of the last backup
    prune(repo, KeepPolicy(last=1), policy="gold")
    assert [p.id for p in repo.points()] == [gold[2]]
    _age_chunks(repo, 3600)
    assert gc(repo, grace=60).chunks_removed > 0
    out = tmp_path / "restored"
    restore_disk(repo, gold[2], 2000, out)
    assert out.read_bytes() == want
    assert verify(repo).ok
