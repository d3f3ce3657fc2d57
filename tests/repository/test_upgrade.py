"""`vmbackup repo upgrade`: a version-1 repository (the bytes the code before format 2
wrote, made here by hand) becomes version 2, survives a kill midway, restores exactly."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from repository.errors import CorruptObjectError, RepositoryFormatError
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository
from repository.restore import restore_disk
from repository.upgrade import upgrade
from repository.verify import verify
from tests.repository.conftest import CS, point_file

ROOT = Path(__file__).resolve().parents[2]
PW = "correct horse"
DISKS = 60  # more progress lines than a 4 KiB pipe holds: the kill lands midway


def _to_version_1(path: Path) -> None:
    """Rewrite config and maps as version 1 wrote them: the config without checksum and
    mac (json indent 2, fields in init's order), each map with version byte 1 and
    BLAKE3(header bytes 0..31 || entries) in bytes 32..63. Chunks, meta and the key file
    did not change between the versions."""
    doc = json.loads((path / "config").read_bytes())
    order = ("format", "version", "id", "chunk_size", "compression_level", "encryption")
    v1 = {k: doc[k] for k in order} | {"version": 1, "created": doc["created"]}
    (path / "config").write_bytes(json.dumps(v1, indent=2).encode() + b"\n")
    for m in path.glob("points/*/*/disk-*.map"):
        data = bytearray(m.read_bytes())
        data[4] = 1
        data[32:64] = blake3.blake3(bytes(data[:32]) + bytes(data[64:])).digest()
        m.write_bytes(bytes(data))


def _versions(path: Path) -> list[int]:
    return sorted(m.read_bytes()[4] for m in path.glob("points/*/*/disk-*.map"))


def _make_points(repo: Repository) -> dict[tuple[str, int], bytes]:
    """Points through the real commit path: one with many disks (each a map), two more
    of another VM; distinct random chunks, zeros and a short tail. Returns the images."""
    rnd = random.Random(11)
    pool = [rnd.randbytes(CS) for _ in range(6)]
    ids = []
    for c in pool:
        cid = repo.chunk_id(c)
        repo.store_chunk(cid, len(c), False, c)
        ids.append(cid)
    images: dict[tuple[str, int], bytes] = {}

    def commit(vm: str, t: float, keys: list[int]) -> str:
        disks = []
        layouts = {}
        for key in keys:
            layout = [rnd.randrange(-1, len(pool)) for _ in range(3)]  # -1: zero chunk
            layouts[key] = layout
            disks.append(
                DiskChanges(
                    key=key,
                    capacity=3 * CS,
                    change_id="*",
                    base_point_id="",
                    entries=[(i, ids[j] if j >= 0 else b"") for i, j in enumerate(layout)],
                )
            )
        pid = repo.commit_point(
            PointCommit(
                job_id=f"j{t}",
                vcenter="vc",
                vm_uuid=vm,
                vm_moref="vm-1",
                vm_name=vm,
                vm_config=b"<cfg/>",
                status="complete",
                snapshot_time=t,
                failed_disks=[],
                disks=disks,
            )
        )
        for key, layout in layouts.items():
            images[(pid, key)] = b"".join(pool[j] if j >= 0 else bytes(CS) for j in layout)
        return pid

    commit("vm-many", 1000.0, list(range(2000, 2000 + DISKS)))
    commit("vm-b", 1001.0, [1])
    commit("vm-b", 1002.0, [1, 2])
    return images


def _upgrade_cmd(repo: Path, pwfile: Path) -> list[str]:
    cli = [sys.executable, "-m", "vmbackup", "repo", "upgrade"]
    return [*cli, "--repo", str(repo), "--passphrase-file", str(pwfile), "--to", "2"]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("encrypted", [False, True])
def test_upgrade_from_version_1_survives_a_kill_and_restores_exactly(
    tmp_path: Path, encrypted: bool
) -> None:
    pw = PW if encrypted else None
    repo = Repository.init(tmp_path / "r", chunk_size=CS, passphrase=pw, packs=False)
    images = _make_points(repo)
    _to_version_1(repo.path)
    path = repo.path
    with pytest.raises(RepositoryFormatError, match="version 1: run `vmbackup repo upgrade"):
        Repository.open(path, pw)
    pwfile = tmp_path / "pw"
    pwfile.write_text(PW)
    # a kill midway: the child blocks writing its progress into a full 4 KiB pipe
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 4096)
    child = subprocess.Popen(
        _upgrade_cmd(path, pwfile), cwd=ROOT, env=ENV, stdout=w, stderr=subprocess.DEVNULL
    )
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as out:
        assert out.read(9) == b"upgraded "  # at least one map is done
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    versions = _versions(path)
    assert 1 in versions and 2 in versions, versions  # stopped midway
    assert json.loads((path / "config").read_bytes())["version"] == 1
    with pytest.raises(RepositoryFormatError, match="upgrade"):
        Repository.open(path, pw)
    # the rerun continues: checks what the first run tagged, upgrades the rest
    done = subprocess.run(
        _upgrade_cmd(path, pwfile), cwd=ROOT, env=ENV, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    already = versions.count(2)
    assert f"{already} by an earlier run" in done.stdout.decode()
    assert _versions(path) == [2] * (DISKS + 3)
    assert not list(path.glob("points/*/*/.tmp-*"))
    up = Repository.open(path, pw)
    assert verify(up).ok
    for (pid, key), data in images.items():
        out_img = tmp_path / f"o-{pid}-{key}"
        restore_disk(up, pid, key, out_img)
        assert out_img.read_bytes() == data, (pid, key)
    assert upgrade(path, pw).maps_upgraded == 0  # a third run: nothing to do


def test_a_version_1_map_in_a_version_2_repository_is_refused_not_upgraded(
    tmp_path: Path,
) -> None:
    """The downgrade attack: an old-format (unkeyed) map slipped into an upgraded
    repository is damage; a rerun of the upgrade does not vouch for it."""
    repo = Repository.init(tmp_path / "r", chunk_size=CS, passphrase=PW)
    images = _make_points(repo)
    pid, key = next(iter(images))
    mapfile = point_file(repo, pid, f"disk-{key}.map")
    data = bytearray(mapfile.read_bytes())
    data[4] = 1
    data[32:64] = blake3.blake3(bytes(data[:32]) + bytes(data[64:])).digest()
    mapfile.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match="map version 1, expected 2"):
        repo.load_map(pid, key)
    assert upgrade(repo.path, PW).maps_upgraded == 0
    rep = verify(Repository.open(repo.path, PW))
    assert [p.kind for p in rep.problems] == ["map"]
    assert str(mapfile) in rep.problems[0].detail
