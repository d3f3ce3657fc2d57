"""`vmbackup restore` as an operator meets it: an existing file or block device is not
overwritten without --force, a disk the point lacks is answered with those it has, and
--point/--disk say what they want."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import make_image
from tests.repository.test_cli import vmb
from vmbackup.restore_command import no_such_disk, overwrite_refusal


def test_an_existing_file_or_block_device_is_refused_without_force() -> None:
    for mode, kind in ((stat.S_IFREG | 0o644, "file"), (stat.S_IFBLK | 0o600, "block device")):
        msg = overwrite_refusal("/srv/out", mode, force=False)
        assert f"restore target /srv/out is an existing {kind}" in msg and "--force" in msg
        assert overwrite_refusal("/srv/out", mode, force=True) == ""
    assert overwrite_refusal("/srv/new.img", None, force=False) == ""  # nothing there
    assert overwrite_refusal("-", None, force=False) == ""  # stdout
    for stream in (stat.S_IFIFO, stat.S_IFCHR):  # a pipe, /dev/null: nothing to destroy
        assert overwrite_refusal("/dev/x", stream | 0o600, force=False) == ""


def test_a_missing_disk_is_answered_with_the_disks_of_the_point(
    repo: Repository, tmp_path: Path
) -> None:
    make_image(tmp_path / "d.img", "rz")
    r = import_disk(repo, "web", 2000, tmp_path / "d.img")
    point = repo.get_point(r.point_id)
    assert no_such_disk(point, 2000) == ""
    msg = no_such_disk(point, 9)
    assert msg == f"point {r.point_id} has no disk 9; its disks: 2000 (512.0 KiB)"
    point.failed_disks = [(2001, "read failed")]
    assert no_such_disk(point, 9).endswith("; failed in that backup: 2001 (read failed)")


@pytest.fixture
def point(tmp_path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(repository path, point id, the disk's bytes) of a one-disk point, disk 2000."""
    repo = str(tmp_path / "repo")
    data = make_image(tmp_path / "d.img", "rtzr")
    assert vmb("repo", "init", repo, "--chunk-size", "256K").returncode == 0
    r = vmb(
        "repo",
        "import-disk",
        "--repo",
        repo,
        "--vm",
        "web",
        "--disk",
        "2000",
        str(tmp_path / "d.img"),
    )
    assert r.returncode == 0, r.stderr
    pid = Repository.open(repo).points()[0].id
    yield repo, pid, data


def restore(
    repo: str, pid: str, out: str, *extra: str, disk: str = "2000"
) -> subprocess.CompletedProcess:
    return vmb("restore", "--repo", repo, "--point", pid, "--disk", disk, "--out", out, *extra)


def test_restore_refuses_an_existing_file_without_force(
    point: tuple[str, str, bytes], tmp_path: Path
) -> None:
    repo, pid, data = point
    out = tmp_path / "web-disk0.img"
    out.write_bytes(b"the image someone still needs")
    r = restore(repo, pid, str(out))
    assert r.returncode == 1, r.stdout
    assert f"restore target {out} is an existing file".encode() in r.stderr
    assert b"--force" in r.stderr
    assert out.read_bytes() == b"the image someone still needs"
    r = restore(repo, pid, str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    new = tmp_path / "new.img"  # nothing there: no --force needed
    assert restore(repo, pid, str(new)).returncode == 0 and new.read_bytes() == data


def test_restore_refuses_a_block_device_without_force(
    point: tuple[str, str, bytes], tmp_path: Path
) -> None:
    repo, pid, data = point
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup for a loop block device")
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\xee" * len(data))  # the device's data, which must survive
    lo = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if lo.returncode != 0:
        pytest.skip(f"no loop device: {lo.stderr.strip()}")
    dev = lo.stdout.strip()
    try:
        r = restore(repo, pid, dev)
        assert r.returncode == 1, r.stdout
        assert f"restore target {dev} is an existing block device".encode() in r.stderr
        assert backing.read_bytes() == b"\xee" * len(data)
        r = restore(repo, pid, dev, "--force")
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert backing.read_bytes() == data


def test_restore_of_a_disk_the_point_lacks_names_the_disks_it_has(
    point: tuple[str, str, bytes], tmp_path: Path
) -> None:
    repo, pid, _ = point
    r = restore(repo, pid, str(tmp_path / "x.img"), disk="9")
    assert r.returncode == 1
    assert f"point {pid} has no disk 9; its disks: 2000 (1.0 MiB)".encode() in r.stderr, r.stderr
    assert not (tmp_path / "x.img").exists()


def test_restore_help_explains_point_disk_and_force() -> None:
    r = vmb("restore", "--help")
    assert r.returncode == 0
    text = b" ".join(r.stdout.split())  # argparse wraps lines
    assert b"--point ID restore point id, as `vmbackup repo list` shows it" in text
    assert b"--disk KEY disk key within the point" in text
    assert b"--force overwrite an existing file or block device" in text
    assert b"examples:" in text
