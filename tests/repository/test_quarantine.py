"""Damaged chunks are quarantined by verify and healed by the next backup, not reused.

Real repositories on real files; the healing backup goes through the real writer service
on the real RabbitMQ (have-query, chunk batch, commit) as a proxy's does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.amqp import BrokerParams
from common.messages import DiskCommit
from coordinator.planner import FULL, decide
from coordinator.previous_points import History
from repository.gc import gc
from repository.import_disk import import_disk
from repository.repair import repair
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from repository_writer.service import WriterService
from tests.repository.conftest import CS, flip_bit, make_image
from tests.repository.test_cli import vmb
from tests.repository.test_writer_service import Client, N, _chunks, _request

DISK = 2000


@pytest.fixture
def repo(v2_repo: Repository) -> Repository:
    """Format 2: this module is the chunk files' quarantine (packs: test_packs.py)."""
    return v2_repo


@pytest.fixture
def writer(broker: BrokerParams, tmp_path: Path) -> Iterator[tuple[Repository, Client]]:
    # chunk files: this module is format 2's quarantine (packs: test_packs.py)
    repo = Repository.init(tmp_path / "repo", chunk_size=CS, compression_level=1, packs=False)
    service = WriterService(Repository.open(repo.path), broker, n_shards=N, shards="0-3")
    service.start()
    client = Client(broker)
    yield repo, client
    client.close()
    service.close()


def _backup(client: Client, repo: Repository, datas: list[bytes], job: str, t: float) -> str:
    """One full backup of ``datas`` as a proxy makes it: have-query, send the absent, commit."""
    for shard, chunks in _chunks(repo, datas).items():
        present = client.have(shard, [c[0] for c in chunks]).present
        todo = [c for c, p in zip(chunks, present, strict=True) if not p]
        if todo:
            ack = client.batch(shard, todo)
            assert ack.ok, ack.error
    ids = [repo.chunk_id(d) for d in datas]
    disk = DiskCommit(
        key=DISK,
        capacity=len(datas) * CS,
        change_id="",
        base_point_id="",
        entries=list(enumerate(ids)),
        info={},
    )
    rep = client.commit({**_request([disk], job=job), "snapshot_time": t})
    assert rep.ok, rep.error
    return str(rep.point_id)


def _restored(repo: Repository, point_id: str, out: Path) -> bytes:
    restore_disk(repo, point_id, DISK, out, sync=False)
    return out.read_bytes()


