"""Mount one partition read-only by the engine its filesystem needs, and unmount it.

* ext2/3/4 and XFS: the kernel's own drivers over a read-only loop device
  (``ro,noload`` / ``ro,norecovery,nouuid``: a journal left dirty by the backup's crash-
  consistent snapshot is not replayed, since replay writes; a second XFS with the same
  UUID, the VM's own disk on this machine, still mounts);
* NTFS: ntfs-3g (FUSE) read-only over the loop device, the driver Debian ships;
* FAT: the kernel's vfat when it has one; else (a kernel built without it, as some
  container hosts are) mtools copies the partition's tree into a private directory:
  FAT partitions are small (EFI system partitions), and mtools keeps their times.

Why the kernel and not a user-space reader: docs/restore.md, "Files".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from export.nbdfuse import mounted
from file_restore.partitions import FileRestoreError, Partition

KERNEL_OPTIONS = {
    "ext4": "ro,noload",
    "ext3": "ro,noload",
    "ext2": "ro",
    "xfs": "ro,norecovery,nouuid",
    "vfat": "ro,utf8,shortname=mixed",
}
READABLE = ("ext2", "ext3", "ext4", "xfs", "ntfs", "vfat")


@dataclass
class MountedPartition:
    partition: Partition
    root: Path  # where its files are
    engine: str  # "kernel", "ntfs-3g" or "mtools-copy"
    loop: str = ""  # the loop device under it ("" for mtools)

    def unmount(self) -> None:
        """Unmount (lazily when busy) and detach the loop device; idempotent."""
        if self.engine == "mtools-copy":
            shutil.rmtree(self.root, ignore_errors=True)
        elif mounted(self.root):
            res = subprocess.run(["umount", str(self.root)], capture_output=True, check=False)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
            self.loop = ""


def kernel_has(fstype: str) -> bool:
    """Whether the running kernel has the filesystem (loaded, or loadable by modprobe)."""
    with open("/proc/filesystems", encoding="ascii") as fh:
        if any(line.split()[-1] == fstype for line in fh if line.strip()):
            return True
    if shutil.which("modprobe"):
        ok = subprocess.run(["modprobe", "-q", fstype], capture_output=True, check=False)
        return ok.returncode == 0
    return False


def _engine(fstype: str) -> str:
    if fstype == "ntfs":
        return "ntfs-3g"
    if fstype == "vfat" and not kernel_has("vfat"):
        return "mtools-copy"
    return "kernel"


def _run(argv: list[str], what: str) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise FileRestoreError(f"{argv[0]} not found: it is needed {what}")
    res = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise FileRestoreError((res.stderr or res.stdout).strip() or f"status {res.returncode}")
    return res.stdout


def attach_loop(image: Path, part: Partition) -> str:
    """A read-only loop device over the partition's bytes of ``image``."""
    if os.geteuid() != 0:
        raise FileRestoreError(
            "mounting needs root (loop devices, mount): run as root, or `vmbackup restore`"
            " the disk to a file and open it with a user-space reader"
        )
    return _run(
        [
            "losetup",
            "-r",
            "-f",
            "--show",
            "--offset",
            str(part.start),
            "--sizelimit",
            str(part.size),
            str(image),
        ],
        "to attach the partition (util-linux)",
    ).strip()


def mount_partition(image: Path, part: Partition, at: Path) -> MountedPartition:
    """Mount ``part`` of ``image`` read-only at the existing empty directory ``at``."""
    name = f"partition {part.number}" if part.number else "the disk"
    if part.fstype not in READABLE:
        found = f"a {part.fstype} filesystem" if part.fstype else "no filesystem blkid knows"
        raise FileRestoreError(
            f"{name} holds {found}: vmbackup reads {', '.join(READABLE)}"
            " (`vmbackup restore` the whole disk for anything else)"
        )
    engine = _engine(part.fstype)
    if engine == "mtools-copy":
        return _mtools_copy(image, part, at)
    loop = attach_loop(image, part)
    mp = MountedPartition(part, at, engine, loop)
    try:
        if engine == "ntfs-3g":
            _run(["ntfs-3g", "-o", "ro", loop, str(at)], "for NTFS (ntfs-3g)")
        else:
            _run(
                ["mount", "-t", part.fstype, "-o", KERNEL_OPTIONS[part.fstype], loop, str(at)],
                "to mount (util-linux)",
            )
    except FileRestoreError as exc:
        mp.unmount()
        raise FileRestoreError(
            f"{name} ({part.fstype}) does not mount read-only: {exc}. Its superblock or"
            " metadata may be damaged: `vmbackup restore` the disk to a file, run the"
            " filesystem's check (e2fsck -n, xfs_repair -n, ntfsfix -n, fsck.vfat -n) on"
            " that copy, or try an older point"
        ) from None
    return mp


def _mtools_copy(image: Path, part: Partition, at: Path) -> MountedPartition:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    drive = f"{image}@@{part.start}"
    exe = shutil.which("mcopy")
    if exe is None:
        raise FileRestoreError(
            "FAT needs the kernel's vfat or mtools (mcopy): install mtools or modprobe vfat"
        )
    listing = subprocess.run(
        ["mdir", "-b", "-i", drive, "::/"], capture_output=True, text=True, env=env, check=False
    )
    if listing.returncode != 0:
        raise FileRestoreError(
            f"partition {part.number} (vfat) does not read: {listing.stderr.strip()}."
            " Its boot sector may be damaged: check a restored copy with fsck.vfat -n"
        )
    mp = MountedPartition(part, at, "mtools-copy")
    if listing.stdout.strip():  # mcopy fails on an empty root's "*"
        res = subprocess.run(
            [exe, "-s", "-m", "-n", "-i", drive, "::/*", f"{at}/"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if res.returncode != 0:
            mp.unmount()
            raise FileRestoreError(f"partition {part.number} (vfat): {res.stderr.strip()}")
    return mp
