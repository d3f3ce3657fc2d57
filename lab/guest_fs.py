"""Guest disks with real filesystems, for file-level restore (docs/restore.md, "Files").

A partition table (GPT or MBR, by sfdisk, or none) and ext4, FAT and NTFS filesystems
(XFS too, from 300 MiB) holding a known set of files, built in temp files by the
filesystems' own tools (mkfs.ext4 -d populates without mounting; mkfs.vfat + mtools;
mkfs.ntfs + ntfs-3g; mkfs.xfs + a loop mount), then written into
the VM's flat disk through lab/guest.py's DiskWriter, so that the lab's CBT sees it as a
guest's writes. A second generation of the files (a few changed, added, removed) is
written the same way, only the blocks that differ: the next backup is an incremental.
Needs root for NTFS and XFS (their images are mounted to be filled: neither mkfs copies
a tree with its times).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.guest import DiskWriter
from lab.spec import MIB, LabError

BLOCK = 64 * 1024  # compare and write in this unit: the incremental carries changed ones
ALIGN = MIB  # partitions start on MiB boundaries, as partitioning tools do
GPT_TYPES = {"ext4": "L", "xfs": "L", "vfat": "U", "ntfs": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"}
MBR_TYPES = {"ext4": "83", "xfs": "83", "vfat": "ef", "ntfs": "7"}
XFS_MIN_MIB = 300  # mkfs.xfs (xfsprogs >= 5.19) refuses smaller filesystems


@dataclass(frozen=True)
class GuestFile:
    path: str  # from the filesystem's root, "/etc/hostname"
    data: bytes = b""
    mtime: int = 0  # seconds; even, as FAT keeps two-second times
    mode: int = 0o644
    link: str = ""  # a symbolic link to this target instead of a file (ext4, xfs)


@dataclass(frozen=True)
class FsPartition:
    fstype: str  # "ext4", "xfs", "vfat" or "ntfs"
    size_mib: int
    label: str
    files: tuple[GuestFile, ...]


def _text(rng: random.Random, lines: int) -> bytes:
    words = ("request", "served", "cache", "miss", "commit", "worker", "retry", "GET", "POST")
    return "".join(
        f"2026-12-{1 + i % 28:02d} {' '.join(rng.choice(words) for _ in range(8))} id={i}\n"
        for i in range(lines)
    ).encode()


def guest_partitions(seed: int, generation: int) -> list[FsPartition]:
    """The lab's file-restore guest: ext4 (a Linux root), an EFI FAT and an NTFS data
    partition. Generation 1 changes a few files of generation 0 in each."""
    rng = random.Random(f"guest-fs:{seed}")
    t0 = 1_780_000_000  # 2026-05-28, even
    ext4 = [
        GuestFile("/etc/hostname", b"web1\n", t0, 0o644),
        GuestFile("/etc/app/config.ini", b"[db]\nhost = db1\nport = 5432\n", t0 + 2, 0o600),
        GuestFile("/etc/app/current", link="config.ini"),
        GuestFile("/usr/local/bin/tool", b"#!/bin/sh\necho tool\n", t0 + 4, 0o755),
        GuestFile("/var/log/app.log", _text(rng, 6000), t0 + 6, 0o640),
        GuestFile("/home/user/notes.txt", b"first notes\n", t0 + 8, 0o644),
        GuestFile("/home/user/photo.bin", rng.randbytes(300_000), t0 + 10, 0o644),
    ]
    fat = [
        GuestFile("/EFI/BOOT/BOOTX64.EFI", rng.randbytes(70_000), t0 + 12),
        GuestFile("/startup.nsh", b"fs0:\\EFI\\BOOT\\BOOTX64.EFI\n", t0 + 14),
    ]
    ntfs = [
        GuestFile("/Users/Public/Documents/readme.txt", b"Windows notes v1\r\n", t0 + 16),
        GuestFile("/Windows/System32/drivers/etc/hosts", b"127.0.0.1 localhost\r\n", t0 + 18),
        GuestFile("/Data/ledger.csv", _text(rng, 2000), t0 + 20),
    ]
    if generation >= 1:
        t1 = t0 + 86_400
        ext4 = [f for f in ext4 if f.path != "/etc/hostname"]  # removed
        ext4 = [
            GuestFile(f.path, b"notes, edited after the first backup\n" * 40, t1, 0o600)
            if f.path == "/home/user/notes.txt"
            else f
            for f in ext4
        ]
        ext4.append(GuestFile("/home/user/report.csv", _text(rng, 500), t1 + 2, 0o644))
        fat = [
            GuestFile(f.path, b"echo second boot\n", t1 + 4) if f.path == "/startup.nsh" else f
            for f in fat
        ]
        ntfs = [
            GuestFile(f.path, b"Windows notes v2, longer\r\n" * 30, t1 + 6)
            if f.path.endswith("readme.txt")
            else f
            for f in ntfs
        ]
    return [
        FsPartition("ext4", 32, "root", tuple(ext4)),
        FsPartition("vfat", 16, "EFI", tuple(fat)),
        FsPartition("ntfs", 24, "DATA", tuple(ntfs)),
    ]


def disk_bytes(parts: Sequence[FsPartition]) -> int:
    """The smallest disk that holds ``parts`` and both GPT headers."""
    return (sum(p.size_mib for p in parts) + 2) * MIB


def _run(argv: list[str], input: str | None = None, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, input=input, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"{argv[0]} failed: {(res.stderr or res.stdout).strip()}")


def _tree(files: Sequence[GuestFile], root: Path) -> None:
    """The files on a local directory, with their modes and times."""
    for f in files:
        path = root / f.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.link:
            os.symlink(f.link, path)
            continue
        path.write_bytes(f.data)
        os.chmod(path, f.mode)
        os.utime(path, (f.mtime, f.mtime))


def _filesystem(part: FsPartition, image: Path, work: Path) -> None:
    """``image`` (a new file of the partition's size) formatted and filled."""
    with open(image, "wb") as fh:
        fh.truncate(part.size_mib * MIB)
    src = work / f"src-{part.label}"
    _tree(part.files, src)
    if part.fstype == "ext4":
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                part.label,
                "-E",
                "root_owner=0:0",
                "-d",
                str(src),
                str(image),
            ]
        )
    elif part.fstype == "vfat":
        _run(["mkfs.vfat", "-n", part.label, str(image)])
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        for d in sorted({str(Path(f.path).parent) for f in part.files} - {"/"}):
            for i in range(2, len(Path(d).parts) + 1):  # parents first
                sub = "/".join(Path(d).parts[1:i])
                subprocess.run(
                    ["mmd", "-D", "s", "-i", str(image), f"::/{sub}"],
                    capture_output=True,
                    env=env,
                    check=False,
                )
        for f in part.files:
            _run(
                ["mcopy", "-m", "-i", str(image), str(src / f.path.lstrip("/")), f"::{f.path}"],
                env=env,
            )
    elif part.fstype == "ntfs":
        _run(["mkfs.ntfs", "-F", "-Q", "-q", "-L", part.label, str(image)])
        _fill_mounted(image, src, work / f"mnt-{part.label}", ["ntfs-3g"])
    elif part.fstype == "xfs":
        if part.size_mib < XFS_MIN_MIB:
            raise LabError(f"an XFS partition needs {XFS_MIN_MIB} MiB, not {part.size_mib}")
        _run(["mkfs.xfs", "-q", "-f", "-L", part.label, str(image)])
        _fill_mounted(image, src, work / f"mnt-{part.label}", ["mount", "-o", "loop"])
    else:
        raise LabError(f"no guest filesystem {part.fstype!r} (ext4, xfs, vfat, ntfs)")


