"""Helpers of the proxy tests: sparse disks on a fake datastore directory."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from common.snapshot_disk import SnapshotDisk
from proxy_worker.settings import ProxySettings

MiB = 1 << 20


@dataclass
class SparseDisk:
    source: SnapshotDisk
    path: Path
    data: bytes  # the full expected content (holes as zeros)
    data_ranges: list[tuple[int, int]]  # allocated (written) ranges
    settings: ProxySettings


def make_sparse_disk(
    root: Path, capacity: int = 24 * MiB + 12345, seed: int = 7, name: str = "vm 1/disk1"
) -> SparseDisk:
    """A flat file with random data, an allocated all-zero region and holes."""
    rnd = random.Random(seed)
    ds_dir = root / "ds1"
    path = ds_dir / f"{name}-flat.vmdk"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = bytearray(capacity)
    ranges = [(0, 1 * MiB), (3 * MiB + 4096, 2 * MiB), (10 * MiB, 1 * MiB), (capacity - 5000, 5000)]
    with open(path, "wb") as fh:
        fh.truncate(capacity)
        for off, ln in ranges:
            chunk = rnd.randbytes(ln)
            content[off : off + ln] = chunk
            fh.seek(off)
            fh.write(chunk)
        # allocated but all zero (a guest that zeroed blocks): must read as zeros, not a hole
        fh.seek(16 * MiB)
        fh.write(bytes(MiB))
    source = SnapshotDisk(
        vcenter="vc1",
        datacenter="DC0",
        host="esx-1",
        datastore="ds1",
        vm_moref="vm-42",
        snapshot_moref="snapshot-7",
        disk_file=f"[ds1] {name}.vmdk",
        capacity=capacity,
    )
    settings = ProxySettings(datastore_mounts={"ds1": str(ds_dir)})
    return SparseDisk(source, path, bytes(content), ranges, settings)


def fs_supports_holes(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_HOLE) < os.fstat(fd).st_size
        finally:
            os.close(fd)
    except OSError:
        return False
