"""Conformance of the lab's CBT layer, driven through pyVmomi as a backup tool would.

One lab for the module; each test works on its own VM so the order does not matter.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from lab import Lab, LabError, LabSpec
from tests.lab.helpers import (
    KIB,
    MIB,
    all_areas,
    disk_of,
    disks_of,
    folder_get,
    remove,
    set_cbt,
    snapshot,
    vm_obj,
)

pytestmark = pytest.mark.integration

GRANULE = 64 * KIB
UNALIGNED = 40 * MIB + 12345
SPEC = LabSpec(
    clusters=1,
    hosts_per_cluster=2,
    standalone_hosts=1,
    vms_per_host=2,
    disks_per_vm=1,
    disk_sizes=[64 * MIB, UNALIGNED, 600 * MIB],
    odd_names=True,
)
CHANGE_ID = re.compile(r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/(\d+)$")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(SPEC) as running:
        yield running


@pytest.fixture(scope="module")
def vms(lab: Lab) -> list[dict[str, Any]]:
    return lab.vms()


def _vm(si: Any, vms: list[dict[str, Any]], index: int) -> tuple[dict[str, Any], Any, int]:
    info = vms[index]
    return info, vm_obj(si, info["moref"]), info["disks"][0]["key"]


def _change_id(snap: Any, key: int) -> str:
    return str(disk_of(snap.config, key).backing.changeId or "")


def test_inventory_matches_spec(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    assert len(vms) == SPEC.vm_count == 6
    assert {v["cluster"] for v in vms} == {"DC0_C0", None}
    assert any(" " in v["name"] and not v["name"].isascii() for v in vms)
    capacities = [v["disks"][0]["capacity"] for v in vms]
    assert capacities == [64 * MIB, UNALIGNED, 600 * MIB] * 2
    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    by_moref = {vm._moId: vm for vm in view.view}
    for info in vms:
        vm = by_moref[info["moref"]]
        assert vm.name == info["name"]
        assert vm.runtime.host.name == info["host"]
        disk = disks_of(vm.config)[0]
        assert disk.capacityInBytes == info["disks"][0]["capacity"]
        assert disk.backing.fileName == info["disks"][0]["file"]
        flat = lab.local_path(disk.backing.fileName)
        assert flat.name.endswith("-flat.vmdk")
        st = os.stat(flat)
        assert st.st_size == disk.capacityInBytes  # sparse file of the disk's size
        assert st.st_blocks == 0
    ds_view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.Datastore], True
    )
    assert {ds.name: ds.info.url for ds in ds_view.view} == lab.datastores


def test_cbt_off_means_no_change_id_and_query_faults(si: Any, vms: list[dict[str, Any]]) -> None:
    _, vm, key = _vm(si, vms, 0)
    snap = snapshot(vm, "no-cbt")
    try:
        assert _change_id(snap, key) == ""
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(snap, key, 0, "*")
    finally:
        remove(snap)


def test_turning_cbt_off_forgets_change_ids(si: Any, vms: list[dict[str, Any]]) -> None:
    _, vm, key = _vm(si, vms, 0)
    set_cbt(vm, True)
    first = snapshot(vm, "a")
    old = _change_id(first, key)
    assert CHANGE_ID.match(old)
    vm.QueryChangedDiskAreas(first, key, 0, old)  # valid while tracking
    remove(first)

    set_cbt(vm, False)
    assert not disk_of(vm.config, key).backing.changeId
    set_cbt(vm, True)
    second = snapshot(vm, "b")
    try:
        new = _change_id(second, key)
        assert new.split("/")[0] != old.split("/")[0]  # a new tracking epoch
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(second, key, 0, old)
    finally:
        remove(second)


def test_star_reports_allocated_areas_of_sparse_disk(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    info, vm, key = _vm(si, vms, 1)
    set_cbt(vm, True)
    lab.write_guest_data(info["moref"], key, 1 * MIB, b"x" * 5000)
    lab.write_guest_data(info["name"], key, 8 * MIB, bytes(8192))  # written zeros: allocated
    lab.write_guest_data(info["moref"], key, UNALIGNED - 100, b"t" * 100)
    snap = snapshot(vm, "full")
    try:
        areas, _ = all_areas(vm, snap, key, "*", UNALIGNED)

        def covered(start: int, length: int) -> bool:
            return any(a <= start and start + length <= a + n for a, n in areas)

        assert covered(1 * MIB, 5000)
        assert covered(8 * MIB, 8192)
        assert covered(UNALIGNED - 100, 100)
        assert areas[-1][0] + areas[-1][1] == UNALIGNED  # clipped to the capacity
        # never-written space is not reported
        assert sum(n for _, n in areas) < 64 * KIB
        assert not any(a < 8 * MIB and a + n > 2 * MIB for a, n in areas)
        # the frozen file keeps the holes
        frozen = lab.local_path(disk_of(snap.config, key).backing.fileName)
        assert os.stat(frozen).st_blocks * 512 < 256 * KIB
    finally:
        remove(snap)


def test_incremental_areas_and_frozen_snapshot(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    info, vm, key = _vm(si, vms, 1)
    set_cbt(vm, True)
    lab.write_guest_data(info["moref"], key, 0, b"base" * 1024)
    s1 = snapshot(vm, "s1")
    cid1 = _change_id(s1, key)
    frozen_file = disk_of(s1.config, key).backing.fileName
    assert frozen_file != disk_of(vm.config, key).backing.fileName

    lab.write_guest_data(info["moref"], key, 3 * MIB + 5, b"y" * 10)
    lab.write_guest_data(info["moref"], key, UNALIGNED - 1, b"z")
    # writes after the snapshot are not visible through it
    assert folder_get(lab, si, frozen_file, info["datacenter"], 3 * MIB, 64) == bytes(64)
    assert lab.read_guest_data(info["moref"], key, 3 * MIB + 5, 10) == b"y" * 10
    assert folder_get(lab, si, frozen_file, info["datacenter"], 0, 8) == b"basebase"

    s2 = snapshot(vm, "s2")
    s3 = None
    try:
        cid2 = _change_id(s2, key)
        m1, m2 = CHANGE_ID.match(cid1), CHANGE_ID.match(cid2)
        assert m1 and m2
        assert cid1.split("/")[0] == cid2.split("/")[0]
        assert int(m2.group(3)) == int(m1.group(3)) + 1
        assert disk_of(vm.config, key).backing.changeId == cid2

        areas, _ = all_areas(vm, s2, key, cid1, UNALIGNED)
        tail = (UNALIGNED - 1) // GRANULE * GRANULE
        assert areas == [(3 * MIB, GRANULE), (tail, UNALIGNED - tail)]
        assert all_areas(vm, s2, key, cid2, UNALIGNED)[0] == []
        assert all_areas(vm, s1, key, cid1, UNALIGNED)[0] == []

        remove(s1)
        s1 = None
        # changeIds keep moving forward after a removal
        s3 = snapshot(vm, "s3")
        m3 = CHANGE_ID.match(_change_id(s3, key))
        assert m3 and int(m3.group(3)) == int(m2.group(3)) + 1
        assert all_areas(vm, s3, key, cid1, UNALIGNED)[0] == areas
    finally:
        for s in (s1, s2, s3):
            if s is not None:
                remove(s)


def test_more_than_one_page_of_changed_areas(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    info, vm, key = _vm(si, vms, 2)
    capacity = 600 * MIB
    set_cbt(vm, True)
    base = snapshot(vm, "base")
    cid = _change_id(base, key)
    remove(base)
    count = 4100  # every other granule: no two areas merge
    for i in range(count):
        lab.write_guest_data(info["moref"], key, 2 * i * GRANULE, b"\x01")
    snap = snapshot(vm, "many")
    try:
        first = vm.QueryChangedDiskAreas(snap, key, 0, cid)
        assert len(first.changedArea) == SPEC.cbt_page_size == 2000
        assert first.length < capacity  # one reply is not the whole answer
        areas, calls = all_areas(vm, snap, key, cid, capacity)
        assert calls == 3
        assert areas == [(2 * i * GRANULE, GRANULE) for i in range(count)]
        allocated, calls = all_areas(vm, snap, key, "*", capacity)
        assert calls >= 3
        assert [a for a, _ in allocated] == [2 * i * GRANULE for i in range(count)]
    finally:
        remove(snap)


def test_bad_arguments(si: Any, vms: list[dict[str, Any]]) -> None:
    _, vm, key = _vm(si, vms, 3)
    _, other, _ = _vm(si, vms, 4)
    set_cbt(vm, True)
    snap = snapshot(vm, "args")
    other_snap = snapshot(other, "other")
    try:
        cid = _change_id(snap, key)
        uuid_part, seq = cid.split("/")
        for bad in (
            "garbage",
            f"{uuid_part}/{int(seq) + 50}",
            "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1",
            f"{uuid_part}/x",
        ):
            with pytest.raises(vim.fault.FileFault):
                vm.QueryChangedDiskAreas(snap, key, 0, bad)
        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.QueryChangedDiskAreas(snap, key + 77, 0, "*")
        assert exc.value.invalidProperty == "deviceKey"
        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.QueryChangedDiskAreas(other_snap, key, 0, "*")
        assert exc.value.invalidProperty == "snapshot"
        with pytest.raises(vmodl.fault.InvalidArgument):
            vm.QueryChangedDiskAreas(snap, key, 64 * MIB, "*")
    finally:
        remove(snap)
        remove(other_snap)


def test_reset_cbt_invalidates_change_ids(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    info, vm, key = _vm(si, vms, 3)
    set_cbt(vm, True)
    s1 = snapshot(vm, "before-reset")
    cid1 = _change_id(s1, key)
    remove(s1)
    lab.inject(reset_cbt=(info["name"], key))
    s2 = snapshot(vm, "after-reset")
    try:
        cid2 = _change_id(s2, key)
        assert cid2.split("/")[0] != cid1.split("/")[0]
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(s2, key, 0, cid1)
        vm.QueryChangedDiskAreas(s2, key, 0, "*")
    finally:
        remove(s2)


def test_snapshots_cost_no_copy_and_later_writes_leave_them_alone(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    """Like ESXi's redirect-on-write snapshots, taking one copies no data: the frozen
    disk is the disk's file under a second name. The first write afterwards moves the
    disk to a private copy, so two snapshots and the disk each keep their own bytes;
    growing a disk under a live snapshot does not grow the snapshot (a new CBT epoch)."""
    info, vm, key = _vm(si, vms, 2)
    set_cbt(vm, True)
    current = lab.local_path(info["disks"][0]["file"])
    cap = info["disks"][0]["capacity"]
    lab.write_guest_data(info["moref"], key, MIB, b"one" * 100)
    allocated = os.stat(current).st_blocks
    s1 = snapshot(vm, "cow-1")
    s2 = None
    try:
        f1 = lab.local_path(disk_of(s1.config, key).backing.fileName)
        assert os.stat(f1).st_ino == os.stat(current).st_ino  # a link, not a copy
        lab.write_guest_data(info["moref"], key, MIB, b"two" * 100)
        assert os.stat(f1).st_ino != os.stat(current).st_ino
        assert os.stat(current).st_nlink == 1
        s2 = snapshot(vm, "cow-2")
        f2 = lab.local_path(disk_of(s2.config, key).backing.fileName)
        # CBT between the two snapshots sees the one rewritten granule
        areas, _ = all_areas(vm, s2, key, _change_id(s1, key), cap)
        assert areas == [(MIB, GRANULE)]
        lab.write_guest_data(info["moref"], key, MIB, b"new" * 100)
        lab.inject(grow_disk=(info["moref"], key, cap + 4 * MIB))
        with open(f1, "rb") as a, open(f2, "rb") as b:
            a.seek(MIB)
            b.seek(MIB)
            assert (a.read(300), b.read(300)) == (b"one" * 100, b"two" * 100)
        assert os.stat(f1).st_size == os.stat(f2).st_size == cap
        assert lab.read_guest_data(info["moref"], key, MIB, 300) == b"new" * 100
        # the disk stays as sparse through its private copies
        assert (os.stat(current).st_blocks - allocated) * 512 < MIB
    finally:
        for s in (s1, s2):
            if s is not None:
                remove(s)
    assert not any(p.name.endswith(".private-tmp") for p in current.parent.iterdir())


def test_unchanged_disk_reuses_its_digests_and_still_sees_the_next_write(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    """A disk nobody wrote since its last snapshot is not read again (its digests are
    remembered by inode, size and mtime); the first write after that, in place (no
    snapshot shares the file), still shows up in CBT."""
    import time

    info, vm, key = _vm(si, vms, 3)
    set_cbt(vm, True)
    cap = info["disks"][0]["capacity"]
    lab.write_guest_data(info["moref"], key, 2 * MIB, b"a" * 100)
    time.sleep(1.2)  # the lab remembers only files modified over a second before reading
    s1 = snapshot(vm, "memo-1")
    cid1 = _change_id(s1, key)
    remove(s1)
    s2 = snapshot(vm, "memo-2")  # from the memo
    try:
        assert all_areas(vm, s2, key, cid1, cap)[0] == []
        cid2 = _change_id(s2, key)
    finally:
        remove(s2)
    lab.write_guest_data(info["moref"], key, 5 * MIB, b"b")  # in place: nlink is 1
    s3 = snapshot(vm, "memo-3")
    try:
        assert all_areas(vm, s3, key, cid2, cap)[0] == [(5 * MIB, GRANULE)]
    finally:
        remove(s3)


def test_cbt_from_the_write_log_and_writes_that_bypass_it(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    """The lab re-hashes only the blocks the guest's write log names when the log chains
    the last hashed file to the current one; a write that bypasses the log (or a
    damaged log) breaks the chain and the whole disk is hashed: CBT is exact either way."""
    import time

    from lab.guest import WRITE_LOG_SUFFIX, DiskWriter

    info, vm, key = _vm(si, vms, 0)
    set_cbt(vm, True)
    cap = info["disks"][0]["capacity"]
    path = lab.local_path(info["disks"][0]["file"])
    log = Path(f"{path}{WRITE_LOG_SUFFIX}")
    lab.write_guest_data(info["moref"], key, 0, b"x")
    time.sleep(1.2)
    cids = []

    def snap_and_changes(name: str) -> list[tuple[int, int]]:
        s = snapshot(vm, name)
        try:
            cid = _change_id(s, key)
            areas = all_areas(vm, s, key, cids[-1], cap)[0] if cids else []
        finally:
            remove(s)
        cids.append(cid)
        assert log.stat().st_size == 0  # consumed by the snapshot
        return areas

    snap_and_changes("log-0")
    with DiskWriter(path) as w:
        w.pwrite(b"a", 3 * MIB)
    assert snap_and_changes("log-1") == [(3 * MIB, GRANULE)]
    lab.write_guest_data(info["moref"], key, 1 * MIB, b"b")  # right after: a fresh memo
    assert snap_and_changes("log-2") == [(1 * MIB, GRANULE)]
    time.sleep(0.05)  # a new tick of the kernel's clock: the bypass moves the mtime
    with open(path, "r+b") as fh:  # bypasses the log
        fh.seek(5 * MIB)
        fh.write(b"c")
    assert snap_and_changes("log-3") == [(5 * MIB, GRANULE)]
    lab.write_guest_data(info["moref"], key, 2 * MIB, b"d")
    time.sleep(0.05)
    with open(path, "r+b") as fh:  # after a logged write: the chain ends short
        fh.seek(6 * MIB)
        fh.write(b"e")
    assert snap_and_changes("log-4") == [(2 * MIB, GRANULE), (6 * MIB, GRANULE)]
    lab.write_guest_data(info["moref"], key, 7 * MIB, b"f")
    with open(log, "a") as fh:
        fh.write("not a record\n")
    assert snap_and_changes("log-5") == [(7 * MIB, GRANULE)]
    # The log is trusted like ESXi trusts its I/O path: a record that names another block
    # than the one written (its chain intact) is what the lab re-hashes. This shows the
    # snapshot read only the logged blocks, not the disk.
    time.sleep(1.2)
    snap_and_changes("log-6")
    with DiskWriter(path) as w:
        w.pwrite(b"g", 8 * MIB)
    rec = log.read_text().split()
    log.write_text(" ".join([str(9 * MIB), *rec[1:]]) + "\n")
    assert snap_and_changes("log-7") == []


def test_settled_disks_are_not_hashed_again_by_their_next_snapshot(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    """lab.settle() digests every disk as it is (what a first snapshot does) so that the
    next snapshot re-hashes only what the guest wrote since: CBT stays exact across it."""
    from lab.guest import WRITE_LOG_SUFFIX, DiskWriter

    info, vm, key = _vm(si, vms, 5)
    set_cbt(vm, True)
    cap = info["disks"][0]["capacity"]
    path = lab.local_path(info["disks"][0]["file"])
    log = Path(f"{path}{WRITE_LOG_SUFFIX}")
    s0 = snapshot(vm, "settle-0")
    cid0 = _change_id(s0, key)
    remove(s0)
    lab.write_guest_data(info["moref"], key, 3 * MIB, b"a")
    settled = lab.settle()
    assert settled["disks"] == sum(len(v["disks"]) for v in vms)
    assert log.stat().st_size == 0  # consumed by the settle
    # A lying record (its chain intact) shows what the next snapshot reads: only the
    # logged block on top of the settled digests, not the whole disk.
    with DiskWriter(path) as w:
        w.pwrite(b"g", 8 * MIB)
    rec = log.read_text().split()
    log.write_text(" ".join([str(9 * MIB), *rec[1:]]) + "\n")
    s1 = snapshot(vm, "settle-1")
    try:
        assert all_areas(vm, s1, key, cid0, cap)[0] == [(3 * MIB, GRANULE)]
    finally:
        remove(s1)


def test_grow_disk(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    info, vm, key = _vm(si, vms, 4)
    set_cbt(vm, True)
    s1 = snapshot(vm, "small")
    cid1 = _change_id(s1, key)
    remove(s1)
    old_cap = info["disks"][0]["capacity"]
    new_cap = old_cap + 16 * MIB + 512
    lab.inject(grow_disk=(info["moref"], key, new_cap))
    assert disk_of(vm.config, key).capacityInBytes == new_cap
    assert os.stat(lab.local_path(info["disks"][0]["file"])).st_size == new_cap
    lab.write_guest_data(info["moref"], key, new_cap - 10, b"e" * 10)
    s2 = snapshot(vm, "grown")
    try:
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(s2, key, 0, cid1)
        areas, _ = all_areas(vm, s2, key, "*", new_cap)
        assert areas[-1][0] + areas[-1][1] == new_cap
    finally:
        remove(s2)
    with pytest.raises(LabError):
        lab.inject(grow_disk=(info["moref"], key, new_cap - 1))


def test_failing_snapshot_injection(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    info, vm, _ = _vm(si, vms, 4)
    _, other, _ = _vm(si, vms, 5)
    lab.inject(fail_snapshot_vm=info["name"])
    try:
        with pytest.raises(vim.fault.ApplicationQuiesceFault):
            snapshot(vm, "q", quiesce=True)
        with pytest.raises(vim.fault.SnapshotFault):
            snapshot(vm, "nq", quiesce=False)
        remove(snapshot(other, "unaffected"))
    finally:
        lab.inject(fail_snapshot_vm=None)
    remove(snapshot(vm, "works-again"))
    with pytest.raises(LabError):
        lab.inject(fail_snapshot_vm="no such vm")


def test_failing_remove_injection(lab: Lab, si: Any, vms: list[dict[str, Any]]) -> None:
    """RemoveSnapshot_Task of one VM fails with FileLocked and the snapshot stays."""
    info, vm, _ = _vm(si, vms, 4)
    _, other, _ = _vm(si, vms, 5)
    s = snapshot(vm, "locked")
    lab.inject(fail_remove_vm=info["moref"])
    try:
        with pytest.raises(vim.fault.FileLocked):
            remove(s)
        assert [e["snapshot"] for e in lab.snapshot_events() if not e["removed_at"]] == [s._moId]
        remove(snapshot(other, "unaffected"))
    finally:
        lab.inject(fail_remove_vm=None)
    remove(s)
    with pytest.raises(LabError):
        lab.inject(fail_remove_vm="no such vm")


def test_remove_snapshot_is_waitable_and_deletes_frozen_files(
    lab: Lab, si: Any, vms: list[dict[str, Any]]
) -> None:
    info, vm, key = _vm(si, vms, 5)
    set_cbt(vm, True)
    snap = snapshot(vm, "to-remove")
    frozen = lab.local_path(disk_of(snap.config, key).backing.fileName)
    assert frozen.exists()
    task = snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
    WaitForTask(task)  # pyVmomi must accept the task's info (entity is the VM)
    assert task.info.state == "success"
    assert task.info.entity._moId == info["moref"]
    assert not frozen.exists()
    assert vm.snapshot is None

    events = [e for e in lab.snapshot_events() if e["snapshot"] == snap._moId]
    assert len(events) == 1
    event = events[0]
    assert event["vm"] == info["name"] and event["moref"] == info["moref"]
    assert event["host"] == info["host"]
    assert event["removed_at"] is not None and event["removed_at"] >= event["created_at"]


def test_concurrent_snapshots_of_many_vms(lab: Lab, vms: list[dict[str, Any]]) -> None:
    """Snapshots of several VMs at once (as a coordinator runs them) all freeze and record."""

    def one(info: dict[str, Any]) -> str:
        si = lab.connect()
        try:
            vm = vm_obj(si, info["moref"])
            snap = snapshot(vm, "parallel")
            moref = str(snap._moId)
            remove(snap)
            return moref
        finally:
            Disconnect(si)

    with ThreadPoolExecutor(max_workers=4) as pool:
        morefs = list(pool.map(one, vms[:4]))
    events = {e["snapshot"]: e for e in lab.snapshot_events()}
    assert len(set(morefs)) == 4
    for moref, info in zip(morefs, vms[:4], strict=True):
        assert events[moref]["moref"] == info["moref"]
        assert events[moref]["removed_at"] is not None


def test_slow_soap_injection(lab: Lab, si: Any) -> None:
    lab.inject(slow_soap_ms=300, slow_soap_method="CurrentTime")
    try:
        began = time.monotonic()
        si.CurrentTime()
        # A lower bound on an injected sleep, not a performance assertion.
        assert time.monotonic() - began >= 0.3
    finally:
        lab.inject(slow_soap_ms=0, slow_soap_method="")


def test_expired_sessions_need_a_new_login(lab: Lab, vms: list[dict[str, Any]]) -> None:
    si = lab.connect()
    vm = vm_obj(si, vms[0]["moref"])
    assert vm.name == vms[0]["name"]
    result = lab.inject(expire_sessions=True)
    assert result["expired_sessions"] >= 1
    with pytest.raises(vim.fault.NotAuthenticated):
        si.CurrentTime()
    with pytest.raises(vim.fault.NotAuthenticated):
        _ = vm_obj(si, vms[0]["moref"]).name  # PropertyCollector too
    fresh = lab.connect()
    assert vm_obj(fresh, vms[0]["moref"]).name == vms[0]["name"]


def test_bad_helper_input_is_rejected(lab: Lab, vms: list[dict[str, Any]]) -> None:
    info = vms[0]
    key = info["disks"][0]["key"]
    cap = info["disks"][0]["capacity"]
    with pytest.raises(LabError, match="outside the disk"):
        lab.write_guest_data(info["moref"], key, cap - 1, b"ab")
    with pytest.raises(LabError, match="outside the disk"):
        lab.write_guest_data(info["moref"], key, -1, b"a")
    with pytest.raises(LabError, match="no VM"):
        lab.write_guest_data("no such vm", key, 0, b"a")
    with pytest.raises(LabError, match="no disk"):
        lab.write_guest_data(info["moref"], key + 1, 0, b"a")
    with pytest.raises(LabError, match="unknown datastore"):
        lab.local_path("[nope] x/y.vmdk")
    with pytest.raises(LabError, match="reset_cbt"):
        lab.inject(reset_cbt=("no such vm", key))
