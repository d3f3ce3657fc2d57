"""prune policies and gc (mark & sweep with running-backup protection) on real files."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from repository.errors import InvalidRequestError, LockedError
from repository.gc import gc, gc_lock
from repository.import_disk import import_disk
from repository.points import Point
from repository.prune import KeepPolicy, plan, prune
from repository.repository import Repository
from repository.verify import verify
from tests.repository.conftest import CS, make_image


def _pt(vm: str, when: str, n: int = 0) -> Point:
    t = datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    return Point(f"{when}-{n}", "j", "", vm, "", vm, b"", "complete", t, t, CS)


def test_plan_keeps_per_period_and_per_vm() -> None:
    pts = [
        _pt("a", "2024-01-01 10:00"),
        _pt("a", "2024-01-01 22:00"),
        _pt("a", "2024-01-02 10:00"),
        _pt("a", "2024-01-03 10:00"),
        _pt("a", "2024-02-15 10:00"),
        _pt("b", "2023-06-01 00:00"),
    ]
    r = plan(pts, KeepPolicy(daily=2, monthly=2))
    kept = {p.id: why for p, why in r.keep}
    # daily: newest per day for the 2 newest days; monthly: newest per month for 2 months
    assert set(kept) == {"2024-02-15 10:00-0", "2024-01-03 10:00-0", "2023-06-01 00:00-0"}
    assert kept["2024-02-15 10:00-0"] == ["daily", "monthly"]
    assert kept["2024-01-03 10:00-0"] == ["daily", "monthly"]
    r = plan(pts, KeepPolicy(last=3))
    assert len(r.remove) == 2 and all(p.vm_uuid == "a" for p in r.remove)
    with pytest.raises(InvalidRequestError, match="no --keep"):
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
    (repo.point_store.find(ids[0]) / "meta").write_bytes(b"junk")
    n = sum(1 for _ in repo.chunks.iter_chunks())
    with pytest.raises(Exception, match="gc stopped, nothing removed"):
        gc(repo, grace=0)
    assert sum(1 for _ in repo.chunks.iter_chunks()) == n
