"""`vmbackup files ls|get|mount` on real nbdkit, nbdfuse, loop devices and mounts:
what comes out of a full and of an incremental point is what the guest wrote (content,
size, mtime, mode), bad requests fail clearly, and nothing is left mounted or attached."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.guest_fs import FsPartition, guest_partitions
from tests.file_restore.conftest import (
    DISK,
    SEED,
    XFS_FILES,
    GuestRepo,
    files_cmd,
    leftovers,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


@pytest.fixture(autouse=True)
def nothing_left(guest_repo: GuestRepo) -> Iterator[None]:
    yield
    assert leftovers(guest_repo.tmp) == []


def _same_files(got: Path, part: FsPartition, *, modes: bool, under: str = "/") -> None:
    """Every file the guest wrote under ``under`` is under ``got``, equal; nothing else is."""
    files = [f for f in part.files if f.path.startswith(under)]
    want = {f.path.removeprefix(under).lstrip("/") for f in files}
    have = {str(p.relative_to(got)) for p in got.rglob("*") if not p.is_dir() or p.is_symlink()}
    assert have == want
    for f in files:
        p = got / f.path.removeprefix(under).lstrip("/")
        st = os.lstat(p)
        if f.link:
            assert stat.S_ISLNK(st.st_mode) and os.readlink(p) == f.link
            continue
        assert p.read_bytes() == f.data and st.st_size == len(f.data), f.path
        assert st.st_mtime_ns == f.mtime * 10**9, f.path
        if modes:
            assert stat.S_IMODE(st.st_mode) == f.mode, f.path


def test_ls_lists_the_gpt_partitions_and_their_filesystems(guest_repo: GuestRepo) -> None:
    rc, doc, err = files_cmd(guest_repo, "ls")
    assert rc == 0, err
    res = doc["result"]
    assert res["table"] == "gpt"
    assert [(p["number"], p["fstype"], p["label"]) for p in res["partitions"]] == [
        (1, "ext4", "root"),
        (2, "vfat", "EFI"),
        (3, "ntfs", "DATA"),
    ]
    rc, doc, err = files_cmd(guest_repo, "ls", "--partition", "1", "/home/user")
    assert rc == 0, err
    names = {e["name"]: e for e in doc["result"]["entries"]}
    ext4 = guest_partitions(SEED, 1)[0]
    notes = next(f for f in ext4.files if f.path == "/home/user/notes.txt")
    assert names["notes.txt"]["size"] == len(notes.data)
    assert names["notes.txt"]["mtime"] == notes.mtime and names["notes.txt"]["mode"] == "0600"


@pytest.mark.parametrize("generation", [0, 1])
def test_get_the_ext4_tree_from_full_and_incremental(
    guest_repo: GuestRepo, tmp_path: Path, generation: int
) -> None:
    point = guest_repo.full if generation == 0 else guest_repo.incremental
    out = tmp_path / "root"
    rc, doc, err = files_cmd(
        guest_repo, "get", "--partition", "1", "/", "--out", str(out), point=point
    )
    assert rc == 0, err
    ext4 = guest_partitions(SEED, generation)[0]
    (out / "lost+found").rmdir()  # mkfs's own, empty
    _same_files(out, ext4, modes=True)
    assert doc["result"]["files"] == sum(1 for f in ext4.files if not f.link)
    assert doc["result"]["bytes"] == sum(len(f.data) for f in ext4.files)


@pytest.mark.parametrize("number", [2, 3])
def test_get_fat_and_ntfs_files_from_the_incremental(
    guest_repo: GuestRepo, tmp_path: Path, number: int
) -> None:
    part = guest_partitions(SEED, 1)[number - 1]
    out = tmp_path / "got"
    rc, _doc, err = files_cmd(guest_repo, "get", "--partition", str(number), "/", "--out", str(out))
    assert rc == 0, err
    for extra in ("System Volume Information",):  # NTFS's own
        if (out / extra).exists():
            subprocess.run(["rm", "-rf", str(out / extra)], check=True)
    _same_files(out, part, modes=False)


def test_get_a_directory_into_a_directory_from_an_xfs_without_a_partition_table(
    guest_repo: GuestRepo, tmp_path: Path
) -> None:
    rc, doc, err = files_cmd(
        guest_repo, "get", "/srv/www", "--out", str(tmp_path), point=guest_repo.xfs
    )
    assert rc == 0, err
    res = doc["result"]
    assert (res["partition"], res["fstype"], res["out"]) == (0, "xfs", str(tmp_path / "www"))
    _same_files(tmp_path / "www", XFS_FILES, modes=True, under="/srv/www")


@pytest.mark.parametrize(
    ("point", "args", "message"),
    [
        (
            "incremental",
            ["ls", "--partition", "1", "/etc/hostname"],
            "no such file or directory: /etc/hostname",
        ),  # removed after the full
        ("no_fs", ["ls", "/"], "no known filesystem"),
        ("damaged", ["ls", "/"], "partition 1 (ext4) does not mount read-only"),
    ],
)
def test_bad_requests_fail_clearly(
    guest_repo: GuestRepo, point: str, args: list[str], message: str
) -> None:
    rc, doc, err = files_cmd(guest_repo, *args, point=getattr(guest_repo, point))
    assert rc == 1 and not doc["ok"]
    assert message in doc["error"]["message"], doc["error"]
    assert message in err  # the reason on stderr as well


def test_mount_serves_until_sigterm_then_leaves_nothing(
    guest_repo: GuestRepo, tmp_path: Path
) -> None:
    sig = signal.SIGTERM  # SIGINT has the same handler (file_restore/session.py)
    at = tmp_path / "mnt"
    at.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmbackup",
            "files",
            "mount",
            "--repo",
            str(guest_repo.path),
            "--point",
            guest_repo.incremental,
            "--disk",
            str(DISK),
            "--at",
            str(at),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(guest_repo.tmp)},
    )
    try:
        assert proc.stderr is not None
        lines = []
        while not any("mounted read-only" in ln for ln in lines):
            line = proc.stderr.readline()
            assert line, f"files mount ended: {''.join(lines)}"
            lines.append(line)
        ext4, _fat, ntfs = guest_partitions(SEED, 1)
        for f in ext4.files[:3]:
            if not f.link:
                assert (at / "p1" / f.path.lstrip("/")).read_bytes() == f.data
        hosts = next(f for f in ntfs.files if f.path.endswith("hosts"))
        assert (at / "p3" / hosts.path.lstrip("/")).read_bytes() == hosts.data
        with pytest.raises(OSError):  # read-only
            (at / "p1" / "new").write_bytes(b"x")
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["result"]["stopped_by"] == sig.name
    assert [p["number"] for p in doc["result"]["partitions"]] == [1, 2, 3]
    assert list(at.iterdir()) == []
    with open("/proc/mounts", encoding="utf-8") as fh:
        assert str(at) not in fh.read()


def test_sigterm_while_the_disk_opens_stops_get_and_leaves_nothing(
    guest_repo: GuestRepo, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmbackup",
            "files",
            "get",
            "--repo",
            str(guest_repo.path),
            "--point",
            guest_repo.incremental,
            "--disk",
            str(DISK),
            "--partition",
            "1",
            "/",
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(guest_repo.tmp)},
    )
    while not any(guest_repo.tmp.glob("vmbackup-files-*")):  # its session began: nbdkit starts
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    doc = json.loads(stdout)
    assert doc["error"]["cause"] == "interrupted" and "SIGTERM" in doc["error"]["message"]
    assert not out.exists()
