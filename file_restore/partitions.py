"""The partitions of a disk image and the filesystem on each: sfdisk's table (MBR or GPT)
and blkid's probe, both read from the file itself, so that no root is needed to list
them (only to mount them).

A disk with no partition table that holds a filesystem directly is one partition,
number 0, covering the whole disk.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from repository.errors import RepositoryError

SECTOR = 512
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class FileRestoreError(RepositoryError):
    """A file restore could not do what was asked (the text says why)."""


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # as the table numbers it (MBR logical ones from 5); 0: the whole disk
    start: int  # bytes from the disk's start
    size: int  # bytes
    type: str  # the table's type code ("83", a GPT type GUID; "" for the whole disk)
    fstype: str = ""  # what blkid found ("ext4", "vfat", "ntfs", "xfs"); "" none
    label: str = ""  # the filesystem's label


def _tool(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise FileRestoreError(f"{name} not found: install {package}")
    return exe


def parse_sfdisk_json(text: str, disk_size: int) -> tuple[str, list[Partition]]:
    """``sfdisk --json`` output -> (table label "dos"/"gpt", partitions), each checked to
    lie inside the disk (a table that points outside it is damaged, not trusted)."""
    try:
        table = json.loads(text)["partitiontable"]
        sector = int(table.get("sectorsize", SECTOR))
        out = []
        for i, entry in enumerate(table.get("partitions", [])):
            m = _TRAILING_NUMBER.search(str(entry.get("node", "")))
            number = int(m[1]) if m else i + 1
            start, size = int(entry["start"]) * sector, int(entry["size"]) * sector
            if start < 0 or size <= 0 or start + size > disk_size:
                raise FileRestoreError(
                    f"partition {number} ({start}+{size} bytes) lies outside the disk"
                    f" ({disk_size} bytes): the partition table is damaged"
                )
            out.append(Partition(number, start, size, str(entry.get("type", ""))))
        return str(table.get("label", "")), out
    except (KeyError, TypeError, ValueError) as exc:
        raise FileRestoreError(f"cannot read sfdisk's partition table: {exc}") from None


def probe_filesystem(image: Path, start: int, size: int) -> tuple[str, str]:
    """(type, label) of the filesystem blkid finds in ``size`` bytes at ``start``; ("", "")
    when it finds none (or two ambivalent ones)."""
    exe = _tool("blkid", "util-linux (blkid)")
    res = subprocess.run(
        [exe, "-p", "-o", "export", "--offset", str(start), "--size", str(size), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if res.returncode != 0:
        return "", ""
    found = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
    return found.get("TYPE", ""), found.get("LABEL", "")


def read_partitions(image: Path) -> tuple[str, list[Partition]]:
    """(table label, partitions with their filesystems) of the disk image ``image``."""
    size = image.stat().st_size
    exe = _tool("sfdisk", "fdisk (sfdisk)")
    res = subprocess.run(
        [exe, "--json", str(image)], capture_output=True, text=True, timeout=120, check=False
    )
    if res.returncode == 0 and res.stdout.strip():
        label, parts = parse_sfdisk_json(res.stdout, size)
    else:  # no table: a filesystem on the whole disk, or nothing
        label, parts = "", [Partition(0, 0, size, "")]
    probed = []
    for p in parts:
        fstype, fslabel = probe_filesystem(image, p.start, p.size)
        probed.append(Partition(p.number, p.start, p.size, p.type, fstype, fslabel))
    return label, probed


def choose_partition(parts: list[Partition], number: int | None) -> Partition:
    """The partition ``--partition`` names, or, without it, the only one with a filesystem."""
    listing = ", ".join(f"{p.number} ({p.fstype or 'no filesystem'})" for p in parts) or "none"
    if number is not None:
        for p in parts:
            if p.number == number:
                return p
        raise FileRestoreError(f"no partition {number} on this disk; its partitions: {listing}")
    with_fs = [p for p in parts if p.fstype]
    if not with_fs:
        raise FileRestoreError(
            f"no known filesystem on this disk (partitions: {listing}):"
            " blkid recognises none of ext4, xfs, ntfs, vfat; is the disk encrypted or raw?"
        )
    if len(with_fs) > 1:
        raise FileRestoreError(f"the disk has several filesystems, give --partition N: {listing}")
    return with_fs[0]
