"""The local cache of a repository's index on S3 (repository/s3_pack_index.py), on the
lab's real RGW: merged once it holds more than COMPACT_AT files, rebuilt and merged by a
process with an empty cache, and made the bucket's again after gc dropped packs that a
merged file covered. The measurement that asked for it: bench/pack_index_lookup.py."""

from __future__ import annotations

import time
from pathlib import Path

from repository.gc import gc
from repository.import_disk import import_disk
from repository.pack_store import COMPACT_AT
from repository.prune import KeepPolicy, prune
from repository.repository import Repository
from repository.restore import restore_disk
from repository.s3_pack_store import S3PackStore
from repository.verify import verify
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand


def _store(repo: Repository) -> S3PackStore:
    assert isinstance(repo.chunks, S3PackStore)
    return repo.chunks


def _covered(store: S3PackStore) -> set[bytes]:
    return {p for f in store.index.files() for p in f.packs}


def _bucket_packs(r: S3Repo) -> set[bytes]:
    return {bytes.fromhex(o.name.rsplit("/", 1)[1]) for o in r.bucket.list("repo/index")}


def _age_past(r: S3Repo) -> None:
    """The storage's clock (whole seconds) past every pack's mtime: gc with grace 0."""
    newest = max(o.mtime for o in r.bucket.list("repo/packs"))
    while True:
        r.bucket.write("clock-probe", [b""])
        if r.bucket.stat("clock-probe").mtime > newest:
            return
        time.sleep(0.2)


def test_the_cache_is_merged_rebuilt_and_follows_gc(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = Repository.init(
        s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache(),
        chunk_size=CHUNK, pack_size=1 * MiB,
    )  # fmt: skip
    store = _store(repo)
    old: list[bytes] = []
    while len(_bucket_packs(s3repo)) < COMPACT_AT + 4:  # old points, 1 MiB packs
        blocks = [rand() for _ in range(16)]
        disk_image(tmp_path / "old.img", blocks)
        t = 1000.0 + len(old)
        r_old = import_disk(repo, "vm", 2000, tmp_path / "old.img", snapshot_time=t, workers=0)
        old += blocks
        old_img = (tmp_path / "old.img").read_bytes()
    new = [old[0]] + [rand() for _ in range(7)]  # shares one chunk: its pack is rewritten
    new_img = disk_image(tmp_path / "new.img", new)
    r_new = import_disk(repo, "vm", 2000, tmp_path / "new.img", snapshot_time=9000.0, workers=0)
    packs = _bucket_packs(s3repo)
    assert len(packs) >= COMPACT_AT + 4
    # merged as the packs were sealed: few files, covering every uploaded pack
    assert len(store.index.files()) <= COMPACT_AT
    assert _covered(store) == packs
    for block in old + new:
        assert store.index.lookup(repo.chunk_id(block)), "a stored chunk not found"

    # a second process with an empty cache downloads a file a pack, then merges them
    other = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("two"))
    assert _store(other).index.downloads == len(packs)
    assert len(_store(other).index.files()) <= COMPACT_AT and _covered(_store(other)) == packs
    restore_disk(other, r_old.point_id, 2000, tmp_path / "old-out.img")
    assert (tmp_path / "old-out.img").read_bytes() == old_img

    # gc drops the old point's packs from the bucket; each cache that covered them in
    # a merged file loses them at its next sync, and keeps the rest
    prune(repo, KeepPolicy(last=1))
    _age_past(s3repo)
    report = gc(repo, grace=0)
    assert report.packs_removed >= COMPACT_AT and report.packs_rewritten == 1
    left = _bucket_packs(s3repo)
    assert _covered(store) == left
    _store(other).index.refresh(force=True)
    assert _covered(_store(other)) == left
    for cache in (store, _store(other)):
        assert cache.index.lookup(repo.chunk_id(old[5])) == []  # removed with its pack
        assert cache.index.lookup(repo.chunk_id(old[0]))  # kept: moved to a new pack
    restore_disk(other, r_new.point_id, 2000, tmp_path / "new-out.img")
    assert (tmp_path / "new-out.img").read_bytes() == new_img
    assert verify(other).problems == []
