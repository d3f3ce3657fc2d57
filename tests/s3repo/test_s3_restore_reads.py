"""A restore from S3 reads neighbouring chunks of a pack with one ranged GET (the lab's
real Ceph RGW, the storage's own request count; no mock), bit-exact, and a damaged chunk
inside such a run still fails the restore at that chunk, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from repository.errors import RepositoryError
from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk, restore_disk_positional
from repository.s3_pack_store import S3PackStore
from repository.s3_repo_storage import S3RepoStorage
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand


def _repo_with_disk(s3repo: S3Repo, tmp_path: Path, n: int) -> tuple[str, bytes, list[bytes]]:
    """A repository with one point of ``n`` random chunks and two zero ones: (point,
    image, the chunks' plaintexts)."""
    repo = Repository.init(
        s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache(), chunk_size=CHUNK,
        packs=True, pack_size=6 * MiB,
    )  # fmt: skip
    blocks: list[bytes | None] = [rand() for _ in range(n)]
    blocks[3:3] = [None, None]
    img = disk_image(tmp_path / "d.img", blocks)
    point = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0).point_id
    repo.close()
    return point, img, [b for b in blocks if b is not None]


def _fresh(s3repo: S3Repo, name: str) -> tuple[Repository, S3RepoStorage]:
    repo = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache(name))
    assert isinstance(repo.chunks, S3PackStore)
    return repo, repo.chunks.storage


def test_a_restore_reads_runs_of_chunks_with_one_get_each(s3repo: S3Repo, tmp_path: Path) -> None:
    point, img, chunks = _repo_with_disk(s3repo, tmp_path, 40)  # 10 MiB in 2 packs
    repo, storage = _fresh(s3repo, "reader")
    before = storage.range_reads
    restore_disk(repo, point, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
    gets = storage.range_reads - before
    assert 0 < gets <= 4, f"{gets} ranged GETs for {len(chunks)} chunks"
    # one thread, chunk by chunk (the old path): one GET per chunk, the same bytes
    before = storage.range_reads
    restore_disk(repo, point, 2000, tmp_path / "one.img", workers=0)
    assert (tmp_path / "one.img").read_bytes() == img
    assert storage.range_reads - before == len(chunks)
    repo.close()


def test_a_damaged_chunk_in_a_run_fails_the_restore_at_that_chunk(
    s3repo: S3Repo, tmp_path: Path
) -> None:
    point, img, chunks = _repo_with_disk(s3repo, tmp_path, 12)
    repo, _ = _fresh(s3repo, "reader")
    victim = repo.chunk_id(chunks[6])  # disk chunk #8 (two zero chunks before it)
    assert isinstance(repo.chunks, S3PackStore)
    [loc] = repo.chunks.locations(victim)
    key = f"repo/packs/{loc.pack.hex()[:2]}/{loc.pack.hex()}"
    data = bytearray(s3repo.bucket.read(key))
    data[loc.offset + loc.length // 2] ^= 0x01  # inside the payload: the id check fails
    s3repo.bucket.write(key, [bytes(data)])
    out = tmp_path / "out.img"
    with pytest.raises(RepositoryError, match=rf"chunk #8 .*{victim.hex()}") as err:
        restore_disk(repo, point, 2000, out)
    assert "offset" in str(err.value)
    assert not out.exists()  # no plausible-looking image
    # every chunk before the damaged one is handed on, checked; none of the damaged one
    got: dict[int, bytes | None] = {}

    def put(off: int, buf: bytes | memoryview | None, n: int) -> None:
        got[off // CHUNK] = None if buf is None else bytes(buf[:n])

    with pytest.raises(RepositoryError, match=victim.hex()):
        restore_disk_positional(repo, point, 2000, put, "a test target")
    assert sorted(got) == list(range(8))
    for i, b in got.items():
        assert (b or bytes(CHUNK)) == img[i * CHUNK : (i + 1) * CHUNK]
    repo.close()