def test_verify_quarantines_and_the_next_backup_heals(
    writer: tuple[Repository, Client], tmp_path: Path
) -> None:
    repo, client = writer
    rnd = __import__("random").Random(19)
    datas = [rnd.randbytes(CS) for _ in range(4)]
    old = _backup(client, repo, datas, "job-1", 1700000000.0)
    victim = repo.chunk_id(datas[2])
    flip_bit(repo.chunks.path_of(victim), 100)  # bit rot inside the payload

    rep = verify(repo)
    assert rep.quarantined == [victim.hex()]
    assert not repo.chunks.path_of(victim).exists()
    moved = repo.quarantine.path_of(victim)
    record = json.loads(moved.with_name(moved.name + ".json").read_bytes())
    assert record["id"] == victim.hex() and "checksum" in record["reason"]
    assert record["size"] == moved.stat().st_size > 0
    damaged = [p.obj for p in rep.problems if p.kind == "damaged-point"]
    assert damaged == [f"4200-aa/{old} disk {DISK} chunk #2 (offset {2 * CS})"]

    # The have-query no longer answers "present": the next backup sends and stores it.
    ((shard, _),) = _chunks(repo, [datas[2]]).items()
    assert client.have(shard, [victim]).present == [False]
    new = _backup(client, repo, datas, "job-2", 1700003600.0)
    assert new != old
    assert _restored(repo, new, tmp_path / "new.img") == b"".join(datas)
    assert _restored(repo, old, tmp_path / "old.img") == b"".join(datas)  # healed
    assert verify(repo).ok

    r = repair(repo)
    assert r.ok and r.healed == [victim.hex()] and not r.missing_uses
    assert not moved.exists() and list(repo.quarantine) == []
    cli = vmb("repo", "repair", "--repo", str(repo.path), "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["result"]["points_needing_data"] == []


def test_without_a_new_backup_restore_fails_clearly_and_repair_lists_the_point(
    tmp_path: Path,
) -> None:
    repo_dir = tmp_path / "repo"
    img = tmp_path / "d.img"
    data = make_image(img, "rtrr")
    init = ("repo", "init", str(repo_dir), "--chunk-size", "256K", "--chunk-files")
    assert vmb(*init).returncode == 0
    r = vmb(
        "repo", "import-disk", "--repo", str(repo_dir), "--vm", "web", "--disk", "2000", str(img)
    )
    assert r.returncode == 0, r.stderr
    repo = Repository.open(repo_dir)
    (point,) = repo.points()
    victim = repo.chunk_id(data[CS : 2 * CS])
    with open(repo.chunks.path_of(victim), "r+b") as fh:
        fh.truncate(200)  # cut short: a header and part of the payload

    r = vmb("verify", "--repo", str(repo_dir))
    assert r.returncode == 1
    assert f"quarantined: chunk {victim.hex()}".encode() in r.stdout
    assert b"1 chunk(s) quarantined" in r.stdout
    assert repo.quarantine.path_of(victim).stat().st_size == 200  # kept as found

    out = tmp_path / "out.img"
    r = vmb(
        "restore", "--repo", str(repo_dir), "--point", point.id, "--disk", "2000", "--out", str(out)
    )
    assert r.returncode == 1 and not out.exists()
    err = r.stderr.decode()
    for needle in (victim.hex(), point.id, "disk 2000", f"chunk #1 (offset {CS})", "quarantined"):
        assert needle in err, err

    # gc keeps the evidence and says the point names a quarantined chunk.
    g = gc(repo, grace=0)
    assert any(victim.hex() in m and "quarantined" in m for m in g.missing)
    assert repo.quarantine.path_of(victim).exists()

    r = vmb("repo", "repair", "--repo", str(repo_dir), "--json")
    assert r.returncode == 1
    full = json.loads(r.stdout)
    assert (full["ok"], full["exit"], full["error"]["cause"]) == (False, 1, "damage")
    doc = full["result"]
    assert doc["still_damaged"] == [victim.hex()] and not doc["ok"]
    assert doc["points_needing_data"] == [
        {
            "vm_uuid": point.vm_uuid,
            "point_id": point.id,
            "disk": 2000,
            "chunk_index": 1,
            "offset": CS,
            "chunk_id": victim.hex(),
            "quarantined": True,
        }
    ]
    r = vmb("repo", "repair", "--repo", str(repo_dir))
    assert r.returncode == 1 and f"needs data: {point.vm_uuid}/{point.id}".encode() in r.stdout

    # The data comes back (a local import this time): the old point is healed.
    assert import_disk(repo, "web", 2000, img).new_chunks == 1
    assert vmb("repo", "repair", "--repo", str(repo_dir)).returncode == 0
    assert _restored(repo, point.id, out) == data


@pytest.mark.parametrize("size", [0, 32])
def test_store_replaces_an_empty_or_header_only_chunk_file(
    repo: Repository, tmp_path: Path, size: int
) -> None:
    """A chunk file cut to nothing (or a bare header) by a crash is not a chunk: the
    have-query says absent and the next store writes a good copy over it."""
    img = tmp_path / "d.img"
    data = make_image(img, "rr")
    point = import_disk(repo, "vm", DISK, img).point_id
    victim = repo.chunk_id(data[:CS])
    os.truncate(repo.chunks.path_of(victim), size)
    assert repo.has_chunks([victim, repo.chunk_id(data[CS:])]) == [False, True]
    res = repo.store_chunks([(victim, CS, False, data[:CS])])
    assert (res.stored, res.known) == (1, 0)
    assert _restored(repo, point, tmp_path / "o.img") == data
    assert verify(repo).ok


def test_the_planner_takes_a_full_when_the_previous_point_names_a_quarantined_chunk(
    repo: Repository, tmp_path: Path
) -> None:
    """An incremental would carry the damaged id over from its base (and its commit would
    fail on the missing chunk): the next backup of that disk is a full, which heals."""
    img = tmp_path / "d.img"
    data = make_image(img, "rrr")
    point = repo.get_point(import_disk(repo, "vm", DISK, img).point_id)
    change = "52 aa/1"
    first = History(repo).previous(point.vm_uuid, DISK)
    assert first is not None and first.damaged_chunks == 0
    flip_bit(repo.chunks.path_of(repo.chunk_id(data[CS : 2 * CS])), 64)
    assert verify(repo).quarantined
    prev = History(repo).previous(point.vm_uuid, DISK)
    assert prev is not None and prev.damaged_chunks == 1
    d = decide(prev, change, len(data))
    assert d.mode == FULL and d.code == "base_damaged" and point.id in d.reason
    import_disk(repo, "vm", DISK, img)  # the full re-supplies the data
    assert repair(repo).ok
    prev = History(repo).previous(point.vm_uuid, DISK)
    assert prev is not None and prev.damaged_chunks == 0
    # the usual rules again (import-disk records no changeId, hence that reason)
    assert decide(prev, change, len(data)).code == "no_change_id"
