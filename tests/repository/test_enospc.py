"""A full file system (small tmpfs): clear error, nothing committed half, nothing damaged."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.errors import RepositoryFullError
from repository.import_disk import import_disk
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from tests.repository.conftest import no_point_leftovers

CS = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    repo = Repository.init(small_fs / "repo", chunk_size=CS, compression_level=1)
    rnd = random.Random(7)
    ok_img = tmp_path / "ok.img"
    ok_data = rnd.randbytes(8 * CS)
    ok_img.write_bytes(ok_data)
    first = import_disk(repo, "vm", 1, ok_img)
    big = tmp_path / "big.img"
    big.write_bytes(rnd.randbytes(40 * CS))  # 10 MiB of random data: cannot fit
    with pytest.raises(
        RepositoryFullError, match=r"no space left on device while writing (chunk|pack)"
    ):
        import_disk(repo, "vm", 1, big)
    # nothing half-written is left visible, the earlier point is intact
    assert [p.id for p in repo.points()] == [first.point_id]
    assert not list(repo.path.rglob(".tmp-*"))  # chunk files', packs' and points' temps
    assert no_point_leftovers(repo)
    assert verify(repo).ok
    restore_disk(repo, first.point_id, 1, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == ok_data
    assert repo.running_jobs() == []  # the failed import cleaned up its marker


def test_enospc_on_commit(small_fs: Path, tmp_path: Path) -> None:
    """Fill the disk between storing chunks and committing: the point is not created."""
    repo = Repository.init(small_fs / "repo", chunk_size=CS, compression_level=1)
    data = random.Random(1).randbytes(CS)
    cid = repo.chunk_id(data)
    repo.store_chunk(cid, CS, False, data)
    filler = small_fs / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\xff" * 65536)
            fh.flush()
    req = PointCommit(
        job_id="j",
        vcenter="",
        vm_uuid="vm",
        vm_moref="",
        vm_name="vm",
        vm_config=os.urandom(64 * 1024),
        status="complete",
        snapshot_time=5.0,
        failed_disks=[],
        disks=[
            DiskChanges(
                key=1,
                capacity=4096 * CS,
                change_id="",
                base_point_id="",
                entries=[[0, cid]],
                info={},
            )
        ],
    )
    with pytest.raises(RepositoryFullError, match="no space left"):
        repo.commit_point(req)
    assert repo.points() == [] and no_point_leftovers(repo)
    filler.unlink()
    assert repo.commit_point(req)
    assert verify(repo).ok
