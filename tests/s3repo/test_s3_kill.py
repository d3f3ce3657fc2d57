"""A writer SIGKILLed during a pack upload (real RGW, a real process): no point names a
missing chunk, and the next open from the same cache uploads the abandoned pack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("kill_at", ["packs/", "index/"])
def test_killed_upload_leaves_no_point_and_next_open_recovers(
    s3repo: S3Repo, tmp_path: Path, kill_at: str
) -> None:
    Repository.init(
        s3repo.url, chunk_size=CHUNK, packs=True, pack_size=32 * MiB,
        s3_config=s3repo.config, cache_dir=s3repo.cache(),
    ).close()  # fmt: skip
    img = disk_image(tmp_path / "d.img", [rand() for _ in range(24)] + [None])  # > 5 MiB
    child = subprocess.run(
        [sys.executable, "-m", "tests.s3repo.kill_child", s3repo.url, str(s3repo.config),
         str(s3repo.cache()), str(tmp_path / "d.img"), kill_at],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    # the commit waits for the upload: no point, and no index object names the pack
    elsewhere = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("b"))
    assert elsewhere.points() == []
    assert not list(s3repo.bucket.list("repo/index"))
    assert [p.name for p in (s3repo.cache() / "packs" / "open").iterdir()]  # pack + log left
    # the same cache: the abandoned pack is sealed and uploaded on open
    repo = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache())
    assert not list((s3repo.cache() / "packs" / "open").iterdir())
    assert len(list(s3repo.bucket.list("repo/index"))) == 1
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0)
    assert r.new_chunks == 0 and r.known_chunks == 24  # every chunk was recovered
    fresh = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("c"))
    restore_disk(fresh, r.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
