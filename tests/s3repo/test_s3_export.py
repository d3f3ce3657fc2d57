"""A point of a repository on S3 (the lab's real Ceph RGW) served by `vmbackup export`
(real nbdkit and our plugin, reading chunks with ranged GETs) and read by `vmbackup
files`: the bytes and the files are the point's, and the hold object lives while it
serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbd

from lab.guest_fs import FsPartition, GuestFile, build_image
from repository.import_disk import import_disk
from repository.repository import Repository
from tests.export.conftest import Export
from tests.s3repo.conftest import CHUNK, MiB, S3Repo

NOTES = GuestFile("/home/user/notes.txt", b"kept on S3\n" * 300, 1_780_000_000, 0o640)


def test_export_and_files_of_a_point_on_s3(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = Repository.init(
        s3repo.url, chunk_size=CHUNK, packs=True, pack_size=6 * MiB,
        s3_config=s3repo.config, cache_dir=s3repo.cache(),
    )  # fmt: skip
    img = tmp_path / "d.img"
    build_image(img, [FsPartition("ext4", 8, "root", (NOTES,))], table="gpt")
    point = import_disk(repo, "web1", 2000, img).point_id
    repo.close()
    s3 = ["--s3-config", str(s3repo.config), "--cache-dir", str(s3repo.cache("export"))]
    where = ["--repo", s3repo.url, *s3, "--point", point, "--disk", "2000"]
    ex = Export([*where, "--socket", str(tmp_path / "nbd.sock")])
    try:
        h = nbd.NBD()
        h.connect_uri(ex.uri)
        assert h.pread(h.get_size(), 0) == img.read_bytes()
        h.shutdown()
        holds = [o.name for o in s3repo.bucket.list("repo/holds")]
        assert len(holds) == 1, holds  # prune keeps the point while it is served
    finally:
        assert ex.stop() == 0, ex.stderr
    assert [o.name for o in s3repo.bucket.list("repo/holds")] == []
    # files: the same engine under it, the file as the guest wrote it
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "vmbackup", "files", "get", *where, "--json",
         "--partition", "1", NOTES.path, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    got = out / "notes.txt" if out.is_dir() else out
    assert got.read_bytes() == NOTES.data
    assert int(got.stat().st_mtime) == NOTES.mtime and got.stat().st_mode & 0o777 == 0o640
