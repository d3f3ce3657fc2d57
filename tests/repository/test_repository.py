"""Repository operations on real files: store, commit (synthetic full), restore, bad input."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from common.chunk import compress
from repository.errors import (
    ChunkIdMismatchError,
    CorruptObjectError,
    InvalidRequestError,
    MissingChunkError,
    PointNotFoundError,
    RepositoryError,
    RepositoryFormatError,
    WrongPassphraseError,
)
from repository.import_disk import import_disk
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from tests.repository.conftest import CS, flip_bit, make_image, point_file


def _commit(
    repo: Repository, disks: list[DiskChanges], *, t: float = 1000.0, job: str = "j1"
) -> str:
    return repo.commit_point(
        PointCommit(
            job_id=job,
            vcenter="vc",
            vm_uuid="vm-1",
            vm_moref="vm-42",
            vm_name="web",
            vm_config=b"<cfg/>",
            status="complete",
            snapshot_time=t,
            failed_disks=[],
            disks=disks,
        )
    )


def _store(repo: Repository, data: bytes) -> bytes:
    cid = repo.chunk_id(data)
    payload, compressed = compress(data, 1)
    repo.store_chunk(cid, len(data), compressed, payload)
    return cid


def test_init_open_and_config_checks(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / "r", chunk_size=512 * 1024)
    assert Repository.open(tmp_path / "r").chunk_size == 512 * 1024
    assert r.id_key is None
    with pytest.raises(RepositoryError, match="not empty"):
        Repository.init(tmp_path / "r")
    for bad in (1000, 128 * 1024, 16 << 20):
        with pytest.raises(InvalidRequestError, match="chunk size"):
            Repository.init(tmp_path / f"x{bad}", chunk_size=bad)
    with pytest.raises(RepositoryFormatError, match="not a vmbackup repository"):
        Repository.open(tmp_path)


def test_store_chunk_verifies_and_dedups(repo: Repository) -> None:
    data = os.urandom(CS)
    cid = repo.chunk_id(data)
    payload, compressed = compress(data, 1)
    assert repo.store_chunk(cid, len(data), compressed, payload) is True
    assert repo.store_chunk(cid, len(data), compressed, payload) is False  # redelivery
    assert repo.has_chunks([cid, os.urandom(32)]) == [True, False]
    assert repo.read_chunk(cid) == data
    other = os.urandom(32)
    with pytest.raises(ChunkIdMismatchError, match=other.hex()):
        repo.store_chunk(other, len(data), False, data)
    with pytest.raises(InvalidRequestError, match="decompress"):
        repo.store_chunk(os.urandom(32), 10, True, b"not zstd")
    with pytest.raises(InvalidRequestError, match="raw length"):
        repo.store_chunk(os.urandom(32), CS + 1, False, b"x" * (CS + 1))
    assert not repo.has_chunks([other])[0]


def test_synthetic_full_and_growth(repo: Repository, tmp_path: Path) -> None:
    a, b, c = (_store(repo, os.urandom(CS)) for _ in range(3))
    p1 = _commit(
        repo,
        [
            DiskChanges(
                key=2000,
                capacity=4 * CS,
                change_id="c1",
                base_point_id="",
                entries=[[0, a], [2, b]],
                info={},
            )
        ],
    )
    # incremental: chunk 2 changes, disk grows by 2 chunks, chunk 5 written
    p2 = _commit(
        repo,
        [
            DiskChanges(
                key=2000,
                capacity=6 * CS,
                change_id="c2",
                base_point_id=p1,
                entries=[[2, c], [5, a]],
                info={},
            )
        ],
        t=2000.0,
    )
    m1, m2 = repo.load_map(p1, 2000), repo.load_map(p2, 2000)
    assert [m1.get(i) for i in (0, 2)] == [a, b]
    assert [m2.get(i) for i in (0, 2, 5)] == [a, c, a] and len(m2) == 6
    out = tmp_path / "out.img"
    restore_disk(repo, p2, 2000, out)
    ra, rc = repo.read_chunk(a), repo.read_chunk(c)
    expect = ra + bytes(CS) + rc + bytes(2 * CS) + ra
    assert out.read_bytes() == expect
    # deleting the base does not break the incremental: it is a full map
    repo.delete_point(p1)
    restore_disk(repo, p2, 2000, out)
    assert out.read_bytes() == expect
    pt = repo.latest_point("vm-1")
    assert pt is not None and pt.id == p2 and pt.disks[0].change_id == "c2"
    assert pt.vm_config == b"<cfg/>" and pt.job_id == "j1"


def test_commit_is_idempotent_and_checks_chunks(repo: Repository) -> None:
    a = _store(repo, os.urandom(CS))
    disks = [
        DiskChanges(key=1, capacity=CS, change_id="", base_point_id="", entries=[[0, a]], info={})
    ]
    p = _commit(repo, disks)
    assert _commit(repo, disks) == p  # redelivered request: same point, no second one
    assert len(repo.points()) == 1
    missing = os.urandom(32)
    with pytest.raises(MissingChunkError, match=missing.hex()):
        _commit(repo, [replace(disks[0], entries=[(0, missing)])], job="j2")
    with pytest.raises(InvalidRequestError, match="index 7"):
        _commit(repo, [replace(disks[0], entries=[(7, a)])], job="j3")
    with pytest.raises(PointNotFoundError):
        _commit(repo, [replace(disks[0], base_point_id="20200101T000000Z-00000000")], job="j4")
    with pytest.raises(InvalidRequestError, match="vm_uuid"):
        repo.commit_point(PointCommit("j5", "../etc", "complete", 1.0, []))
    assert len(repo.points()) == 1


def test_import_incremental_stores_only_new(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    data = bytearray(make_image(img, "rrztdrs"))
    r1 = import_disk(repo, "vm-a", 2000, img)
    assert r1.zero_chunks == 1 and r1.new_chunks == 5 and r1.known_chunks == 1
    data[CS + 5] ^= 0xFF
    img.write_bytes(data)
    r2 = import_disk(repo, "vm-a", 2000, img)
    assert r2.base_point_id == r1.point_id
    assert (r2.changed_chunks, r2.new_chunks) == (1, 1)
    for point in (r1.point_id, r2.point_id):
        restore_disk(repo, point, 2000, tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == bytes(data)
    assert verify(repo).ok


def test_encrypted_repository(enc_repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rtz")
    r = import_disk(enc_repo, "vm", 1, img)
    assert enc_repo.id_key is not None
    # ids are keyed: they do not reveal the plain BLAKE3 of the content
    from common.chunk import chunk_id

    assert not enc_repo.chunks.exists(chunk_id(data[:CS]))
    assert enc_repo.chunks.exists(chunk_id(data[:CS], enc_repo.id_key))
    # no file of the repository holds plaintext
    text = data[CS : CS + 64]
    enc_repo.close()
    for f in [f for f in enc_repo.path.rglob("*") if f.is_file()]:
        assert text not in f.read_bytes(), f
    reopened = Repository.open(enc_repo.path, "correct horse")
    restore_disk(reopened, r.point_id, 1, tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == data
    with pytest.raises(WrongPassphraseError, match="repokey"):
        Repository.open(enc_repo.path, "wrong")
    with pytest.raises(RepositoryError, match="passphrase is needed"):
        Repository.open(enc_repo.path)


def test_damage_is_named_and_contained(v2_repo: Repository, tmp_path: Path) -> None:
    repo = v2_repo  # chunk files truncated and removed (packs: test_packs.py)
    img = tmp_path / "d.img"
    make_image(img, "rrtr")
    r = import_disk(repo, "vm", 1, img)
    victim = next(repo.chunks.iter_chunks())
    flip_bit(victim.path, 40)
    with pytest.raises(RepositoryError, match=victim.id.hex()):
        restore_disk(repo, r.point_id, 1, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # no plausible-looking partial image
    rep = verify(repo)
    kinds = {p.kind for p in rep.problems}
    assert kinds == {"bad-chunk", "damaged-point"}
    assert any(victim.id.hex() in str(p) for p in rep.problems)
    # truncated chunk, missing chunk, damaged map: each reported, verify never raises
    other = [c for c in repo.chunks.iter_chunks() if c.id != victim.id]
    with open(other[0].path, "r+b") as fh:
        fh.truncate(10)
    os.unlink(other[1].path)
    mapfile = repo.storage.path(next(repo.point_store.point_refs()).map(1))
    flip_bit(mapfile, 70)
    rep = verify(repo)
    kinds = {p.kind for p in rep.problems}
    assert {"bad-chunk", "map"} <= kinds
    assert any("truncated" in str(p) for p in rep.problems)
    assert any("checksum" in str(p) and "disk 1" in str(p) for p in rep.problems)


def test_meta_damage_reported(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    make_image(img, "r")
    r = import_disk(repo, "vm", 1, img)
    flip_bit(point_file(repo, r.point_id, "meta"), 40)
    rep = verify(repo)
    assert [p.kind for p in rep.problems] == ["point"]
    with pytest.raises(CorruptObjectError, match=r.point_id):
        repo.get_point(r.point_id)


def test_a_chunk_is_not_present_until_its_rename_is_durable(
    v2_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one writer thread has renamed a chunk into place but not yet fsynced its
    directory, a have-query must not answer "present" (a point naming it could lose it
    to a power cut); storing it again meanwhile makes it durable before the ack."""
    repo = v2_repo  # chunk files: what these renames and fsyncs are about
    import threading

    from repository import chunk_store

    data = os.urandom(CS)
    payload, compressed = compress(data, 3)
    cid = repo.chunk_id(data)
    renamed = threading.Event()
    release = threading.Event()
    real_fsync_dirs = chunk_store.fsync_dirs
    synced: list[set[Path]] = []

    def slow_fsync_dirs(dirs: set[Path]) -> None:
        if threading.current_thread().name == "first-writer":
            renamed.set()  # the rename is done; hold the directory fsync back
            assert release.wait(10)
        synced.append(set(dirs))
        real_fsync_dirs(dirs)

    monkeypatch.setattr(chunk_store, "fsync_dirs", slow_fsync_dirs)
    first = threading.Thread(
        target=repo.store_chunks, args=([(cid, CS, compressed, payload)],), name="first-writer"
    )
    first.start()
    try:
        assert renamed.wait(10)
        assert repo.chunks.path_of(cid).exists()  # on disk, but not durable yet
        assert repo.has_chunks([cid]) == [False]
        # A second copy arriving now is written and its directory fsynced before it returns.
        res = repo.store_chunks([(cid, CS, compressed, payload)])
        assert res.stored == 1
        assert repo.chunks.path_of(cid).parent in synced[-1]
    finally:
        release.set()
        first.join(10)
    assert repo.has_chunks([cid]) == [True]
    assert repo.read_chunk(cid) == data


