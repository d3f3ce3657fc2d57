"""SIGKILL a writing process at random moments, many times; verify after each kill.

The child imports images (new and deduplicated chunks, incremental points), prunes
and runs gc in a loop. After every kill, verify must find every committed point
complete and every chunk intact, and the repository must keep working. The second test
does the same on a small real file system that keeps filling up (ENOSPC mid-write), with
the child pruning to make room each time.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from tests.small_fs import MiB, grow, small_filesystem

ROOT = Path(__file__).resolve().parents[2]
KILLS = 25


@pytest.mark.slow
def test_sigkill_never_corrupts(tmp_path: Path) -> None:
    repo = Repository.init(
        tmp_path / "repo", chunk_size=256 * 1024, compression_level=1, packs=False
    )
    _kill_at_random(repo, tmp_path, KILLS, rnd=random.Random(1234))


@pytest.mark.slow
def test_sigkill_never_corrupts_packs(tmp_path: Path) -> None:
    # small packs: kills land in appends, seals, index merges and gc's rewrites
    repo = Repository.init(
        tmp_path / "repo", chunk_size=256 * 1024, compression_level=1, packs=True, pack_size=2**20
    )
    _kill_at_random(repo, tmp_path, KILLS, rnd=random.Random(4321))
    assert list((repo.path / "packs").glob("??/*")), "no pack was ever sealed"


@pytest.mark.slow
def test_sigkill_on_a_filling_disk_never_corrupts(tmp_path: Path) -> None:
    full_log = tmp_path / "full.log"
    with small_filesystem(tmp_path / "repo", 8 * MiB):
        # chunk files: on packs the gc that should make room rewrites packs first, which
        # needs room itself, and fails with RepositoryFullError (pack_gc: to be fixed)
        repo = Repository.init(
            tmp_path / "repo", chunk_size=256 * 1024, compression_level=1, packs=False
        )
        _kill_at_random(repo, tmp_path, 15, rnd=random.Random(99), full_log=full_log)
        # the disk did fill, again and again, while the kills landed
        assert full_log.exists() and len(full_log.read_text().splitlines()) >= 3


def _kill_at_random(
    repo: Repository,
    tmp_path: Path,
    kills: int,
    *,
    rnd: random.Random,
    full_log: Path | None = None,
) -> None:
    points_seen = 0
    for n in range(kills):
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.repository.crash_child",
                str(repo.path),
                str(tmp_path / f"img{n}"),
                str(n),
                *([str(full_log)] if full_log else []),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == b"ready\n", child.stderr.read() if child.stderr else b""
        time.sleep(rnd.uniform(0.0, 0.6 if full_log is None else 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else b""
        report = verify(repo)
        assert report.ok, [str(p) for p in report.problems]
        points_seen = max(points_seen, report.points)
    assert points_seen > 0  # the kills did land after real work
    if full_log is not None:  # make room, as an operator of a full repository would
        grow(repo.path, 64 * MiB)
    # the repository still works: import and restore after all those crashes
    img = tmp_path / "final.img"
    data = random.Random(5).randbytes(3 * 256 * 1024 + 17)
    img.write_bytes(data)
    r = import_disk(repo, "vm0", 2000, img)
    restore_disk(repo, r.point_id, 2000, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
