"""A version-3 repository: chunks in pack files, found through index files and logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from repository import pack_format
from repository.errors import MissingChunkError
from repository.import_disk import import_disk
from repository.pack_store import PackStore
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from tests.repository.conftest import CS, make_image

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def packed(path: Path, pack_size: int = MiB, passphrase: str | None = None) -> Repository:
    return Repository.init(
        path,
        chunk_size=CS,
        compression_level=1,
        packs=True,
        pack_size=pack_size,
        passphrase=passphrase,
        kdf_n=2**10,
    )


def _store(repo: Repository, n: int, batch: int = 2) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        data = os.urandom(CS)
        out.append((repo.chunk_id(data), data))
    for i in range(0, n, batch):
        repo.store_raw_chunks(out[i : i + batch])
    return out


def _pack_files(repo: Repository) -> list[Path]:
    return sorted(p for p in (repo.path / "packs").glob("??/*") if p.is_file())


def test_chunks_go_to_few_packs_and_read_back(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r")
    stored = _store(repo, 12)  # 3 MiB of random data at a 1 MiB pack target
    assert not (repo.path / "chunks").exists()
    sealed = _pack_files(repo)
    assert 2 <= len(sealed) <= 3
    for f in sealed:  # each sealed pack carries its own index
        assert pack_format.parse_trailer(f.read_bytes(), str(f))
    assert repo.has_chunks([c for c, _ in stored] + [bytes(32)]) == [True] * 12 + [False]
    for cid, data in stored:
        assert repo.read_chunk(cid) == data
    # a duplicate store writes nothing
    assert repo.store_raw_chunks(stored[:3]).stored == 0


def test_another_process_sees_chunks_of_an_open_pack(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r", pack_size=64 * MiB)
    stored = _store(repo, 3)  # all in the open pack
    assert not _pack_files(repo)
    other = Repository.open(repo.path)  # another view, as another writer has
    assert other.has_chunks([c for c, _ in stored]) == [True] * 3
    assert other.read_chunk(stored[0][0]) == stored[0][1]
    # once sealed, found through the index file
    repo.close()
    assert len(_pack_files(repo)) == 1
    assert other.has_chunks([c for c, _ in stored]) == [True] * 3
    assert other.read_chunk(stored[2][0]) == stored[2][1]


def test_import_restore_and_incremental_on_packs(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r", passphrase="pw")
    img = tmp_path / "d.img"
    data = make_image(img, "rrztdrrrzs")
    r1 = import_disk(repo, "vm", 2000, img)
    grown = data[: 3 * CS] + os.urandom(CS) + data[4 * CS :]
    img.write_bytes(grown)
    r2 = import_disk(repo, "vm", 2000, img)
    assert r2.new_chunks == 1
    for point, want in ((r1.point_id, data), (r2.point_id, grown)):
        out = tmp_path / f"{point}.img"
        restore_disk(repo, point, 2000, out)
        assert out.read_bytes() == want
    again = Repository.open(repo.path, "pw")
    assert verify(again).ok


def test_index_files_are_merged(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r", pack_size=MiB)
    stored = _store(repo, 4 * 20)  # ~20 sealed packs, each with its index file
    assert isinstance(repo.chunks, PackStore)
    assert len(list((repo.path / "index").glob("*.idx"))) <= 17
    other = Repository.open(repo.path)
    assert other.has_chunks([c for c, _ in stored]) == [True] * len(stored)


def test_a_killed_writer_s_open_pack_is_recovered(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r", pack_size=64 * MiB)
    code = (
        "import os, sys\n"
        "from repository.repository import Repository\n"
        "r = Repository.open(sys.argv[1])\n"
        "d = [os.urandom(262144) for _ in range(3)]\n"
        "r.store_raw_chunks([(r.chunk_id(x), x) for x in d])\n"
        "sys.stdout.write(''.join(r.chunk_id(x).hex() + '\\n' for x in d)); sys.stdout.flush()\n"
        "import time; time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(repo.path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    ids = [bytes.fromhex(child.stdout.readline().decode().strip()) for _ in range(3)]
    # alive: its pack stays open, yet its acknowledged chunks are found
    assert Repository.open(repo.path).has_chunks(ids) == [True] * 3
    assert not _pack_files(repo)
    child.send_signal(signal.SIGKILL)
    child.wait()
    # its log lost (as a power loss may lose it): recovery reads the pack's records
    for log in (repo.path / "packs" / "open").glob("*.log"):
        log.write_bytes(b"")
    after = Repository.open(repo.path)  # a writable open recovers
    assert len(_pack_files(repo)) == 1
    assert not list((repo.path / "packs" / "open").iterdir())
    assert after.has_chunks(ids) == [True] * 3
    after.read_chunk(ids[1])


def test_a_torn_tail_is_cut_off_by_recovery(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r", pack_size=64 * MiB)
    stored = _store(repo, 2)
    assert isinstance(repo.chunks, PackStore)
    pack = repo.chunks._free[0]
    # a record half written when the writer died
    with open(pack.path, "ab") as fh:
        fh.write(pack_format.record_header(os.urandom(32), 5000) + os.urandom(100))
    os.close(pack._log)  # the writer is gone (its lock with it)
    os.close(pack._fd)
    repo.chunks._free.clear()
    after = Repository.open(repo.path)
    assert after.has_chunks([c for c, _ in stored]) == [True, True]
    assert after.read_chunk(stored[1][0]) == stored[1][1]
    (f,) = _pack_files(repo)
    assert len(pack_format.parse_trailer(f.read_bytes(), str(f))) == 2


def test_missing_pack_names_the_pack(tmp_path: Path) -> None:
    repo = packed(tmp_path / "r")
    stored = _store(repo, 4)
    repo.close()
    for f in _pack_files(repo):
        f.unlink()
    with pytest.raises(MissingChunkError, match=r"pack .* is gone"):
        Repository.open(repo.path).read_chunk(stored[0][0])


def test_gc_drops_and_rewrites_packs_keeping_every_point(tmp_path: Path) -> None:
    from repository.gc import gc

    repo = packed(tmp_path / "r", pack_size=MiB)
    img = tmp_path / "d.img"
    keep = make_image(img, "rrrrrrrr", seed=1)
    r_keep = import_disk(repo, "keep", 2000, img)
    make_image(img, "rrrrrrrr", seed=2)
    r_drop = import_disk(repo, "drop", 2000, img)
    repo.close()
    n_before = len(_pack_files(repo))
    repo.delete_point(r_drop.point_id)
    report = gc(repo, grace=0)
    assert report.chunks_removed == 8 and report.packs_removed + report.packs_rewritten >= 1
    assert not report.missing
    out = tmp_path / "o.img"
    restore_disk(repo, r_keep.point_id, 2000, out)
    assert out.read_bytes() == keep
    # the dropped packs stay (unindexed) until a later gc finds them older than its cutoff,
    # and the report says so: what left the index is not yet space on disk
    assert len(_pack_files(repo)) >= n_before
    on_disk = sum(f.stat().st_size for f in _pack_files(repo))
    assert report.bytes_freed > 0 and report.bytes_deleted == 0
    assert report.bytes_pending >= report.bytes_freed
    assert report.pending_until >= report.cutoff
    second = gc(repo, grace=0)
    assert len(_pack_files(repo)) < n_before
    assert second.bytes_deleted == report.bytes_pending and second.bytes_pending == 0
    assert on_disk - sum(f.stat().st_size for f in _pack_files(repo)) == report.bytes_pending
    assert verify(Repository.open(repo.path)).ok
    restore_disk(Repository.open(repo.path), r_keep.point_id, 2000, out)
    assert out.read_bytes() == keep


def test_gc_keeps_an_unreferenced_chunk_a_running_backup_was_told_about(tmp_path: Path) -> None:
    from repository.gc import gc

    repo = packed(tmp_path / "r", pack_size=MiB)
    stored = _store(repo, 8)  # no point names them: garbage, unless someone relies on one
    repo.close()
    # stored well before the backup below began: a pack sealed in the same clock tick as
    # its start would count as new and be kept whole (gc keeps packs newer than its cutoff)
    for f in _pack_files(repo):
        st = f.stat()
        os.utime(f, (st.st_atime - 60, st.st_mtime - 60))
    writer = Repository.open(repo.path)
    writer.begin_job("running")  # a backup in progress: gc's cutoff is before its start
    assert writer.has_chunks([stored[5][0]]) == [True]  # a have-query: "present"
    gc(repo, grace=0)
    # the touch log shows it was needed after the cutoff, so it stays; the rest goes
    assert writer.has_chunks([c for c, _ in stored]) == [i == 5 for i in range(8)]
    assert writer.read_chunk(stored[5][0]) == stored[5][1]


def test_a_damaged_blob_is_quarantined_and_the_pack_stays_usable(tmp_path: Path) -> None:
    from repository.repair import repair

    repo = packed(tmp_path / "r", pack_size=64 * MiB)
    img = tmp_path / "d.img"
    data = make_image(img, "rrrr", seed=3)
    r = import_disk(repo, "vm", 2000, img)
    repo.close()
    (f,) = _pack_files(repo)
    entries = pack_format.parse_trailer(f.read_bytes(), str(f))
    victim = min(entries, key=lambda e: e.offset)
    with open(f, "r+b") as fh:  # one flipped byte in one blob's payload
        fh.seek(victim.offset + 100)
        b = fh.read(1)
        fh.seek(victim.offset + 100)
        fh.write(bytes([b[0] ^ 1]))
    rep = verify(Repository.open(repo.path))
    assert rep.quarantined == [victim.id.hex()]
    fresh = Repository.open(repo.path)
    assert fresh.has_chunks([e.id for e in entries]).count(False) == 1
    assert fresh.quarantined_ids() == {victim.id}
    # a backup of the same data heals it: only the damaged chunk is stored again
    again = import_disk(fresh, "vm", 2000, img, job_id="second")
    assert again.new_chunks == 1
    assert repair(fresh).healed == [victim.id.hex()]
    out = tmp_path / "o.img"
    restore_disk(fresh, r.point_id, 2000, out)
    assert out.read_bytes() == data


def test_cli_on_a_pack_repository(tmp_path: Path) -> None:
    from tests.repository.test_cli import vmb

    repo = str(tmp_path / "repo")
    img = tmp_path / "d.img"
    data = make_image(img, "rtzrdsrrrr")
    r = vmb("repo", "init", repo, "--chunk-size", "256K", "--packs", "--pack-size", "1M")
    assert r.returncode == 0, r.stderr
    for _ in range(2):
        r = vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000", str(img))
        assert r.returncode == 0, r.stderr
    # the importing process sealed its packs as it exited: nothing is left open
    assert not list((tmp_path / "repo" / "packs" / "open").iterdir())
    doc = json.loads(vmb("repo", "list", "--repo", repo, "--json").stdout)["result"]
    assert len(doc["points"]) == 2 and doc["totals"]["chunks"] == 8
    pid = doc["points"][1]["id"]
    r = vmb("restore", "--repo", repo, "--point", pid, "--disk", "2000", "--out", "-")
    assert r.returncode == 0 and r.stdout == data
    assert vmb("verify", "--repo", repo).returncode == 0
    assert vmb("gc", "--repo", repo).returncode == 0
    # a point whose chunks nothing else names, pruned: gc unindexes its pack and says the
    # space comes back with the next gc; that one deletes it and says so
    make_image(img, "rrrr", seed=9)
    args = ["--repo", repo, "--vm", "old", "--disk", "2000", str(img)]
    assert vmb("repo", "import-disk", *args).returncode == 0
    make_image(img, "zzzz", seed=9)
    assert vmb("repo", "import-disk", *args).returncode == 0
    assert vmb("prune", "--repo", repo, "--keep-last", "1").returncode == 0  # per VM
    r = vmb("gc", "--repo", repo, "--grace", "0")
    assert r.returncode == 0 and b"stay on disk" in r.stdout and b"deleted" not in r.stdout
    r = vmb("gc", "--repo", repo, "--grace", "0")
    assert r.returncode == 0 and b"deleted 1.0 MiB of pack files" in r.stdout, r.stdout
    assert vmb("repo", "init", str(tmp_path / "x"), "--packs", "--pack-size", "10K").returncode
