"""Open packs streamed to the lab's real Ceph RGW as multipart parts while they fill
(s3_pack_stream.py): parts go before the seal, the pack restores bit-exact, a writer
killed mid-stream commits nothing and gc aborts its upload, a part that fails falls back
to the whole upload. No mock: the parts are counted by the storage itself, the failing
endpoint is a port nobody listens on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from repository.gc import gc
from repository.import_disk import import_disk
from repository.metrics import REGISTRY
from repository.repository import Repository
from repository.restore import restore_disk
from repository.s3_pack_store import S3PackStore
from repository.s3_pack_upload import index_object, pack_object
from repository.s3_repo_storage import S3RepoStorage
from repository.verify import verify
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand

ROOT = Path(__file__).resolve().parent.parent.parent
PART = 5 * MiB


def _streaming(r: S3Repo, whole_part_mib: int = 5) -> Path:
    """The fixture's config with parts of 5 MiB streamed (and ``whole_part_mib`` for
    the whole uploads)."""
    text = r.config.read_text().replace("part_size_mib = 5\n", "")
    cfg = r.tmp / "s3-stream.toml"
    cfg.write_text(text + f"part_size_mib = {whole_part_mib}\nstream_part_mib = 5\n")
    return cfg


def _init(r: S3Repo, cfg: Path, pack_mib: int = 32) -> Repository:
    return Repository.init(
        r.url, chunk_size=CHUNK, packs=True, pack_size=pack_mib * MiB,
        s3_config=cfg, cache_dir=r.cache(),
    )  # fmt: skip


def _store(repo: Repository) -> S3PackStore:
    assert isinstance(repo.chunks, S3PackStore)
    return repo.chunks


def _uploads(r: S3Repo) -> list[str]:
    """The keys of the bucket's unfinished multipart uploads."""
    resp = r.bucket._client.list_multipart_uploads(Bucket=r.bucket.loc.bucket)
    return [u["Key"] for u in resp.get("Uploads", [])]


def _age_past_uploads(r: S3Repo) -> None:
    """Wait until the storage's clock (whole seconds) is past every upload's start: gc
    with grace 0 keeps what is not older than its start (test_s3_repository._age_past)."""
    resp = r.bucket._client.list_multipart_uploads(Bucket=r.bucket.loc.bucket)
    newest = max(u["Initiated"].timestamp() for u in resp.get("Uploads", []))
    while True:
        r.bucket.write("clock-probe", [b""])
        if r.bucket.stat("clock-probe").mtime > newest:
            return
        time.sleep(0.2)


def _blobs(n: int, size: int) -> list[tuple[bytes, bytes]]:
    return [(os.urandom(32), os.urandom(size)) for _ in range(n)]


def test_parts_go_before_the_seal_and_the_pack_reads_back(s3repo: S3Repo) -> None:
    cfg = _streaming(s3repo)
    repo = _init(s3repo, cfg)
    store = _store(repo)
    storage = store.storage
    pack = store.new_pack()
    assert pack.stream is not None and pack.stream.part_size == PART
    blobs = _blobs(12, MiB)
    for i in range(0, 12, 4):  # three durable batches of 4 MiB: 12 MiB
        pack.append([(cid, [b]) for cid, b in blobs[i : i + 4]])
    pack.stream.wait()
    # two whole parts sent while the pack is open, nothing shows yet
    assert pack.stream.sent == 2 * PART and pack.stream.failed is None
    assert storage.parts_uploaded == 2 and storage.part_bytes == 2 * PART
    assert not storage.exists(pack_object(pack.id))
    assert _uploads(s3repo) == [storage.key(pack_object(pack.id))]
    size = pack.size
    pack.seal()
    store.sealed([pack.id])
    # the seal sent the rest (2 MiB + trailer) as the last part and completed
    assert storage.parts_uploaded == 3 and not _uploads(s3repo)
    assert storage.stat(pack_object(pack.id)).size == storage.part_bytes > size
    assert storage.exists(index_object(pack.id))
    fresh = _store(Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache("b")))
    for cid, b in blobs:
        assert fresh.read(cid) == b


