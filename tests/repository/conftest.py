"""Fixtures for repository tests: small repositories and images on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from repository.pack_store import PackStore
from repository.repository import Repository

CS = 256 * 1024  # smallest chunk size: keeps tests fast


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1)


@pytest.fixture
def v2_repo(tmp_path: Path) -> Repository:
    """Format 2, a file per chunk: for the tests of what only chunk files do."""
    return Repository.init(tmp_path / "repo2", chunk_size=CS, compression_level=1, packs=False)


@pytest.fixture
def enc_repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "erepo", chunk_size=CS, passphrase="correct horse")


def make_image(path: Path, pattern: str, seed: int = 0) -> bytes:
    """Image from a pattern: r = random chunk, z = zero, t = text, d = duplicate of first."""
    import random

    rnd = random.Random(seed)
    parts: list[bytes] = []
    for c in pattern:
        if c == "r":
            parts.append(rnd.randbytes(CS))
        elif c == "z":
            parts.append(bytes(CS))
        elif c == "t":
            parts.append((f"line {rnd.random()} of text\n" * (CS // 20))[:CS].encode())
        elif c == "d":
            parts.append(parts[0])
        elif c == "s":  # short tail
            parts.append(rnd.randbytes(1000))
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def point_file(repo: Repository, point_id: str, part: str = "meta") -> Path:
    """The file of one object of a point (``meta`` or ``disk-<key>.map``): local only."""
    return repo.storage.path(f"{repo.point_store.find(point_id).prefix}/{part}")


def no_point_leftovers(repo: Repository) -> bool:
    """Nothing of a failed commit: no maps without meta, no file of an unfinished write
    (an empty directory may stay: it is no object)."""
    files = [p for p in repo.storage.path("points").rglob("*") if p.is_file()]
    metas = {p.parent for p in files if p.name == "meta"}
    return not list(repo.point_store.incomplete()) and all(p.parent in metas for p in files)


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x10]))
        fh.flush()
        os.fsync(fh.fileno())


def stored_ids(repo: Repository) -> list[bytes]:
    """Every stored chunk id, in either format, sorted."""
    if isinstance(repo.chunks, PackStore):
        return sorted({cid for cid, _ in repo.chunks.iter_ids()} | _open_ids(repo.chunks))
    return sorted(cf.id for cf in repo.chunks.iter_chunks())


def _open_ids(store: PackStore) -> set[bytes]:
    store.index.refresh()
    return {cid for cid in store.index._own} | {
        cid for log in store.index._logs.values() for cid in log.entries
    }


def damage_chunk(repo: Repository, chunk_id: bytes, at: int = 40) -> Path:
    """Flip a bit at byte ``at`` of a stored chunk's blob, in its chunk file (format 2) or
    inside its pack (format 3, sealed or open); the file that changed."""
    if isinstance(repo.chunks, PackStore):
        loc = repo.chunks.locations(chunk_id)[0]
        path = repo.chunks.pack_path(loc.pack)
        flip_bit(path, loc.offset + at)
        return path
    path = repo.chunks.path_of(chunk_id)
    flip_bit(path, at)
    return path
