"""Holds on points (repository/holds.py) on a real repository: prune keeps a held point
and removes it once released; a stale hold (its holder was killed) is ignored and gc
removes it; a hold that appears while prune runs wins; a hold on a missing point is
refused and leaves nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from repository import holds
from repository.errors import PointNotFoundError
from repository.gc import gc
from repository.holds import HoldInfo
from repository.import_disk import import_disk
from repository.prune import prune
from repository.repository import Repository
from repository.retention import KeepPolicy
from tests.repository.conftest import make_image


def _points(repo: Repository, tmp: Path, n: int) -> list[str]:
    """``n`` points of one VM disk, oldest first."""
    img = tmp / "d.img"
    out = []
    for i in range(n):
        make_image(img, "rzt", seed=i)
        out.append(import_disk(repo, "web1", 2000, img).point_id)
    return out


def _age(repo: Repository, name: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(repo.storage.path(name), (t, t))


def test_prune_keeps_a_held_point_and_removes_it_once_released(
    repo: Repository, tmp_path: Path
) -> None:
    old, _new = _points(repo, tmp_path, 2)
    hold = repo.hold_point(old, "export of disk 2000")
    result = prune(repo, KeepPolicy(last=1))
    kept = {d.point.id: d.reasons for d in result.keep}
    assert old in kept
    assert any("held by export of disk 2000" in r and str(os.getpid()) in r for r in kept[old])
    assert old in {p.id for p in repo.points()}

    hold.release()
    assert repo.point_holds() == []
    result = prune(repo, KeepPolicy(last=1))
    assert [d.point.id for d in result.remove] == [old]
    assert old not in {p.id for p in repo.points()}


def test_a_stale_hold_is_ignored_by_prune_and_removed_by_gc(
    repo: Repository, tmp_path: Path
) -> None:
    old, _new = _points(repo, tmp_path, 2)
    hold = repo.hold_point(old, "export of disk 2000")  # its holder "killed": never released
    _age(repo, hold.name, holds.STALE + 60)
    result = prune(repo, KeepPolicy(last=1), dry_run=True)
    assert [d.point.id for d in result.remove] == [old]
    assert len(result.stale_holds) == 1 and hold.name in result.stale_holds[0]

    dry = gc(repo, grace=0.0, dry_run=True)
    assert len(dry.stale_holds_removed) == 1 and repo.storage.exists(hold.name)
    report = gc(repo, grace=0.0)
    assert len(report.stale_holds_removed) == 1 and old in report.stale_holds_removed[0]
    assert not repo.storage.exists(hold.name)


def test_a_hold_written_while_prune_runs_wins(repo: Repository, tmp_path: Path) -> None:
    """An export that starts after prune read the holds: prune looks again before it
    removes each point, so the point stays (the export's own check of the point, after
    its hold, covers a removal that came first)."""
    old, _new = _points(repo, tmp_path, 2)

    class ExportStartsDuringPrune:
        """The repository, with an export starting right after prune's first look."""

        def __init__(self) -> None:
            self.looks = 0

        def __getattr__(self, name: str) -> object:
            return getattr(repo, name)

        def point_holds(self) -> list[HoldInfo]:
            seen = repo.point_holds()
            self.looks += 1
            if self.looks == 1:
                repo.hold_point(old, "export of disk 2000")
            return seen

    result = prune(ExportStartsDuringPrune(), KeepPolicy(last=1))  # type: ignore[arg-type]
    assert result.remove == []
    (d,) = [d for d in result.decisions if d.point.id == old]
    assert d.keep and "held by export" in d.reasons[0]
    assert old in {p.id for p in repo.points()}


def test_a_hold_on_a_missing_point_is_refused_and_leaves_nothing(repo: Repository) -> None:
    with pytest.raises(PointNotFoundError):
        repo.hold_point("20240101T000000Z-00000000", "export of disk 2000")
    assert repo.point_holds() == []


def test_a_live_hold_is_refreshed_and_rewritten_if_removed(
    repo: Repository, tmp_path: Path
) -> None:
    (point,) = _points(repo, tmp_path, 1)
    hold = repo.hold_point(point, "export of disk 2000")
    _age(repo, hold.name, holds.STALE + 60)
    hold.start_refresh(every=0.05)
    try:
        deadline = time.monotonic() + 30
        while repo.storage.stat(hold.name).mtime < time.time() - 60:
            assert time.monotonic() < deadline, "the hold was never refreshed"
            time.sleep(0.05)
        repo.storage.delete(hold.name)  # e.g. a gc that judged it stale
        while not repo.storage.exists(hold.name):
            assert time.monotonic() < deadline, "the hold was not written again"
            time.sleep(0.05)
        (info,) = repo.point_holds()
        assert info.point_id == point and info.pid == os.getpid()
    finally:
        hold.release()
    assert repo.point_holds() == []
