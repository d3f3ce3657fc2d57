"""`repo copy` (repository/copy.py) with either side on S3, the lab's real Ceph RGW: local
-> S3 -> S3 (another bucket, another config: the TLS endpoint) -> local, each copy
restoring bit-exact; a second copy of an unchanged repository writes no pack, index or
point object (PUTs counted on the target's real client)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repository.copy import copy_points
from repository.copy_selection import CopyFilter
from repository.repository import Repository
from repository.s3_storage import S3Storage
from repository.verify import verify
from tests.repository.test_repo_copy import assert_same_points, fill, new_repo
from tests.rgw import Rgw, drop_bucket
from tests.s3repo.conftest import CHUNK, MiB, S3Repo


@pytest.fixture
def other_bucket(rgw: Rgw) -> Iterator[S3Storage]:
    s = rgw.new_bucket()
    yield s
    drop_bucket(s)


def tls_config(rgw: Rgw, path: Path) -> Path:
    """A second S3 config: the gateway's https endpoint, verified against the lab's CA."""
    path.write_text(
        f'endpoint = "{rgw.info.tls_endpoint}"\n'
        f'region = "{rgw.info.region}"\n'
        f'credentials_file = "{rgw.credentials_file}"\n'
        f'ca_file = "{rgw.info.ca_file}"\n'
        "part_size_mib = 5\n"
    )
    return path


def s3_init(url: str, config: Path, cache: Path, passphrase: str | None = None) -> Repository:
    return Repository.init(
        url, chunk_size=CHUNK, compression_level=1, passphrase=passphrase, kdf_n=1024,
        pack_size=4 * MiB, s3_config=config, cache_dir=cache,
    )  # fmt: skip


class PutCounter:
    """Objects a repository's S3 client writes (PUTs, multipart parts, copies), by the
    name's first directory (packs, index, points, running...): botocore's own event
    hook on the real client, before each request is built."""

    def __init__(self, repo: Repository) -> None:
        self.by_dir: Counter[str] = Counter()
        storage = repo.storage
        assert isinstance(storage, S3Storage)
        self.skip = len(storage.key("x")) - 1  # the repository's prefix
        # the client is shared by storages of the same endpoint and keys: this one's only
        self.bucket, self.prefix = storage.loc.bucket, storage.key("x")[: self.skip]
        for op in ("PutObject", "UploadPart", "CopyObject"):
            storage._client.meta.events.register(f"before-parameter-build.s3.{op}", self._count)

    def _count(self, params: dict[str, Any], **_kw: object) -> None:
        key = str(params["Key"])
        if params.get("Bucket") == self.bucket and key.startswith(self.prefix):
            self.by_dir[key[self.skip :].split("/")[0]] += 1

    def writes(self, *dirs: str) -> int:
        return sum(self.by_dir[d] for d in dirs)


def test_local_to_s3_to_other_bucket_to_local_restores_bit_exact(
    s3repo: S3Repo, other_bucket: S3Storage, rgw: Rgw, tmp_path: Path
) -> None:
    a = new_repo(tmp_path / "a")
    fill(a, tmp_path, vms=("web", "db"), points=2)
    total = len(a.points())
    b = s3_init(s3repo.url, s3repo.config, s3repo.cache("b"), passphrase="site b")
    r = copy_points(a, b, CopyFilter())
    b.close()
    assert len(r.copied) == total and not r.failed and r.stats.chunks_sent > 0
    # a fresh cache sees it all from the bucket
    b = Repository.open(s3repo.url, "site b", s3_config=s3repo.config, cache_dir=s3repo.cache("b2"))
    assert assert_same_points(a, b, tmp_path) == total
    assert verify(b).ok
    assert b.running_jobs() == []

    # S3 -> S3: another bucket, another config (https, the lab's CA), not encrypted
    c_url = f"s3://{other_bucket.loc.bucket}/copy"
    c_cfg = tls_config(rgw, tmp_path / "tls.toml")
    c = s3_init(c_url, c_cfg, s3repo.cache("c"))
    r = copy_points(b, c, CopyFilter())
    c.close()
    assert len(r.copied) == total and not r.failed
    assert assert_same_points(a, c, tmp_path) == total

    # an unchanged source copied again: no pack, index or point object written
    c = Repository.open(c_url, s3_config=c_cfg, cache_dir=s3repo.cache("c"))
    puts = PutCounter(c)
    again = copy_points(b, c, CopyFilter())
    c.close()
    assert (len(again.copied), len(again.present)) == (0, total)
    assert again.stats.chunks_sent == 0 and again.stats.bytes_sent == 0
    assert puts.writes("packs", "index", "points", "staging") == 0, puts.by_dir
    assert puts.writes("running") == 1  # the copy's running marker, removed at its end

    # S3 -> local, a format-2 repository (chunk files)
    d = new_repo(tmp_path / "d")
    r = copy_points(c, d, CopyFilter())
    assert len(r.copied) == total and assert_same_points(a, d, tmp_path) == total
    assert verify(d).ok