def _fill_mounted(image: Path, src: Path, mnt: Path, mount: list[str]) -> None:
    """Fill a filesystem whose mkfs cannot copy a tree with its times: mount, ``cp -a``."""
    mnt.mkdir()
    _run([*mount, str(image), str(mnt)])
    try:
        _run(["cp", "-a", f"{src}/.", f"{mnt}/"])
    finally:
        _run(["umount", str(mnt)])


def build_image(
    out: Path, parts: Sequence[FsPartition], table: str = "gpt", size: int = 0
) -> list[int]:
    """A disk image of ``size`` bytes (default: the smallest) at ``out``: the table
    ("gpt", "dos", or "none": one filesystem on the whole disk) and each filesystem; the
    partitions' offsets."""
    if table == "none":
        if len(parts) != 1:
            raise LabError("a disk without a partition table holds one filesystem")
        need, at = parts[0].size_mib * MIB, 0
    else:
        need, at = disk_bytes(parts), ALIGN
    size = size or need
    if size < need:
        raise LabError(f"a disk of {size} bytes cannot hold {need} bytes of partitions")
    with open(out, "wb") as fh:
        fh.truncate(size)
    if table != "none":
        types = GPT_TYPES if table == "gpt" else MBR_TYPES
        script = "".join(f",{p.size_mib}M,{types[p.fstype]}\n" for p in parts)
        _run(["sfdisk", "-q", str(out)], input=f"label: {table}\n{script}")
    starts = []
    with tempfile.TemporaryDirectory(prefix="guest-fs-") as tmp, open(out, "r+b") as disk:
        for p in parts:
            img = Path(tmp) / f"{p.label}.img"
            _filesystem(p, img, Path(tmp))
            with open(img, "rb") as fh:
                disk.seek(at)
                shutil.copyfileobj(fh, disk, MIB)
            starts.append(at)
            at += p.size_mib * MIB
    return starts


def write_changed(flat: Path, image: Path) -> int:
    """Write the blocks of ``image`` that differ from the disk's through its DiskWriter
    (the guest's I/O path, seen by CBT); the bytes written."""
    written = 0
    with DiskWriter(flat) as w, open(image, "rb") as src:
        if os.fstat(src.fileno()).st_size > os.path.getsize(flat):
            raise LabError(f"image {image} is larger than the disk {flat}")
        offset = 0
        while block := src.read(BLOCK):
            if w.pread(len(block), offset) != block:
                w.pwrite(block, offset)
                written += len(block)
            offset += len(block)
    return written


def write_guest_fs(flat: Path, seed: int, generation: int, table: str = "gpt") -> int:
    """Put generation ``generation`` of the lab's guest filesystems on the disk ``flat``
    (the table's backup copy at its end; the blocks that change only); the bytes written."""
    with tempfile.TemporaryDirectory(prefix="guest-disk-") as tmp:
        image = Path(tmp) / "disk.img"
        build_image(image, guest_partitions(seed, generation), table, os.path.getsize(flat))
        return write_changed(flat, image)
