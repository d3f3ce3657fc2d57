"""Seeded disk contents: holes, template blocks shared by clones, compressible and unique data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard

from lab import FillMix, Lab, LabError, LabSpec
from tests.lab.helpers import KIB, MIB

pytestmark = pytest.mark.integration

CAPACITY = 8 * MIB + 3333
BLOCK = 256 * KIB


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(hosts_per_cluster=2, vms_per_host=2, disk_sizes=[CAPACITY], odd_names=True)
    with Lab.start(spec) as running:
        yield running


def _is_hole(fd: int, offset: int, length: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError:  # ENXIO: no data after offset
        return True


def _digest(path: os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_fill_mix(lab: Lab) -> None:
    vms = lab.vms()
    clones = [vms[0]["name"], vms[1]["name"]]
    report = lab.fill_disks(seed=7, template_vms=clones, block_size=BLOCK)
    assert set(report.bytes_by_kind) == {"template", "compressible", "unique", "zeros"}
    by_vm: dict[str, dict[int, tuple[int, str]]] = {}
    for (vm, _key), layout in report.layout.items():
        by_vm[vm] = {off: (n, kind) for off, n, kind in layout}
    for v in vms[2:]:
        assert all(kind != "template" for _, kind in by_vm[v["name"]].values())

    paths = {v["name"]: lab.local_path(v["disks"][0]["file"]) for v in vms}
    cctx = zstandard.ZstdCompressor()
    shared = 0
    for name, blocks in by_vm.items():
        fd = os.open(paths[name], os.O_RDONLY)
        try:
            for off in range(0, CAPACITY, BLOCK):
                n = min(BLOCK, CAPACITY - off)
                if off not in blocks:
                    assert _is_hole(fd, off, n), f"{name} block at {off} should be unallocated"
                    continue
                data = os.pread(fd, n, off)
                kind = blocks[off][1]
                assert not _is_hole(fd, off, n)
                if kind == "zeros":
                    assert data == bytes(n)
                elif kind == "compressible":
                    assert len(cctx.compress(data)) * 2 < n
                elif kind == "unique":
                    assert len(cctx.compress(data)) > n * 0.99
                elif kind == "template":
                    other = clones[1] if name == clones[0] else clones[0]
                    if by_vm[other].get(off, (0, ""))[1] == "template":
                        with open(paths[other], "rb") as f:
                            f.seek(off)
                            assert f.read(n) == data
                        shared += 1
        finally:
            os.close(fd)
    assert shared > 0  # clones really share blocks


def test_fill_is_deterministic(lab: Lab) -> None:
    vm = lab.vms()[3]
    path = lab.local_path(vm["disks"][0]["file"])
    first = lab.fill_disks(seed=11, vms=[vm["name"]], block_size=BLOCK)
    digest = _digest(path)
    again = lab.fill_disks(seed=11, vms=[vm["moref"]], block_size=BLOCK)
    assert first.layout == again.layout
    assert _digest(path) == digest
    other = lab.fill_disks(seed=12, vms=[vm["name"]], block_size=BLOCK)
    assert other.layout != first.layout


def test_fill_rejects_bad_input(lab: Lab) -> None:
    with pytest.raises(LabError, match="unknown VMs"):
        lab.fill_disks(vms=["nope"])
    with pytest.raises(LabError, match="template_vms"):
        lab.fill_disks(template_vms=["nope"])
    with pytest.raises(LabError, match="block_size"):
        lab.fill_disks(block_size=1000)
    with pytest.raises(ValueError, match="FillMix"):
        FillMix(template=0.9, unique=0.5)


def test_write_and_read_guest_data_by_name_and_moref(lab: Lab) -> None:
    vm: dict[str, Any] = lab.vms()[2]
    key = vm["disks"][0]["key"]
    lab.write_guest_data(vm["name"], key, 4096, b"hello")
    assert lab.read_guest_data(vm["moref"], key, 4096, 5) == b"hello"
