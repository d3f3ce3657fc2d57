from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from proxy_worker.errors import (
    ConfigError,
    DiskNotFoundError,
    OutOfRangeError,
    ShortReadError,
    TaskError,
)
from proxy_worker.transports.file import FileTransport
from tests.proxy.proxy_helpers import MiB, SparseDisk, fs_supports_holes


def test_reads_every_byte(sparse_disk: SparseDisk) -> None:
    with FileTransport(sparse_disk.settings).open(sparse_disk.source) as r:
        cap = sparse_disk.source.capacity
        got = b"".join(bytes(r.read(o, min(MiB, cap - o))) for o in range(0, cap, MiB))
    assert got == sparse_disk.data


def test_extents_report_holes_and_data(sparse_disk: SparseDisk) -> None:
    if not fs_supports_holes(sparse_disk.path):
        pytest.skip("filesystem without SEEK_HOLE")
    cap = sparse_disk.source.capacity
    with FileTransport(sparse_disk.settings).open(sparse_disk.source) as r:
        exts = r.extents(0, cap)
    assert exts[0].offset == 0 and exts[-1].end == cap
    for e in exts:
        if not e.data:  # a reported hole really reads as zeros
            assert sparse_disk.data[e.offset : e.end] == bytes(e.length)
    for off, ln in sparse_disk.data_ranges:  # written data is never reported as a hole
        assert all(e.data for e in exts if e.offset < off + ln and off < e.end)
    assert sum(e.length for e in exts if not e.data) > cap // 2


def test_read_past_capacity(sparse_disk: SparseDisk) -> None:
    with (
        FileTransport(sparse_disk.settings).open(sparse_disk.source) as r,
        pytest.raises(OutOfRangeError, match="past capacity"),
    ):
        r.read(sparse_disk.source.capacity - 10, 11)


def test_file_shorter_than_capacity(sparse_disk: SparseDisk) -> None:
    src = replace(sparse_disk.source, capacity=sparse_disk.source.capacity + 1)
    with pytest.raises(ShortReadError, match="less than capacity"):
        FileTransport(sparse_disk.settings).open(src)


def test_file_shrinking_under_the_reader_is_a_short_read(sparse_disk: SparseDisk) -> None:
    with FileTransport(sparse_disk.settings).open(sparse_disk.source) as r:
        os.truncate(sparse_disk.path, 2 * MiB)
        r.read(0, MiB)
        with pytest.raises(ShortReadError, match="got 0 of"):
            r.read(3 * MiB, MiB)


def test_missing_disk_and_unknown_datastore(sparse_disk: SparseDisk) -> None:
    t = FileTransport(sparse_disk.settings)
    with pytest.raises(DiskNotFoundError, match="not found"):
        t.open(replace(sparse_disk.source, disk_file="[ds1] nope/x.vmdk"))
    with pytest.raises(ConfigError, match="'other'"):
        t.open(replace(sparse_disk.source, disk_file="[other] x/x.vmdk"))
    with pytest.raises(TaskError):
        t.open(replace(sparse_disk.source, disk_file="[ds1] ../x/x.vmdk"))


def test_symlink_escaping_the_mount_is_refused(sparse_disk: SparseDisk, tmp_path: Path) -> None:
    outside = tmp_path / "secret-flat.vmdk"
    outside.write_bytes(b"x" * 100)
    link = Path(sparse_disk.settings.datastore_mounts["ds1"]) / "evil-flat.vmdk"
    link.symlink_to(outside)
    src = replace(sparse_disk.source, disk_file="[ds1] evil.vmdk", capacity=100)
    with pytest.raises(DiskNotFoundError, match="outside"):
        FileTransport(sparse_disk.settings).open(src)
