"""Two writers on one S3 repository (their own caches, the lab's real RGW): a point is
committed only once every chunk it names is uploaded with its index object. One writer's
commit of chunks the other acknowledged but still holds in an open pack waits for their
upload (within ``commit_wait``), or is refused naming them; nothing half-committed."""

from __future__ import annotations

import threading
import time

import pytest

from common.chunk import compress
from repository.errors import MissingChunkError
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository
from repository.s3_pack_store import S3PackStore
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, rand

pytestmark = pytest.mark.integration


def _store(repo: Repository, n: int) -> list[bytes]:
    ids = []
    for _ in range(n):
        data = rand()
        cid = repo.chunk_id(data)
        payload, compressed = compress(data, 1)
        repo.store_chunks([(cid, len(data), compressed, payload)])
        ids.append(cid)
    return ids


def _commit(repo: Repository, ids: list[bytes], job: str) -> str:
    disk = DiskChanges(key=2000, capacity=len(ids) * CHUNK, entries=list(enumerate(ids)))
    return repo.commit_point(
        PointCommit(
            job_id=job, vm_uuid="vm-1", status="complete", snapshot_time=1000.0, disks=[disk]
        )
    )


def test_a_commit_waits_for_the_other_writers_upload(s3repo: S3Repo) -> None:
    Repository.init(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("init"),
                    chunk_size=CHUNK, pack_size=8 * MiB)  # fmt: skip
    a, b = (
        Repository.open(
            s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache(), cache_name=name
        )
        for name in ("writer-a", "writer-b")
    )
    assert a.path != b.path and a.path.parent == b.path.parent
    held = _store(a, 3)  # acknowledged by a: in its open pack, in its cache only
    assert isinstance(a.chunks, S3PackStore)
    assert not any(o.name.startswith("repo/index/") for o in s3repo.bucket.list("repo"))

    # b alone, no wait: refused, naming the chunks; no point appears
    with pytest.raises(MissingChunkError, match="3 named chunk"):
        _commit(b, held, "j1")
    assert b.points() == [] and a.points() == []

    # with a wait: a seals (uploads) its idle pack meanwhile, as its sealer does
    b.commit_wait = 30.0
    store = a.chunks

    def seal_later() -> None:
        time.sleep(1.5)
        store.seal_idle(1.0)

    sealer = threading.Thread(target=seal_later)
    sealer.start()
    t0 = time.monotonic()
    point = _commit(b, held, "j2")
    waited = time.monotonic() - t0
    sealer.join()
    assert waited >= 1.0  # it could only succeed after the upload
    assert [p.id for p in b.points()] == [point]
    # the point's chunks are all in the bucket: a third process reads every one
    c = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("c"))
    assert c.has_chunks(held) == [True, True, True]
    for cid in held:
        assert len(c.chunks.read(cid)) > 0
    for r in (a, b, c):
        r.close()
