"""The policy of file restore on real files and real sfdisk: partition tables (MBR,
GPT) read and checked, paths refused when they climb out or pass a link, the copy that
keeps modes and times and never overwrites, and the choice of a partition."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from file_restore.copy_out import copy_out
from file_restore.inner_path import inner_parts, resolve_inside
from file_restore.partitions import (
    FileRestoreError,
    Partition,
    choose_partition,
    parse_sfdisk_json,
    read_partitions,
)

MIB = 1 << 20


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partition_tables_of_both_kinds_are_read(tmp_path: Path, label: str) -> None:
    img = tmp_path / "d.img"
    with open(img, "wb") as fh:
        fh.truncate(12 * MIB)
    subprocess.run(
        ["sfdisk", "-q", str(img)], input=f"label: {label}\n,4M\n,5M\n", text=True, check=True
    )
    table, parts = read_partitions(img)
    assert table == label
    assert [(p.number, p.start, p.size, p.fstype) for p in parts] == [
        (1, MIB, 4 * MIB, ""),
        (2, 5 * MIB, 5 * MIB, ""),
    ]
    out = subprocess.run(
        ["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True
    ).stdout
    with pytest.raises(FileRestoreError, match="lies outside the disk"):
        parse_sfdisk_json(out, 8 * MIB)  # a table for a larger disk: damaged


def test_a_disk_without_a_table_is_one_partition(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with open(img, "wb") as fh:
        fh.truncate(8 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "whole", str(img)], check=True)
    assert read_partitions(img) == ("", [Partition(0, 0, 8 * MIB, "", "ext4", "whole")])


def test_choosing_a_partition() -> None:
    parts = [
        Partition(1, 0, 1, "", "ext4"),
        Partition(2, 1, 1, "", ""),
        Partition(5, 2, 1, "", "ntfs"),
    ]
    assert choose_partition(parts, 5).number == 5
    with pytest.raises(FileRestoreError, match=r"no partition 9 .*1 \(ext4\), 2 \(no filesystem"):
        choose_partition(parts, 9)
    with pytest.raises(FileRestoreError, match="several filesystems, give --partition"):
        choose_partition(parts, None)
    assert choose_partition(parts[:2], None).number == 1


def test_paths_stay_inside_and_links_are_not_followed(tmp_path: Path) -> None:
    assert inner_parts("/etc//ssh/./x") == ("etc", "ssh", "x") and inner_parts("/") == ()
    for bad in ("../x", "/a/../../b", "a/.."):
        with pytest.raises(FileRestoreError, match=r"holds '\.\.'"):
            inner_parts(bad)
    root = tmp_path / "mnt"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "f").write_text("x")
    os.symlink("/", root / "etc" / "up")  # the guest's "/", not ours
    assert resolve_inside(root, "/etc/up") == root / "etc" / "up"  # the link itself
    with pytest.raises(FileRestoreError, match=r"/etc/up is a symbolic link \(to '/'\)"):
        resolve_inside(root, "/etc/up/etc/passwd")
    with pytest.raises(FileRestoreError, match="/etc/f is not a directory"):
        resolve_inside(root, "/etc/f/g")
    with pytest.raises(FileRestoreError, match="no such file or directory: /etc/nope"):
        resolve_inside(root, "etc/nope")


def test_copy_out_keeps_modes_times_and_links_and_overwrites_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data" * 1000)
    os.chmod(src / "d" / "f", 0o640)
    os.utime(src / "d" / "f", ns=(1_700_000_000_123_456_789, 1_600_000_000_987_654_321))
    os.symlink("/etc/passwd", src / "d" / "l")
    os.mkfifo(src / "p")
    os.utime(src / "d", (1_500_000_000, 1_500_000_000))
    seen: list[tuple[int, int]] = []
    stats = copy_out(src, tmp_path / "out", lambda d, t: seen.append((d, t)))
    f = tmp_path / "out" / "d" / "f"
    assert f.read_bytes() == b"data" * 1000
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert f.stat().st_mtime_ns == 1_600_000_000_987_654_321
    assert os.readlink(tmp_path / "out" / "d" / "l") == "/etc/passwd"
    assert (tmp_path / "out" / "d").stat().st_mtime == 1_500_000_000
    assert (stats.files, stats.symlinks, stats.bytes) == (1, 1, 4000)
    assert stats.skipped == [str(src / "p")] and not (tmp_path / "out" / "p").exists()
    assert seen[-1] == (4000, 4000)
    with pytest.raises(FileRestoreError, match="exists: give a new path"):
        copy_out(src / "d" / "f", f)
    assert f.read_bytes() == b"data" * 1000
