"""repository.disk_reader on real repositories: any range reads the disk's bytes, zero
chunks and a grown disk's tail as zeros, the cache is bounded and decodes a chunk once
however many threads want it, and a damaged chunk raises (never wrong bytes)."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from repository.disk_reader import ChunkReadError, DiskReader, Extent
from repository.errors import InvalidRequestError
from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import CS, damage_chunk, make_image


def _read(reader: DiskReader, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    reader.pread(buf, offset)
    return bytes(buf)


def test_every_range_reads_the_disk_bytes(repo: Repository, tmp_path: Path) -> None:
    data = make_image(tmp_path / "d.img", "rztdrzzrs")
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img")
    reader = DiskReader(repo, r.point_id, 2000, cache_bytes=2 * CS)
    assert reader.size == len(data)
    rnd = random.Random(1)
    cases = [(0, len(data)), (CS - 1, 2), (len(data) - 1, 1), (3 * CS + 17, 2 * CS)]
    cases += [
        (o, rnd.randint(1, min(3 * CS, len(data) - o)))
        for o in (rnd.randrange(len(data)) for _ in range(300))
    ]
    for off, n in cases:
        assert _read(reader, off, n) == data[off : off + n], (off, n)
    assert reader.stats.read_errors == 0 and reader.stats.reads == len(cases)


def test_a_grown_disk_reads_zeros_past_its_old_last_chunk(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rs")  # the last chunk is 1000 bytes
    import_disk(repo, "vm", 1, img)
    grown = data + os.urandom(CS) + bytes(CS)
    img.write_bytes(grown)
    r2 = import_disk(repo, "vm", 1, img)
    reader = DiskReader(repo, r2.point_id, 1)
    assert _read(reader, 0, len(grown)) == grown
    assert _read(reader, CS + 900, 300) == grown[CS + 900 : CS + 1200]


def test_extents_name_zero_chunks_merged(repo: Repository, tmp_path: Path) -> None:
    make_image(tmp_path / "d.img", "rrzzzts")
    r = import_disk(repo, "vm", 1, tmp_path / "d.img")
    reader = DiskReader(repo, r.point_id, 1)
    assert reader.extents(0, reader.size) == [
        Extent(0, 2 * CS, False),
        Extent(2 * CS, 3 * CS, True),
        Extent(5 * CS, CS + 1000, False),
    ]
    assert reader.extents(CS + 5, CS) == [Extent(CS + 5, CS - 5, False), Extent(2 * CS, 5, True)]
    assert reader.extents(reader.size - 10, 100) == [Extent(reader.size - 10, 10, False)]


def test_the_cache_is_bounded_and_reads_hit_it(repo: Repository, tmp_path: Path) -> None:
    make_image(tmp_path / "d.img", "rrrr")
    r = import_disk(repo, "vm", 1, tmp_path / "d.img")
    reader = DiskReader(repo, r.point_id, 1, cache_bytes=2 * CS)
    for _ in range(4):  # four reads of one chunk: one decode
        _read(reader, 10, 4096)
    assert (reader.stats.cache_misses, reader.stats.cache_hits) == (1, 3)
    for i in (1, 2, 3):  # two slots: chunk 0 is evicted
        _read(reader, i * CS, 10)
    _read(reader, 0, 10)
    _read(reader, 3 * CS, 10)  # the most recent stays
    assert (reader.stats.cache_misses, reader.stats.cache_hits) == (5, 4)
    assert len(reader._cache) == 2


def test_a_chunk_wanted_by_many_threads_is_decoded_once(repo: Repository, tmp_path: Path) -> None:
    make_image(tmp_path / "d.img", "rr")
    r = import_disk(repo, "vm", 1, tmp_path / "d.img")
    decoded: list[bytes] = []
    gate = threading.Event()

    class Slow:  # the repository, its reads held until every thread waits
        chunk_size = repo.chunk_size
        get_point = repo.get_point
        load_map = repo.load_map

        def read_chunk_view(self, cid: bytes, *, check_crc: bool = True) -> bytes | memoryview:
            decoded.append(cid)
            gate.wait()
            return repo.read_chunk_view(cid, check_crc=check_crc)

    reader = DiskReader(Slow(), r.point_id, 1)
    out: list[bytes] = []
    threads = [
        threading.Thread(target=lambda o=o: out.append(_read(reader, o, 1000)))
        for o in (0, 4096, 8192, 65536)
    ]
    for t in threads:
        t.start()
    while reader.stats.cache_hits < 3:  # the three others wait on the first's decode
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join()
    assert len(decoded) == 1 and len(out) == 4
    assert reader.stats.cache_misses == 1


def test_a_damaged_chunk_raises_and_is_not_cached(repo: Repository, tmp_path: Path) -> None:
    data = make_image(tmp_path / "d.img", "rr")
    r = import_disk(repo, "vm", 1, tmp_path / "d.img")
    damage_chunk(repo, repo.chunk_id(data[CS:]), 100)
    reader = DiskReader(repo, r.point_id, 1)
    assert _read(reader, 0, 100) == data[:100]  # the good chunk still reads
    for _ in range(2):  # tried again each time, never served from a cache
        with pytest.raises(
            ChunkReadError, match=rf"point {r.point_id} disk 1: chunk #1 \(offset {CS}\)"
        ):
            _read(reader, CS - 10, 20)
    assert reader.stats.read_errors == 2
    with pytest.raises(InvalidRequestError, match="outside the disk"):
        _read(reader, len(data) - 1, 2)
