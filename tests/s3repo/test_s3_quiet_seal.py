"""A writer uploads its open packs once no chunk batch has been in flight for a short
quiet time (repository_writer/quiet_seal.py; the lab's real RGW): another writer's commit
of those chunks then needs no idle timer, and a busy writer seals nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from repository.repository import Repository
from repository.s3_pack_store import S3PackStore
from repository_writer.quiet_seal import MAX_FACTOR, QuietSealer
from tests.s3repo.conftest import CHUNK, MiB, S3Repo
from tests.s3repo.test_s3_commit_wait import _commit, _store

pytestmark = pytest.mark.integration


def _open(s3repo: S3Repo, name: str) -> Repository:
    return Repository.open(
        s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache(), cache_name=name
    )


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_quiet_writer_uploads_its_packs_for_the_other_writers_commit(s3repo: S3Repo) -> None:
    Repository.init(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("init"),
                    chunk_size=CHUNK, pack_size=8 * MiB)  # fmt: skip
    a, b = _open(s3repo, "writer-a"), _open(s3repo, "writer-b")
    assert isinstance(a.chunks, S3PackStore)
    sealer = QuietSealer(a.chunks, 0.2, "writer-a")
    sealer.start()
    try:
        # batches back to back (one always in flight): nothing is sealed meanwhile
        held: list[bytes] = []
        sealer.begin()
        for _ in range(4):
            sealer.begin()
            sealer.end()
            held += _store(a, 2)
        assert a.chunks.index.open_packs() and sealer.seals == 0
        sealer.end()  # the last batch: the writer is quiet from now on
        _until(lambda: sealer.seals == 1, "the quiet writer sealed its packs")
        assert not a.chunks.index.open_packs()
        # b commits at once (no commit_wait, no idle seal): every chunk is in the bucket
        b.commit_wait = 0.0
        point = _commit(b, held, "j1")
        assert [p.id for p in b.points()] == [point]
        # quiet again without a batch in between: nothing more to seal
        time.sleep(0.5)
        assert sealer.seals == 1
    finally:
        sealer.stop()
    for r in (a, b):
        r.close()


def test_quiet_seal_refuses_a_bad_time(s3repo: S3Repo) -> None:
    Repository.init(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("init"),
                    chunk_size=CHUNK, pack_size=8 * MiB)  # fmt: skip
    a = _open(s3repo, "writer-a")
    assert isinstance(a.chunks, S3PackStore)
    with pytest.raises(ValueError, match="quiet seal: 0 s must be above 0"):
        QuietSealer(a.chunks, 0, "writer-a")
    a.close()


def test_the_quiet_taken_grows_with_the_gaps_of_a_backup(s3repo: S3Repo) -> None:
    """Gaps between batches (a loaded machine) make the quiet taken for a backup's end
    longer, up to MAX_FACTOR x quiet_s; a gap that long starts over."""
    Repository.init(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("init"),
                    chunk_size=CHUNK, pack_size=8 * MiB)  # fmt: skip
    a = _open(s3repo, "writer-a")
    assert isinstance(a.chunks, S3PackStore)
    sealer = QuietSealer(a.chunks, 0.1, "writer-a")  # not started: nothing sealed here
    assert sealer.quiet_needed() == 0.1
    sealer.begin()
    sealer.end()
    time.sleep(0.15)  # a gap of at least 0.15 s
    sealer.begin()
    assert 0.3 <= sealer.quiet_needed() <= sealer.cap == 0.1 * MAX_FACTOR
    sealer.end()
    time.sleep(sealer.cap)  # the writer was idle: the next batch starts a new backup
    sealer.begin()
    sealer.end()
    assert sealer.quiet_needed() == 0.1
    a.close()
