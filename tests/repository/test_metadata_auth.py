"""Authenticated repository metadata (format version 2), attacked on real repositories.

Maps carry a tag keyed with a key derived from the repository keys (encrypted
repositories) and bound to repository, VM, point and disk; the config carries a
checksum and a MAC and is validated on open like on init.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import blake3
import pytest

from common.packed_entries import pack_entries
from repository import keyfile
from repository.errors import CorruptObjectError, RepositoryError
from repository.fixed_index import DiskMap
from repository.import_disk import import_disk
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository
from repository.restore import restore_disk
from repository.staging import request_dir_name
from repository.verify import verify
from tests.repository.conftest import CS, make_image, point_file
from tests.repository.test_cli import vmb

PW = "correct horse"


def _swap_and_rechecksum(mapfile: Path, a: int, b: int) -> None:
    """The attack: swap entries a and b, then recompute bytes 32..63 the way the map
    format documents its checksum (BLAKE3 of header bytes 0..31 and the entries)."""
    data = bytearray(mapfile.read_bytes())
    ea = data[64 + 32 * a : 64 + 32 * (a + 1)]
    eb = data[64 + 32 * b : 64 + 32 * (b + 1)]
    assert ea != eb  # distinct chunks: the swap changes the restored bytes
    data[64 + 32 * a : 64 + 32 * (a + 1)] = eb
    data[64 + 32 * b : 64 + 32 * (b + 1)] = ea
    data[32:64] = blake3.blake3(bytes(data[:32]) + bytes(data[64:])).digest()
    mapfile.write_bytes(bytes(data))


def _map_file(repo: Repository, point_id: str, disk: int) -> Path:
    return point_file(repo, point_id, f"disk-{disk}.map")


def test_swapped_map_entries_are_refused_by_restore_and_reported_by_verify(
    enc_repo: Repository, tmp_path: Path
) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rrrr", seed=7)
    r_id = import_disk(enc_repo, "vm", 1, img).point_id
    mapfile = _map_file(enc_repo, r_id, 1)
    original = mapfile.read_bytes()
    _swap_and_rechecksum(mapfile, 0, 2)
    repo = Repository.open(enc_repo.path, PW)
    out = tmp_path / "out.img"
    with pytest.raises(CorruptObjectError, match="fails its authentication") as exc:
        restore_disk(repo, r_id, 1, out)
    assert str(mapfile) in str(exc.value)
    assert not out.exists()  # no wrong bytes written
    rep = verify(repo)
    assert [p.kind for p in rep.problems] == ["map"]
    assert str(mapfile) in rep.problems[0].detail
    # the commands an operator runs: non-zero exit, the map named
    env = {"VMBACKUP_PASSPHRASE": PW}
    r = vmb("verify", "--repo", str(repo.path), env=env)
    assert r.returncode == 1 and str(mapfile).encode() in r.stdout, r.stdout
    r = vmb(
        "restore",
        "--repo",
        str(repo.path),
        "--point",
        r_id,
        "--disk",
        "1",
        "--out",
        str(out),
        env=env,
    )
    assert r.returncode == 1 and b"fails its authentication" in r.stderr, r.stderr
    assert not out.exists()
    # entries swapped back but the checksum still the attacker's: refused
    _swap_and_rechecksum(mapfile, 0, 2)
    with pytest.raises(CorruptObjectError, match="fails its authentication"):
        restore_disk(repo, r_id, 1, out)
    mapfile.write_bytes(original)  # the map as the writer made it restores the image
    restore_disk(repo, r_id, 1, out)
    assert out.read_bytes() == data


def test_a_map_moved_to_another_point_disk_or_repository_is_refused(
    tmp_path: Path,
) -> None:
    repo = Repository.init(tmp_path / "r", chunk_size=CS, passphrase=PW)
    img = tmp_path / "d.img"
    make_image(img, "rrr", seed=1)
    p1 = import_disk(repo, "vm-a", 1, img).point_id
    make_image(img, "rrr", seed=2)
    p2 = import_disk(repo, "vm-b", 1, img).point_id
    make_image(img, "rrr", seed=3)
    p3 = import_disk(repo, "vm-a", 2, img).point_id  # same VM, another disk key
    # another point (same capacity, same disk key): refused
    good = _map_file(repo, p2, 1).read_bytes()
    _map_file(repo, p2, 1).write_bytes(_map_file(repo, p1, 1).read_bytes())
    with pytest.raises(CorruptObjectError, match="fails its authentication"):
        repo.load_map(p2, 1)
    vm_b = repo.point_store.find(p2).vm_uuid
    assert [p.obj for p in verify(repo).problems] == [f"{vm_b}/{p2} disk 1"]
    _map_file(repo, p2, 1).write_bytes(good)
    # another disk: p3's disk 2 map, renamed into p1 as its disk 1 map
    good = _map_file(repo, p1, 1).read_bytes()
    _map_file(repo, p1, 1).write_bytes(_map_file(repo, p3, 2).read_bytes())
    with pytest.raises(CorruptObjectError, match="fails its authentication"):
        repo.load_map(p1, 1)
    _map_file(repo, p1, 1).write_bytes(good)
    assert verify(repo).ok
    # another repository with the same passphrase and the same data: other keys
    other = Repository.init(tmp_path / "o", chunk_size=CS, passphrase=PW)
    make_image(img, "rrr", seed=1)
    q1 = import_disk(other, "vm-a", 1, img).point_id
    target = point_file(other, q1, "disk-1.map")
    target.write_bytes(_map_file(repo, p1, 1).read_bytes())
    with pytest.raises(CorruptObjectError, match="fails its authentication"):
        other.load_map(q1, 1)
    # point metadata moved to another point: its authenticated content names its place
    meta = point_file(repo, p2, "meta")
    meta.write_bytes((point_file(repo, p1, "meta")).read_bytes())
    with pytest.raises(CorruptObjectError, match="does not match its location"):
        repo.get_point(p2)


def test_unencrypted_maps_are_bound_to_their_place_too(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    make_image(img, "rr", seed=1)
    p1 = import_disk(repo, "vm-a", 1, img).point_id
    make_image(img, "rr", seed=2)
    p2 = import_disk(repo, "vm-b", 1, img).point_id
    _map_file(repo, p2, 1).write_bytes(_map_file(repo, p1, 1).read_bytes())
    with pytest.raises(CorruptObjectError, match=r"checksum mismatch.*moved"):
        repo.load_map(p2, 1)
    assert [p.kind for p in verify(repo).problems] == ["map"]


def _flip_all(path: Path, passphrase: str | None) -> tuple[int, list[str]]:
    """Open after each single-bit flip of the config; (flips, those accepted)."""
    cfg = path / "config"
    orig = cfg.read_bytes()
    accepted: list[str] = []
    n = 0
    try:
        for pos in range(len(orig)):
            for bit in range(8):
                bad = bytearray(orig)
                bad[pos] ^= 1 << bit
                cfg.write_bytes(bytes(bad))
                n += 1
                try:
                    Repository.open(path, passphrase)
                except RepositoryError as exc:
                    if "config" not in str(exc) or str(cfg) not in str(exc):
                        accepted.append(f"byte {pos} bit {bit}: unclear error {exc}")
                    continue
                accepted.append(f"byte {pos} bit {bit}: {bytes(bad[pos : pos + 1])!r} accepted")
    finally:
        cfg.write_bytes(orig)
    return n, accepted


@pytest.mark.parametrize("encrypted", [False, True])
def test_every_single_bit_flip_of_the_config_is_refused(tmp_path: Path, encrypted: bool) -> None:
    pw = PW if encrypted else None
    # a cheap scrypt: hundreds of flips reach the MAC check, which needs the key file
    r = Repository.init(tmp_path / "r", chunk_size=CS, passphrase=pw, kdf_n=1 << 10)
    n, accepted = _flip_all(r.path, pw)
    assert n == 8 * len((r.path / "config").read_bytes()) > 1000
    assert accepted == []
    assert Repository.open(r.path, pw).config == r.config  # the original still opens


def _write_config(path: Path, doc: dict) -> None:
    """A config with a correctly recomputed checksum (what an edit by hand could do)."""
    body = {k: v for k, v in doc.items() if k not in ("checksum", "mac")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    doc = dict(doc, checksum=blake3.blake3(b"vmbackup-config-v2\0" + canonical).hexdigest())
    (path / "config").write_bytes(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("chunk_size", 262145, "'chunk_size'.*power of two"),
        ("chunk_size", 128 * 1024, "'chunk_size'"),
        ("compression_level", 23, "'compression_level'"),
        ("compression_level", True, "'compression_level'"),
        ("compression_level", -11, "'compression_level'.*-10..22"),
        ("id", "not-a-uuid", "'id'"),
        ("created", "yesterday", "'created'"),
        ("encryption", "rot13", "'encryption'"),
        ("colour", "blue", "'colour': unknown key"),
    ],
)
def test_open_validates_every_field_like_init(
    repo: Repository, key: str, value: object, message: str
) -> None:
    doc = json.loads((repo.path / "config").read_bytes())
    _write_config(repo.path, dict(doc, **{key: value}))
    with pytest.raises(CorruptObjectError, match=message) as exc:
        Repository.open(repo.path)
    assert str(repo.path / "config") in str(exc.value)
    _write_config(repo.path, doc)  # the same writer with good fields: accepted
    assert Repository.open(repo.path).config == repo.config


def test_an_encrypted_config_rewritten_with_a_valid_checksum_fails_its_mac(
    enc_repo: Repository,
) -> None:
    doc = json.loads((enc_repo.path / "config").read_bytes())
    _write_config(enc_repo.path, dict(doc, compression_level=1))
    with pytest.raises(CorruptObjectError, match="'mac': fails its authentication"):
        Repository.open(enc_repo.path, PW)


def test_key_file_and_directories_are_private_and_reprs_hold_no_keys(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        r = Repository.init(tmp_path / "r", chunk_size=CS, passphrase=PW)
    finally:
        os.umask(old)
    assert stat.S_IMODE((r.path / "keys" / "repokey").stat().st_mode) == 0o600
    for d in (
        r.path,
        *(r.path / s for s in ("packs", "index", "points", "running", "locks", "keys")),
    ):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    keys = keyfile.load(r.path / "keys" / "repokey", PW.encode())
    secrets = [keys.enc_key, keys.id_key]
    for text in (repr(r), repr(keys), str(keys), repr(r.auth), repr(r.point_store.auth)):
        for s in secrets:
            assert s.hex() not in text and repr(s) not in text, text
    assert "encrypted=True" in repr(r)


def test_staged_commit_entries_changed_on_disk_are_refused(enc_repo: Repository) -> None:
    """Staged parts become an authenticated map at commit: swapping entries in a part
    file (recomputing its unkeyed checksum, as the format 1 layout documents) must not
    make a point that restores other bytes."""
    rnd = random.Random(3)
    ids = []
    for _ in range(3):
        data = rnd.randbytes(CS)
        ids.append(enc_repo.chunk_id(data))
        enc_repo.store_chunk(ids[-1], CS, False, data)
    enc_repo.stage_commit_part("req-1", 1, 0, pack_entries(list(enumerate(ids))))
    part = enc_repo.path / "staging" / request_dir_name("req-1") / "disk-1.part-0"
    forged = pack_entries([(0, ids[1]), (1, ids[0]), (2, ids[2])])
    part.write_bytes(part.read_bytes()[:8] + forged + blake3.blake3(forged).digest())
    req = PointCommit(
        request_id="req-1",
        job_id="j",
        vcenter="vc",
        vm_uuid="vm-1",
        vm_moref="vm-1",
        vm_name="vm",
        vm_config=b"",
        status="complete",
        snapshot_time=1000.0,
        failed_disks=[],
        disks=[
            DiskChanges(key=1, capacity=3 * CS, change_id="", base_point_id="", entries=[], parts=1)
        ],
    )
    with pytest.raises(CorruptObjectError, match="fails its authentication") as exc:
        enc_repo.commit_point(req)
    assert str(part) in str(exc.value)
    assert enc_repo.points() == []  # no point made from the forged entries


def test_a_map_of_another_chunk_size_is_refused(repo: Repository, tmp_path: Path) -> None:
    """The chunk size is fixed for the repository's life: a map that says otherwise
    (here with a correct unkeyed tag, as anyone can make in an unencrypted
    repository) would restore every chunk at the wrong offset."""
    img = tmp_path / "d.img"
    make_image(img, "rrrr", seed=4)
    pid = import_disk(repo, "vm", 1, img).point_id
    ref = repo.point_store.find(pid)
    good = repo.load_map(pid, 1)
    other = DiskMap(2 * CS, good.capacity)
    for i in range(len(other)):
        other.set(i, good.get(2 * i))
    tag = repo.point_store.map_tagger(ref.vm_uuid, pid, 1)
    point_file(repo, pid, "disk-1.map").write_bytes(b"".join(other.encode(tag)))
    with pytest.raises(CorruptObjectError, match=f"chunk size {2 * CS}, the repository's is {CS}"):
        repo.load_map(pid, 1)