def test_streamed_backup_restores_bit_exact_and_verifies(s3repo: S3Repo, tmp_path: Path) -> None:
    cfg = _streaming(s3repo)
    repo = _init(s3repo, cfg)
    img = disk_image(tmp_path / "d.img", [rand() for _ in range(96)] + [None, rand()])
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0)
    storage = _store(repo).storage
    (pack,) = [o for o in s3repo.bucket.list("repo/packs")]
    # one pack of ~24.25 MiB: every byte went as a 5 MiB part (the last shorter)
    assert storage.parts_uploaded == -(-pack.size // PART) >= 4
    assert storage.part_bytes == pack.size and not _uploads(s3repo)
    fresh = Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache("b"))
    restore_disk(fresh, r.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
    report = verify(fresh)
    assert report.ok, report


def test_a_small_pack_is_one_put(s3repo: S3Repo, tmp_path: Path) -> None:
    cfg = _streaming(s3repo)
    repo = _init(s3repo, cfg)
    disk_image(tmp_path / "d.img", [rand() for _ in range(8)])  # 2 MiB: under a part
    import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0)
    assert _store(repo).storage.parts_uploaded == 0
    assert len(list(s3repo.bucket.list("repo/packs"))) == 1


def _errors(reason: str) -> float:
    labels = {"operation": "write", "reason": reason}
    return REGISTRY.get_sample_value("vmbackup_repo_s3_errors_total", labels) or 0.0


def test_a_failing_part_falls_back_to_the_whole_upload(s3repo: S3Repo) -> None:
    cfg = _streaming(s3repo, whole_part_mib=64)  # the fallback: one PUT of the file
    repo = _init(s3repo, cfg)
    store = _store(repo)
    with socket.socket() as s:  # a port nobody listens on: connections refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = S3RepoStorage(
        replace(store.storage.loc, endpoint=f"http://127.0.0.1:{port}", max_attempts=1)
    )
    before = _errors("connect")
    pack = store.new_pack()
    pack.stream_to(dead, PART)
    assert pack.stream is not None
    blobs = _blobs(12, MiB)
    for i in range(0, 12, 4):
        pack.append([(cid, [b]) for cid, b in blobs[i : i + 4]])  # acked: never waits
    pack.stream.wait()
    assert pack.stream.failed is not None and pack.stream.sent == 0
    assert _errors("connect") > before  # counted
    pack.seal()  # the whole file, one PUT on the real endpoint
    store.sealed([pack.id])
    assert dead.parts_uploaded == 0 and store.storage.parts_uploaded == 0
    assert store.storage.exists(pack_object(pack.id)) and not _uploads(s3repo)
    fresh = _store(Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache("b")))
    for cid, b in blobs:
        assert fresh.read(cid) == b


def test_killed_mid_stream_commits_nothing_and_gc_aborts_the_upload(
    s3repo: S3Repo, tmp_path: Path
) -> None:
    cfg = _streaming(s3repo)
    _init(s3repo, cfg).close()
    img = disk_image(tmp_path / "d.img", [rand() for _ in range(48)] + [None])  # 12 MiB
    child = subprocess.run(
        [sys.executable, "-m", "tests.s3repo.kill_child", s3repo.url, str(cfg),
         str(s3repo.cache()), str(tmp_path / "d.img"), "part:2"],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    # part 1 went, part 2 killed the writer: no point, no pack, no index; an upload left
    elsewhere = Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache("b"))
    assert elsewhere.points() == []
    assert not list(s3repo.bucket.list("repo/packs"))
    assert not list(s3repo.bucket.list("repo/index"))
    (left,) = _uploads(s3repo)
    assert left.startswith("repo/packs/")
    # the same cache: the open pack is uploaded whole on open (the upload stays)
    repo = Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache())
    assert len(list(s3repo.bucket.list("repo/index"))) == 1
    assert [o.name for o in s3repo.bucket.list("repo/packs")] == [left]
    r = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0)
    assert r.new_chunks == 0 and r.known_chunks == 48  # every chunk was recovered
    # the killed job's "running" marker holds gc's cutoff before its upload began (the
    # leftover is kept) until the marker ends (the job's retry) or is stale (3 days)
    (killed,) = repo.running_jobs()
    _age_past_uploads(s3repo)
    assert gc(repo, grace=0).temps_removed == 0 and _uploads(s3repo) == [left]
    repo.end_job(killed["job_id"])
    _age_past_uploads(s3repo)
    report = gc(repo, grace=0)
    assert report.temps_removed >= 1 and not _uploads(s3repo)  # the leftover aborted
    fresh = Repository.open(s3repo.url, s3_config=cfg, cache_dir=s3repo.cache("c"))
    restore_disk(fresh, r.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img
