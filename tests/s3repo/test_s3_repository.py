"""A whole repository on S3 (the lab's real Ceph RGW; no mock): init, import with dedup
and zero chunks, restore bit-exact, verify, prune + gc, encryption, a second cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from repository import s3_gc_lock
from repository.errors import (
    InvalidRequestError,
    LockedError,
    RepositoryError,
    RepositoryFormatError,
    WrongPassphraseError,
)
from repository.gc import gc
from repository.import_disk import import_disk
from repository.local_storage import LocalDirectoryStorage
from repository.pack_index_file import Location
from repository.prune import KeepPolicy, prune
from repository.repair import repair
from repository.repository import Repository
from repository.restore import restore_disk
from repository.s3_pack_store import S3PackStore
from repository.verify import verify
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand


def _init(r: S3Repo, **kw: object) -> Repository:
    args: dict[str, object] = {"chunk_size": CHUNK, "packs": True, "pack_size": 6 * MiB}
    return Repository.init(r.url, s3_config=r.config, cache_dir=r.cache(), **(args | kw))  # type: ignore[arg-type]


def _names(r: S3Repo, prefix: str) -> list[str]:
    return [o.name for o in r.bucket.list(f"repo/{prefix}" if prefix else "repo")]


def _age_past(r: S3Repo, prefix: str) -> None:
    """Wait until the storage's clock (whole seconds) is past every mtime under prefix: gc
    with grace 0 keeps what is not older than its start."""
    newest = max(o.mtime for o in r.bucket.list(f"repo/{prefix}"))
    while True:
        r.bucket.write("clock-probe", [b""])
        if r.bucket.stat("clock-probe").mtime > newest:
            return
        time.sleep(0.2)


def test_children_lists_one_level(s3repo: S3Repo, tmp_path: Path) -> None:
    local = LocalDirectoryStorage(tmp_path / "local")
    (tmp_path / "local").mkdir()
    for s in (s3repo.bucket, local):
        for name in ("p/a/x", "p/a/y", "p/b/c/d", "p/top", "q/z"):
            s.write(name, [b"1"])
        assert list(s.children("p")) == ["a", "b"]
        assert list(s.children("p/b")) == ["c"]
        assert list(s.children("")) == ["p", "q"]
        assert list(s.children("none")) == []


def test_init_import_restore_verify(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = _init(s3repo)
    assert repo.on_s3 and repo.location == s3repo.url
    # config is an object on the bucket; the cache holds no config
    assert "repo/config" in _names(s3repo, "") or s3repo.bucket.exists("repo/config")
    assert not (s3repo.cache() / "config").exists()
    a: list[bytes | None] = [rand() for _ in range(14)]
    img1 = disk_image(tmp_path / "d1.img", a + [None] * 4 + a[:6])  # zeros and repeats
    # one thread: two could both store a repeat before either saw it (harmless, uncounted)
    r1 = import_disk(repo, "vm1", 2000, tmp_path / "d1.img", workers=0)
    assert r1.zero_chunks == 4
    assert r1.new_chunks == 14 and r1.known_chunks == 6  # the repeats stored once
    img2 = disk_image(tmp_path / "d2.img", a[:7] + [rand() for _ in range(3)])
    r2 = import_disk(repo, "vm2", 2000, tmp_path / "d2.img", workers=0)
    assert r2.new_chunks == 3 and r2.known_chunks == 7
    packs = _names(s3repo, "packs")
    index = _names(s3repo, "index")
    assert packs and len(index) == len(packs)  # one index object per uploaded pack
    assert not list((s3repo.cache() / "packs" / "open").iterdir())  # all uploaded
    repo.close()

    again = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache())
    for img, res in ((img1, r1), (img2, r2)):
        out = tmp_path / f"out-{res.point_id}.img"
        restore_disk(again, res.point_id, 2000, out)
        assert out.read_bytes() == img
    report = verify(again)
    assert report.problems == [] and report.chunks_checked == 14 + 3


def test_second_empty_cache_rebuilds_the_index(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = _init(s3repo)
    img = disk_image(tmp_path / "d.img", [rand() for _ in range(30)] + [None])
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img")
    repo.close()
    other = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("two"))
    assert isinstance(other.chunks, S3PackStore)
    assert other.chunks.index.downloads == len(_names(s3repo, "index")) >= 2
    restore_disk(other, r.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img


def test_prune_and_gc_remove_packs_and_keep_named_chunks(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = _init(s3repo, pack_size=1 * MiB)  # sealed at the 4th chunk (one thread below)
    old = [rand() for _ in range(9)]
    disk_image(tmp_path / "old.img", old)
    r_old = import_disk(repo, "vm", 2000, tmp_path / "old.img", snapshot_time=1000.0, workers=0)
    # the new point shares one chunk of the old: its pack is rewritten, not dropped
    new_img = disk_image(tmp_path / "new.img", [old[0]] + [rand() for _ in range(5)])
    r_new = import_disk(repo, "vm", 2000, tmp_path / "new.img", snapshot_time=2000.0, workers=0)
    before = set(_names(s3repo, "packs"))
    assert isinstance(repo.chunks, S3PackStore)
    ids_in: dict[bytes, set[bytes]] = {}
    for cid, loc in repo.chunks.iter_ids():
        ids_in.setdefault(loc.pack, set()).add(cid)
    dead = {repo.chunk_id(b) for b in old[1:]}
    drops = [p for p, ids in ids_in.items() if ids <= dead]
    rewrites = [p for p, ids in ids_in.items() if ids & dead and not ids <= dead]
    assert drops and len(rewrites) == 1  # the pack of old[0] (with dead chunks beside it)
    res = prune(repo, KeepPolicy(last=1))
    assert [d.point.id for d in res.remove] == [r_old.point_id]
    _age_past(s3repo, "packs")
    report = gc(repo, grace=0)
    after = set(_names(s3repo, "packs"))
    assert report.packs_removed == len(drops) and report.packs_rewritten == 1
    assert report.chunks_removed == 8
    assert len(after - before) == 1  # the rewrite's new pack
    assert before - after == {f"repo/packs/{p.hex()[:2]}/{p.hex()}" for p in drops + rewrites}
    assert len(_names(s3repo, "index")) == len(after)
    assert not s3repo.bucket.exists("repo/locks/gc")  # released
    fresh = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("f"))
    restore_disk(fresh, r_new.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == new_img
    assert verify(fresh).problems == []
    _age_past(s3repo, "packs")
    again = gc(fresh, grace=0)
    assert again.packs_removed == again.packs_rewritten == again.chunks_removed == 0


def test_gc_lock_object_refuses_a_second_gc_and_takes_over_a_stale_one(
    s3repo: S3Repo,
) -> None:
    repo = _init(s3repo)
    storage = repo.storage
    with s3_gc_lock.object_lock(storage):
        held = json.loads(storage.read(s3_gc_lock.LOCK))
        assert set(held) == {"owner", "host", "pid", "time"}
        with pytest.raises(LockedError, match="another gc is running"):
            gc(repo)
    # a lock left by a killed gc: refused while fresh, taken over once stale
    storage.write(s3_gc_lock.LOCK, [b'{"owner": "dead", "host": "h", "pid": 1, "time": 0}'])
    with pytest.raises(LockedError, match="held by h pid 1"):
        gc(repo)
    lock = s3_gc_lock.ObjectLock(storage, stale=0.0)
    lock.acquire()
    lock.check()
    lock.release()
    assert not storage.exists(s3_gc_lock.LOCK)


def test_encrypted_on_s3_wrong_passphrase_refused(s3repo: S3Repo, tmp_path: Path) -> None:
    repo = _init(s3repo, passphrase="right one", kdf_n=1 << 10)
    img = disk_image(tmp_path / "d.img", [rand(), None, rand()])
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img")
    repo.close()
    assert s3repo.bucket.exists("repo/keys/repokey")
    with pytest.raises(WrongPassphraseError, match="keys/repokey"):
        Repository.open(s3repo.url, "wrong", s3_config=s3repo.config, cache_dir=s3repo.cache())
    with pytest.raises(RepositoryError, match="a passphrase is needed"):
        Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache())
    ok = Repository.open(
        s3repo.url, "right one", s3_config=s3repo.config, cache_dir=s3repo.cache("x")
    )
    restore_disk(ok, r.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img


def test_bad_locations_and_second_init_refused(s3repo: S3Repo, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="needs --s3-config"):
        Repository.open(s3repo.url)
    with pytest.raises(InvalidRequestError, match="only for an s3://"):
        Repository.open(tmp_path / "local", s3_config=s3repo.config)
    with pytest.raises(InvalidRequestError, match="keeps chunks in packs"):
        _init(s3repo, packs=False)
    with pytest.raises(RepositoryFormatError, match="not a vmbackup repository"):
        Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache())
    _init(s3repo)
    with pytest.raises(RepositoryError, match="is not empty"):
        _init(s3repo)
    # two inits racing on one location: exactly one wins, the other says why
    url = s3repo.url + "-race"
    results: list[object] = []

    def one(n: int) -> None:
        try:
            Repository.init(url, chunk_size=CHUNK, passphrase="pw", kdf_n=1 << 10, packs=True,
                            s3_config=s3repo.config, cache_dir=tmp_path / f"c{n}")  # fmt: skip
            results.append("won")
        except RepositoryError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1, results
    assert all(
        "not empty" in str(x) or "another `repo init`" in str(x) for x in results if x != "won"
    )
    Repository.open(url, "pw", s3_config=s3repo.config, cache_dir=tmp_path / "c9")


def _rot(s3repo: S3Repo, loc: Location) -> bytes:
    """Flip a bit inside a blob of a pack object on the bucket; the pack's bytes before."""
    key = f"repo/packs/{loc.pack.hex()[:2]}/{loc.pack.hex()}"
    before = s3repo.bucket.read(key)
    data = bytearray(before)
    data[loc.offset + 40] ^= 0x01
    s3repo.bucket.write(key, [bytes(data)])
    return before


