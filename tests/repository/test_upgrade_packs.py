"""`vmbackup repo upgrade` from version 2 (chunk files) to 3 (packs): SIGKILLed at random
moments many times, the half-converted repository is read and written between kills, and
the last run leaves every point restoring bit-exact from packs with no chunk file left
and no chunk packed twice."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repository.errors import LockedError
from repository.fsutil import lock_file
from repository.import_disk import import_disk
from repository.pack_store import PackStore
from repository.repository import Repository
from repository.restore import restore_disk
from repository.upgrade_packs import upgrade_to_packs
from repository.verify import verify
from tests.repository.conftest import CS, make_image

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
KILLS = 12
PW = "correct horse"


def _v2_repo(
    tmp_path: Path, pw: str | None = None, scale: int = 1
) -> tuple[Repository, dict[str, bytes]]:
    """A version-2 repository: three VMs, fulls and an incremental, duplicates and zeros."""
    repo = Repository.init(
        tmp_path / "repo",
        chunk_size=CS,
        compression_level=1,
        passphrase=pw,
        packs=False,
        kdf_n=1 << 10,
    )
    images: dict[str, bytes] = {}
    for n, pattern in enumerate(
        ["r" * 30 * scale + "zt", "rdr" * 10 * scale + "s", "t" + "r" * 20 * scale]
    ):
        img = tmp_path / f"img{n}"
        data = make_image(img, pattern, seed=n)
        images[import_disk(repo, f"vm{n}", 2000, img).point_id] = data
        if n == 0:  # an incremental: a few chunks changed
            changed = bytearray(data)
            changed[5 * CS : 5 * CS + 9] = b"changed!!"
            img.write_bytes(changed)
            images[import_disk(repo, "vm0", 2000, img).point_id] = bytes(changed)
    return repo, images


def _cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmbackup", "repo", "upgrade", "--repo", str(path), *extra]


def _chunk_files(path: Path) -> int:
    return len(list(path.glob("chunks/???/" + "[0-9a-f]" * 64)))


def _converting(path: Path, child: subprocess.Popen[bytes], seen: set[str]) -> bool:
    """Wait until ``child`` has opened a pack (a name not in ``seen``): it is converting.
    False if it exited first."""
    while child.poll() is None:
        names = {p.name for p in (path / "packs" / "open").glob("*.pack")} - seen
        if names:
            seen.update(names)
            return True
        time.sleep(0.002)
    return False


def _restore_all(repo: Repository, images: dict[str, bytes], out: Path) -> None:
    for pid, data in images.items():
        restore_disk(repo, pid, 2000, out)
        assert out.read_bytes() == data, pid


@pytest.mark.slow
def test_upgrade_to_packs_survives_random_kills(tmp_path: Path) -> None:
    repo, images = _v2_repo(tmp_path, scale=3)
    path = repo.path
    chunks_before = _chunk_files(path)
    assert chunks_before > 200
    # how long the conversion takes here (on a copy), so the kills spread over all of it
    shutil.copytree(path, tmp_path / "copy")
    trial = subprocess.Popen(
        _cmd(tmp_path / "copy", "--pack-size", "1M"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _converting(tmp_path / "copy", trial, set())
    t0 = time.monotonic()
    assert trial.wait(timeout=300) == 0
    took = time.monotonic() - t0
    rnd = random.Random(2026)
    mid_conversion = 0
    extra: dict[str, bytes] = {}
    seen: set[str] = set()
    for n in range(KILLS):
        child = subprocess.Popen(
            _cmd(path, "--pack-size", "1M", "--json"),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _converting(path, child, seen):
            time.sleep(rnd.uniform(0.0, took / 6))  # about a 12th of it per run
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        if child.returncode == 0:
            break  # finished before the kill: the checks after the loop still hold
        config = json.loads((path / "config").read_bytes())
        left = _chunk_files(path)
        if config["version"] == 3 and 0 < left < chunks_before:
            mid_conversion += 1
        # half-converted: every command reads and writes it
        half = Repository.open(path)
        report = verify(half)
        assert report.ok, [str(p) for p in report.problems]
        pid = rnd.choice(sorted(images))
        restore_disk(half, pid, 2000, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == images[pid]
        img = tmp_path / f"new{n}"
        data = make_image(img, "rr" + "d", seed=100 + n)
        extra[import_disk(half, f"vm-new{n}", 2000, img).point_id] = data
        half.close()
    assert mid_conversion >= 3, f"only {mid_conversion} kills landed mid-conversion"
    done = subprocess.run(
        _cmd(path, "--pack-size", "1M", "--json"),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["result"]["packs"]["finished"]
    assert not (path / "chunks").exists()
    up = Repository.open(path)
    assert up.packed and isinstance(up.chunks, PackStore) and up.chunks.legacy is None
    # nothing packed twice: every id once in the index (after the upgrade's merge)
    listed = [cid for cid, _ in up.chunks.iter_ids()]
    assert len(listed) == len(set(listed))
    report = verify(up)
    assert report.ok, [str(p) for p in report.problems]
    assert report.chunks_total == len(listed)
    _restore_all(up, images | extra, tmp_path / "out")
    # a rerun has nothing to do
    again = subprocess.run(_cmd(path, "--json"), cwd=ROOT, env=ENV, capture_output=True)
    assert again.returncode == 0
    assert json.loads(again.stdout)["result"]["packs"]["chunks_packed"] == 0


@pytest.mark.parametrize("encrypted", [False, True])
def test_upgrade_to_packs_copies_blobs_as_stored(tmp_path: Path, encrypted: bool) -> None:
    pw = PW if encrypted else None
    repo, images = _v2_repo(tmp_path, pw)
    blobs = {
        bytes.fromhex(p.name): p.read_bytes() for p in repo.path.glob("chunks/???/" + "?" * 64)
    }
    notes: list[str] = []
    r = upgrade_to_packs(repo.path, pw, pack_size=1 << 20, note=notes.append)
    assert r.finished and r.from_version == 2 and not r.damaged
    assert r.chunks_packed == len(blobs) and r.chunks_already == 0
    assert r.packs_written >= 2
    assert not (repo.path / "chunks").exists()
    assert any("version 3" in n for n in notes)
    up = Repository.open(repo.path, pw)
    assert isinstance(up.chunks, PackStore)
    for cid, data in blobs.items():
        assert up.chunks.read(cid) == data  # the very bytes of the chunk file
    _restore_all(up, images, tmp_path / "out")
    assert verify(up).ok


def test_a_damaged_chunk_file_goes_to_the_quarantine_not_into_a_pack(tmp_path: Path) -> None:
    repo, _ = _v2_repo(tmp_path)
    victim = sorted(repo.path.glob("chunks/???/" + "?" * 64))[3]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01  # the payload no longer matches its CRC
    victim.write_bytes(bytes(data))
    r = upgrade_to_packs(repo.path, pack_size=1 << 20)
    assert r.finished
    assert r.damaged == [f"chunk {victim.name} (bad blob header or payload checksum)"]
    up = Repository.open(repo.path)
    assert up.quarantine.get(bytes.fromhex(victim.name)) is not None
    assert not up.chunks.exists(bytes.fromhex(victim.name))
    report = verify(up)
    assert not report.ok
    assert any(victim.name in p.detail for p in report.problems)


def test_upgrade_refuses_while_a_backup_runs_or_gc_holds_its_lock(tmp_path: Path) -> None:
    repo, _ = _v2_repo(tmp_path)
    repo.begin_job("nightly-20261203T010000Z-abcdef")
    with pytest.raises(LockedError, match="backup job nightly-20261203T010000Z-abcdef is running"):
        upgrade_to_packs(repo.path)
    out = subprocess.run(_cmd(repo.path, "--json"), cwd=ROOT, env=ENV, capture_output=True)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert not doc["ok"] and "is running" in doc["error"]["message"]
    repo.end_job("nightly-20261203T010000Z-abcdef")
    with lock_file(repo.path / "locks" / "gc", wait=False) as got:
        assert got
        with pytest.raises(LockedError, match="gc or another upgrade is running"):
            upgrade_to_packs(repo.path)
    # refused before anything changed: still version 2 with every chunk file
    assert json.loads((repo.path / "config").read_bytes())["version"] == 2
    assert not (repo.path / "packs").exists()