def test_a_chunk_renamed_by_another_writer_is_made_durable_before_it_counts_as_present(
    v2_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers scaled out share shards and the volume: a chunk another writer process has
    renamed into place, its directory fsync still to come (or never: killed), is answered
    "present" only after this writer fsyncs that directory itself. Later touches, which
    leave mtime == ctime, do not fsync again."""
    repo = v2_repo  # chunk files: what these renames and fsyncs are about
    import threading

    from repository import chunk_store

    other = Repository.open(repo.path)  # its own ChunkStore: another process's view
    data = os.urandom(CS)
    payload, compressed = compress(data, 3)
    cid = repo.chunk_id(data)
    renamed = threading.Event()
    release = threading.Event()
    real_fsync_dirs, real_fsync_dir = chunk_store.fsync_dirs, chunk_store.fsync_dir
    synced_by_main: list[Path] = []

    def held_fsync_dirs(dirs: set[Path]) -> None:
        if threading.current_thread().name == "other-writer":
            renamed.set()
            assert release.wait(10)
        real_fsync_dirs(dirs)

    def recorded_fsync_dir(d: Path) -> None:
        if threading.current_thread() is threading.main_thread():
            synced_by_main.append(d)
        real_fsync_dir(d)

    monkeypatch.setattr(chunk_store, "fsync_dirs", held_fsync_dirs)
    monkeypatch.setattr(chunk_store, "fsync_dir", recorded_fsync_dir)
    t = threading.Thread(
        target=other.store_chunks, args=([(cid, CS, compressed, payload)],), name="other-writer"
    )
    t.start()
    try:
        assert renamed.wait(10)
        assert repo.has_chunks([cid]) == [True]
        assert synced_by_main == [repo.chunks.path_of(cid).parent]
        assert repo.has_chunks([cid]) == [True]
        assert len(synced_by_main) == 1  # a touched chunk is settled
    finally:
        release.set()
        t.join(10)
    # A chunk some other writer renamed into place and never touched: the same.
    fresh = os.urandom(CS)
    fresh_id = repo.chunk_id(fresh)
    other.store_chunks([(fresh_id, CS, False, fresh)])
    synced_by_main.clear()
    assert repo.has_chunks([fresh_id, fresh_id]) == [True, True]
    assert synced_by_main == [repo.chunks.path_of(fresh_id).parent]


def test_commit_check_does_not_settle_acknowledged_chunks(
    v2_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit names only chunks a writer acknowledged as durable: checking them costs a
    stat and a utime each, no directory fsync (one journal commit each on ext4), and a
    chunk's "not settled yet" mark stays for the next have-query to honour."""
    repo = v2_repo  # chunk files: what these renames and fsyncs are about
    from repository import chunk_store

    other = Repository.open(repo.path)  # another writer stored them
    datas = [os.urandom(CS) for _ in range(3)]
    ids = [repo.chunk_id(d) for d in datas]
    other.store_chunks([(i, CS, False, d) for i, d in zip(ids, datas, strict=True)])
    synced: list[Path] = []
    real_fsync_dir = chunk_store.fsync_dir
    monkeypatch.setattr(chunk_store, "fsync_dir", lambda d: (synced.append(d), real_fsync_dir(d)))
    disk = DiskChanges(
        key=1,
        capacity=3 * CS,
        change_id="",
        base_point_id="",
        entries=[list(e) for e in enumerate(ids)],
        info={},
    )
    point = _commit(repo, [disk])
    assert repo.get_point(point).disks[0].key == 1
    assert synced == []
    assert repo.has_chunks(ids[:1]) == [True]  # a have-query still settles what it answers
    assert synced == [repo.chunks.path_of(ids[0]).parent]