def _point_with_a_victim(
    s3repo: S3Repo, tmp_path: Path
) -> tuple[Repository, bytes, str, bytes, Location]:
    """A repository with one point of four random chunks: (repo, the image, the point,
    the id of its third chunk, where that chunk is)."""
    repo = _init(s3repo)
    blocks: list[bytes | None] = [rand() for _ in range(4)]
    img = disk_image(tmp_path / "d.img", blocks)
    point = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0).point_id
    # blocks holds no None here (random chunks only): a list[bytes | None] for disk_image
    victim = repo.chunk_id(blocks[2])  # type: ignore[arg-type]
    [loc] = repo.chunks.locations(victim)
    return repo, img, point, victim, loc


def test_a_damaged_blob_is_quarantined_and_the_next_backup_heals_it(
    s3repo: S3Repo, tmp_path: Path
) -> None:
    repo, img, point, victim, loc = _point_with_a_victim(s3repo, tmp_path)
    _rot(s3repo, loc)
    other = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("two"))
    assert other.chunks.exists(victim)  # another process, before verify
    report = verify(repo)
    bad = [p for p in report.problems if p.kind == "bad-chunk"]
    assert len(bad) == 1 and victim.hex() in bad[0].obj, report.problems
    assert any(p.kind == "damaged-point" and point in p.obj for p in report.problems)
    assert report.quarantined == [victim.hex()]
    # the copy and its record are objects; the index objects are as they were written
    assert s3repo.bucket.exists(f"repo/quarantine/{victim.hex()[:3]}/{victim.hex()}.json")
    with pytest.raises(RepositoryError, match="quarantined as damaged"):
        restore_disk(repo, point, 2000, tmp_path / "out.img")
    assert not repo.chunks.exists(victim)  # a have-query answers "absent"
    other.chunks.index.refresh(force=True)  # its next sync of the index
    assert not other.chunks.exists(victim)
    assert [cid for cid, _ in other.chunks.iter_ids()].count(victim) == 0
    # the next backup of the same data stores a good copy: every point restores again
    again = import_disk(other, "vm", 2000, tmp_path / "d.img", workers=0)
    assert again.new_chunks == 1
    restore_disk(repo, point, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
    assert verify(repo).problems == []
    fixed = repair(repo)
    assert fixed.healed == [victim.hex()] and fixed.damaged == []
    other.close()


def test_a_read_error_quarantined_on_s3_is_put_back_by_repair(
    s3repo: S3Repo, tmp_path: Path
) -> None:
    repo, img, point, victim, loc = _point_with_a_victim(s3repo, tmp_path)
    good = _rot(s3repo, loc)
    assert verify(repo).quarantined == [victim.hex()]
    # it was the read, not the bytes: the pack reads good again, and so does the copy
    s3repo.bucket.write(f"repo/packs/{loc.pack.hex()[:2]}/{loc.pack.hex()}", [good])
    copy = f"repo/quarantine/{victim.hex()[:3]}/{victim.hex()}"
    s3repo.bucket.write(copy, [good[loc.offset : loc.offset + loc.length]])
    fixed = repair(repo)
    assert fixed.put_back == [victim.hex()] and fixed.damaged == []
    assert repo.chunks.locations(victim) == [loc]
    restore_disk(repo, point, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
    assert not s3repo.bucket.exists(copy)
