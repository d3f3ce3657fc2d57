"""The rules of an in-place rollback that need no vCenter: which VM, matching disks, when
CBT cannot answer, which chunks, which options go together, the confirmation."""

from __future__ import annotations

import argparse
import io

import pytest

from coordinator.cbt import ALL_AREAS
from coordinator.discovery import DiskInfo, VmInfo
from coordinator.restore.cli import in_place_usage, register_restore_vm
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.rollback_cli import confirm
from coordinator.restore.rollback_plan import (
    chunk_runs,
    find_vm,
    full_reason,
    match_disks,
    whole_disk,
)
from repository.points import Point, PointDisk

CS = 1024


def _disk(key: int, cap: int, skip: str = "") -> DiskInfo:
    return DiskInfo(key, f"Hard disk {key}", cap, f"[ds] vm/d{key}.vmdk", "ds", "persistent",
                    "FlatVer2BackingInfo", "", 1000, key - 2000, skip_reason=skip)  # fmt: skip


def _vm(name: str, uuid: str, disks: list[DiskInfo]) -> VmInfo:
    return VmInfo("vc", f"vm-{name}", name, "bios-" + uuid, uuid, "DC0", "C0", "", "h0", "host-1",
                  False, "connected", True, False, disks)  # fmt: skip


def _point(disks: dict[int, int], failed: list[tuple[int, str]] | None = None) -> Point:
    pds = [PointDisk(k, c, "52 aa/3", "", {}, 1, 0, 1) for k, c in disks.items()]
    return Point("P1", "j", "vc", "u1", "vm-a", "a", b"", "complete", 0.0, 0.0, CS, pds,
                 failed or [])  # fmt: skip


def test_find_vm_by_uuid_by_name_and_the_ambiguous_cases() -> None:
    a, b = _vm("a", "u1", []), _vm("b", "u2", [])
    p = _point({})
    assert find_vm([a, b], p) is a
    assert find_vm([a, b], p, "b") is b and find_vm([a, b], p, "vm-b") is b
    with pytest.raises(RestoreVmError, match=r"no VM with uuid u1.*--vm"):
        find_vm([b], p)
    with pytest.raises(RestoreVmError, match=r"2 VMs match.*--vm"):
        find_vm([a, _vm("a2", "u1", [])], p)
    with pytest.raises(RestoreVmError, match="no VM 'zz'"):
        find_vm([a, b], p, "zz")


def test_disks_must_be_the_points_keys_and_capacities() -> None:
    p = _point({2000: 4096, 2001: 8192})
    ok, notes = match_disks(p, _vm("a", "u1", [_disk(2001, 8192), _disk(2000, 4096),
                                               _disk(2002, 10, "independent disk")]))  # fmt: skip
    assert [d.key for d in ok] == [2000, 2001]
    assert notes and "disk 2002" in notes[0] and "independent" in notes[0]
    with pytest.raises(RestoreVmError, match=r"disk 2001 .* holds 9000 bytes, the point's 8192"):
        match_disks(p, _vm("a", "u1", [_disk(2000, 4096), _disk(2001, 9000)]))
    with pytest.raises(RestoreVmError, match="disk 2001 of the point is not on VM 'a'"):
        match_disks(p, _vm("a", "u1", [_disk(2000, 4096)]))
    failed = _point({2000: 4096}, [(2001, "read error")])
    with pytest.raises(RestoreVmError, match=r"disk 2001 .* not in the point .*read error"):
        match_disks(failed, _vm("a", "u1", [_disk(2000, 4096), _disk(2001, 8192)]))


def test_when_cbt_cannot_answer() -> None:
    assert full_reason("52 aa/3", "52 aa/9", True) == ""
    assert "no changeId" in full_reason("", "52 aa/9", True)
    assert "no changeId" in full_reason(ALL_AREAS, "52 aa/9", True)
    assert "CBT is off" in full_reason("52 aa/3", "", True)
    assert "CBT is off" in full_reason("52 aa/3", "52 aa/9", False)
    assert "reset" in full_reason("52 aa/3", "52 bb/1", True)


def test_areas_widen_to_whole_chunks_merged_and_cut_at_the_capacity() -> None:
    cap = 10 * CS + 100
    runs = chunk_runs([(5 * CS + 1, 10), (0, 1), (CS - 1, 2), (10 * CS + 50, 50), (3, 0)], CS, cap)
    assert runs.runs == [(0, 2 * CS), (5 * CS, 6 * CS), (10 * CS, cap)]
    assert runs.bytes == 3 * CS + 100 and runs.chunks == 4
    assert runs.chunks_from(0) == [(0, CS), (CS, CS), (5 * CS, CS), (10 * CS, 100)]
    assert runs.chunks_from(CS) == [(CS, CS), (5 * CS, CS), (10 * CS, 100)]  # a resume
    assert runs.chunks_from(2 * CS) == [(5 * CS, CS), (10 * CS, 100)]
    assert runs.done_at(5 * CS) == 2 * CS and runs.done_at(cap) == runs.bytes
    assert chunk_runs([], CS, cap).runs == []
    assert whole_disk(CS, cap).bytes == cap and whole_disk(CS, cap).chunks == 11


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_restore_vm(parser.add_subparsers())
    return parser.parse_args(["restore-vm", *argv])


def test_which_options_go_with_in_place() -> None:
    assert in_place_usage(_args("--in-place", "--point", "P", "-c", "x")) == ""
    assert in_place_usage(_args("P", "-c", "x", "--to", "vc", "--datastore", "ds")) == ""
    assert in_place_usage(_args("--in-place", "P", "-c", "x", "--transport", "nbd")) == ""
    bad = in_place_usage(_args("--in-place", "P", "-c", "x", "--datastore", "ds", "--name", "n"))
    assert "--datastore, --name: not with --in-place" in bad
    assert "--transport http" in in_place_usage(_args("--in-place", "P", "-c", "x",
                                                      "--transport", "http"))  # fmt: skip
    assert "--yes, --power-on: only with --in-place" in in_place_usage(
        _args("P", "-c", "x", "--to", "vc", "--datastore", "ds", "--yes", "--power-on")
    )
    assert "needs --datastore" in in_place_usage(_args("P", "-c", "x", "--to", "vc"))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_confirmation_wants_the_vms_name() -> None:
    err = io.StringIO()
    assert confirm("Overwrite?", "web1", io.StringIO("web1\n"), err) is None  # not a terminal
    assert err.getvalue() == ""
    assert confirm("Overwrite?", "web1", _Tty("web1\n"), err) is True
    assert "Overwrite?" in err.getvalue() and "(web1)" in err.getvalue()
    assert confirm("Overwrite?", "web1", _Tty("y\n"), io.StringIO()) is False
    assert confirm("Overwrite?", "web1", _Tty(""), io.StringIO()) is False  # end of input
