"""A repository holding the lab's file-restore guest (lab/guest_fs.py) as the guest
wrote it: a full point and an incremental one after a few files changed, and two disks
that cannot be read (no filesystem; a damaged ext4 superblock). Built once per module."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.guest_fs import (
    FsPartition,
    GuestFile,
    build_image,
    disk_bytes,
    guest_partitions,
    write_guest_fs,
)
from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import CS

SEED = 7
DISK = 2000


@dataclass
class GuestRepo:
    path: Path
    full: str  # generation 0 of the guest's files
    incremental: str  # generation 1, written over it
    no_fs: str  # random bytes, no partition table or filesystem
    damaged: str  # MBR, one ext4 whose superblock says it has 2^28 blocks
    xfs: str  # one XFS on the whole disk, no partition table: XFS_FILES
    tmp: Path  # TMPDIR of the commands: what they leave behind shows here


XFS_FILES = FsPartition(
    "xfs",
    300,  # the least mkfs.xfs makes; sparse, and zero chunks are not stored
    "srv",
    (
        GuestFile("/srv/www/index.html", b"<h1>xfs</h1>\n" * 500, 1_780_000_100, 0o644),
        GuestFile("/srv/www/cgi/run.sh", b"#!/bin/sh\n", 1_780_000_102, 0o750),
        GuestFile("/srv/www/latest", link="index.html"),
    ),
)


def _damaged_disk(path: Path) -> None:
    part = FsPartition("ext4", 8, "bad", (GuestFile("/a.txt", b"a\n", 1_780_000_000),))
    start = build_image(path, [part], table="dos")[0]
    with open(path, "r+b") as fh:  # s_blocks_count_lo, 4 bytes into the superblock
        fh.seek(start + 1024 + 4)
        fh.write((0x0FFFFFF0).to_bytes(4, "little"))


@pytest.fixture(scope="module")
def guest_repo(tmp_path_factory: pytest.TempPathFactory) -> GuestRepo:
    d = tmp_path_factory.mktemp("guest")
    repo = Repository.init(d / "repo", chunk_size=CS, compression_level=1)
    flat = d / "web1-flat.vmdk"
    with open(flat, "wb") as fh:
        fh.truncate(disk_bytes(guest_partitions(SEED, 0)))
    write_guest_fs(flat, SEED, 0)
    full = import_disk(repo, "web1", DISK, flat).point_id
    write_guest_fs(flat, SEED, 1)
    inc = import_disk(repo, "web1", DISK, flat)
    assert inc.base_point_id == full
    raw = d / "raw.img"
    raw.write_bytes(random.Random(1).randbytes(4 * CS))
    no_fs = import_disk(repo, "raw1", DISK, raw).point_id
    bad = d / "bad.img"
    _damaged_disk(bad)
    damaged = import_disk(repo, "bad1", DISK, bad).point_id
    xfs_img = d / "xfs.img"
    build_image(xfs_img, [XFS_FILES], table="none")
    xfs = import_disk(repo, "xfs1", DISK, xfs_img).point_id
    tmp = d / "tmp"
    tmp.mkdir()
    return GuestRepo(d / "repo", full, inc.point_id, no_fs, damaged, xfs, tmp)


def files_cmd(g: GuestRepo, *args: str, point: str | None = None) -> tuple[int, dict, str]:
    """`vmbackup files ... --json` on ``point`` (default the incremental): exit status,
    the document and stderr."""
    sub, *rest = args
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmbackup",
            "files",
            sub,
            "--repo",
            str(g.path),
            "--point",
            point or g.incremental,
            "--disk",
            str(DISK),
            "--json",
            *rest,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(g.tmp)},
        timeout=300,
        check=False,
    )
    return res.returncode, json.loads(res.stdout), res.stderr


def leftovers(tmp: Path) -> list[str]:
    """Mounts, loop devices and work directories of file restores under ``tmp``."""
    with open("/proc/mounts", encoding="utf-8") as fh:
        mounts = [ln for ln in fh if str(tmp) in ln]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [
        *mounts,
        *(ln for ln in loops.stdout.splitlines() if str(tmp) in ln),
        *(str(p) for p in tmp.iterdir()),
    ]
