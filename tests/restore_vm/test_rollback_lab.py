"""restore-vm --in-place against the vSphere lab: real backups (a full, then incrementals)
through writers and proxies on RabbitMQ, guest writes through the lab's guest I/O path, the
rollback through the CLI writing the lab's flat files through nbdkit's file plugin, each
disk then compared with a restore of the point."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabSpec
from lab.stack import ROOT, Stack, StackSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 2**20
CHUNK = 256 * 1024
SIZES = [12 * MiB + 512, 8 * MiB]  # the first ends mid-chunk
KEYS = (2000, 2001)


@dataclass
class World:
    lab: Any
    stack: Stack
    vms: list[str]  # VM names
    points: list[dict[str, str]]  # per backup run: VM name -> point id
    # every range the guest wrote after the full, per VM and disk
    written: dict[tuple[str, int], list[tuple[int, int]]]

    def rollback(self, point: str, *extra: str, config: Path | None = None) -> tuple[int, Any, str]:
        """``vmbackup restore-vm --in-place --point P EXTRA --json``: (exit, document, stderr)."""
        r = self.run(point, *extra, "--json", config=config)
        return r.returncode, json.loads(r.stdout[r.stdout.index("{\n") :]), r.stderr

    def run(self, point: str, *extra: str, config: Path | None = None) -> Any:
        """``vmbackup restore-vm --in-place --point P EXTRA``, stdin not a terminal."""
        cfg = str(config or self.stack.config_path)
        argv = ["restore-vm", "--in-place", "--point", point, "--config", cfg, *extra]
        return subprocess.run(
            [sys.executable, "-m", "vmbackup", *argv],
            cwd=ROOT,
            env=self.stack._env({}),  # the stack's own way to run a command
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def guest_write(self, vm: str, key: int, offset: int, n: int) -> None:
        self.lab.write_guest_data(vm, key, offset, os.urandom(n))
        self.written.setdefault((vm, key), []).append((offset, n))

    def flat(self, vm: str, key: int) -> Path:
        path: Path = self.lab.local_path(self.lab.disk(vm, key)["file"])
        return path

    def assert_disks_are(self, vm: str, point: str) -> None:
        for key in KEYS:
            want = self.stack.restore_digest(point, key)
            assert sha256(self.flat(vm, key)) == want, f"{vm} disk {key} is not point {point}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def chunks_of(ranges: list[tuple[int, int]], capacity: int) -> int:
    """Bytes of the whole chunks the ranges touch (the last chunk cut at the capacity)."""
    idx = {i for off, n in ranges for i in range(off // CHUNK, (off + n - 1) // CHUNK + 1)}
    return sum(min(CHUNK, capacity - i * CHUNK) for i in idx)


def _backup(stack: Stack) -> dict[str, str]:
    run = stack.backup()
    # on failure say why: the report's error and the coordinator's last lines
    assert run.returncode == 0, (run.report.get("error"), run.log_path.read_text()[-4000:])
    return {v["name"]: v["point_id"] for v in run.report["vms"]}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="vmbackup-rollback-"))
    spec = LabSpec(
        clusters=1, hosts_per_cluster=1, vms_per_host=3, disks_per_vm=2, disk_sizes=SIZES
    )
    try:
        with Lab.start(spec) as lab:
            lab.fill_disks(seed=11)
            sspec = StackSpec(writers=1, proxies=1, n_shards=2, chunk_size=CHUNK)
            with Stack(lab, tmp, sspec) as stack:
                names = sorted(v["name"] for v in lab.vms())
                w = World(lab, stack, names, [], {})
                w.points.append(_backup(stack))  # the full
                for round_ in range(2):  # two incrementals, each after guest writes
                    for name in names:
                        w.guest_write(name, 2000, (2 + round_) * MiB + 777, 100_000)
                        w.guest_write(name, 2001, (5 - round_) * MiB, 4096)
                    w.points.append(_backup(stack))
                yield w
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_backups_are_a_full_then_incrementals(world: World) -> None:
    from repository.repository import Repository

    repo = Repository.open(world.stack.repo)
    modes = [
        {d.info.get("mode") for d in repo.get_point(p[world.vms[0]]).disks} for p in world.points
    ]
    assert modes == [{"full"}, {"incremental"}, {"incremental"}]


def test_rollback_to_the_last_incremental_writes_only_the_changed_chunks(world: World) -> None:
    vm = world.vms[0]
    point = world.points[-1][vm]
    after = {2000: [(1 * MiB + 100, 5000), (5 * MiB, 300_000)], 2001: [(0, 4096)]}
    for key, ranges in after.items():
        for off, n in ranges:
            world.guest_write(vm, key, off, n)

    code, doc, err = world.rollback(point, "--yes")
    assert code == 0, err
    res = doc["result"]
    assert res["vm_name"] == vm and res["power_state_before"] == "poweredOn"
    assert res["power_state"] == "poweredOff" and res["snapshot_removed"]
    for d in res["disks"]:
        cap = SIZES[KEYS.index(d["key"])]
        expected = chunks_of(after[d["key"]], cap)
        assert d["mode"] == "incremental", d
        assert d["state"] == "rolled back"
        assert d["areas"] >= 1 and d["changed_bytes"] <= d["planned_bytes"]
        # exactly the chunks the guest wrote since the point, nothing else
        assert d["planned_bytes"] == expected, d
        assert d["bytes_written"] + d["bytes_zeroed"] == expected, d
        assert expected * 10 < cap
    assert "rollback_disk_plan" in err
    world.assert_disks_are(vm, point)
    ours = [e for e in world.lab.snapshot_events() if e["vm"] == vm]
    assert len(ours) == 4 and all(e["removed_at"] for e in ours), ours  # 3 backups, 1 rollback

    # a rerun is safe: CBT names what still differs (here, in the lab: nothing)
    code, doc, err = world.rollback(point, "--yes")
    assert code == 0, err
    for d in doc["result"]["disks"]:
        assert d["mode"] == "incremental" and d["bytes_written"] + d["bytes_zeroed"] == 0, d
    world.assert_disks_are(vm, point)


def test_rollback_to_the_full_after_two_incrementals(world: World) -> None:
    vm = world.vms[0]
    point = world.points[0][vm]
    code, doc, err = world.rollback(point, "--yes", "--power-on")
    assert code == 0, err
    res = doc["result"]
    assert res["power_state"] == "poweredOn"
    for d in res["disks"]:
        cap = SIZES[KEYS.index(d["key"])]
        bound = chunks_of(world.written[(vm, d["key"])], cap)  # every guest write since
        assert d["mode"] == "incremental", d
        assert 0 < d["bytes_written"] + d["bytes_zeroed"] <= bound, d
    world.assert_disks_are(vm, point)


def test_a_cbt_reset_falls_back_to_writing_the_whole_disk(world: World) -> None:
    vm = world.vms[1]
    point = world.points[-1][vm]
    world.guest_write(vm, 2000, 7 * MiB, 50_000)
    world.guest_write(vm, 2001, 3 * MiB, 50_000)
    world.lab.inject(reset_cbt=(vm, 2000))
    code, doc, err = world.rollback(point, "--yes")
    assert code == 0, err
    by_key = {d["key"]: d for d in doc["result"]["disks"]}
    full, incr = by_key[2000], by_key[2001]
    assert full["mode"] == "full" and "CBT cannot answer" in full["why"], full
    assert "FileFault" in full["why"] or "reset" in full["why"], full
    assert full["planned_bytes"] == SIZES[0]
    assert full["bytes_written"] + full["bytes_zeroed"] == SIZES[0]
    assert full["bytes_zeroed"] > 0  # the point's zero chunks were zeroed, not skipped
    assert incr["mode"] == "incremental"
    assert "rollback_full_write" in err
    world.assert_disks_are(vm, point)


def test_a_fault_while_asking_cbt_removes_the_snapshot_and_writes_nothing(
    world: World, tmp_path: Path
) -> None:
    vm = world.vms[1]
    point = world.points[-1][vm]
    world.guest_write(vm, 2000, 0, 70_000)
    before = {k: sha256(world.flat(vm, k)) for k in KEYS}
    events = len(world.lab.snapshot_events())
    quick = world.stack.write_config(tmp_path / "quick.toml", timeout_s=3.0, retries=0)
    world.lab.inject(slow_soap_ms=6000, slow_soap_method="QueryChangedDiskAreas")
    try:
        code, doc, err = world.rollback(point, "--yes", config=quick)
    finally:
        world.lab.inject(slow_soap_ms=0, slow_soap_method="")
    assert code == 1, doc
    assert doc["error"]["cause"] == "vcenter", doc["error"]
    msg = doc["error"]["message"]
    assert "the snapshot was removed" in msg and "no disk was written" in msg, msg
    assert doc["result"]["snapshot_removed"] is True
    assert {d["state"] for d in doc["result"]["disks"]} == {"untouched"}
    new = [e for e in world.lab.snapshot_events()[events:] if e["vm"] == vm]
    assert len(new) == 1 and new[0]["removed_at"], new
    assert {k: sha256(world.flat(vm, k)) for k in KEYS} == before

    code, doc, err = world.rollback(point, "--yes")  # the rerun finishes the job
    assert code == 0, err
    world.assert_disks_are(vm, point)


def test_a_snapshot_that_cannot_be_removed_stops_before_writing(world: World) -> None:
    vm = world.vms[1]
    point = world.points[1][vm]
    before = {k: sha256(world.flat(vm, k)) for k in KEYS}
    world.lab.inject(fail_remove_vm=vm)
    try:
        code, doc, err = world.rollback(point, "--yes")
    finally:
        world.lab.inject(fail_remove_vm=None)
    assert code == 1, doc
    msg = doc["error"]["message"]
    assert "could not be removed" in msg and "no disk was written" in msg, msg
    assert "rerun" in msg
    assert {k: sha256(world.flat(vm, k)) for k in KEYS} == before

    code, doc, err = world.rollback(point, "--yes")  # removes the leftover, then rolls back
    assert code == 0, err
    assert any("left by an earlier rollback" in n for n in doc["result"]["notes"])
    world.assert_disks_are(vm, point)


def _failing_nbdkit(world: World, tmp: Path) -> Path:
    """A config whose nbdkit fails half of the writes (nbdkit's error filter)."""
    script = tmp / "nbdkit-failing"
    script.write_text(
        '#!/bin/sh\nexec nbdkit --filter=error "$@" error-pwrite=EIO error-pwrite-rate=50%\n'
    )
    script.chmod(0o755)
    text = world.stack.config_path.read_text()
    head = '[proxy.nbd]\nserver = "file"'
    assert head in text
    config = tmp / "failing.toml"
    config.write_text(text.replace(head, f'{head}\nnbdkit = "{script}"'))
    return config


def test_a_write_that_fails_half_way_says_so_and_a_rerun_finishes(
    world: World, tmp_path: Path
) -> None:
    vm = world.vms[2]
    point = world.points[-1][vm]
    for i in range(16):  # 16 chunks to write back
        world.guest_write(vm, 2000, i * CHUNK + 100, 1000)
    config = _failing_nbdkit(world, tmp_path)
    code, doc, err = world.rollback(point, "--yes", "--upload-attempts", "1", config=config)
    assert code == 1, doc
    msg = doc["error"]["message"]
    assert "NBD write failed" in msg and "partly written" in msg and "rerun" in msg, msg
    states = {d["key"]: d["state"] for d in doc["result"]["disks"]}
    assert states == {2000: "partly written", 2001: "untouched"}, states
    assert doc["result"]["snapshot_removed"] is True

    code, doc, err = world.rollback(point, "--yes")
    assert code == 0, err
    world.assert_disks_are(vm, point)


def test_no_terminal_and_no_yes_refuses_and_changes_nothing(world: World) -> None:
    vm = world.vms[2]
    point = world.points[-1][vm]
    events = len(world.lab.snapshot_events())
    r = world.run(point)
    assert r.returncode == 1, r.stdout
    assert "give --yes" in r.stderr and vm in r.stderr, r.stderr
    assert len(world.lab.snapshot_events()) == events
    code, doc, _ = world.rollback(point)  # --json changes nothing about it
    assert code == 1 and doc["error"]["cause"] == "refused"
    assert len(world.lab.snapshot_events()) == events


def test_a_vm_whose_disks_do_not_match_is_refused(world: World) -> None:
    vm = world.vms[2]
    point = world.points[-1][vm]
    events = len(world.lab.snapshot_events())
    world.lab.inject(grow_disk=(vm, 2001, SIZES[1] + MiB))
    code, doc, _err = world.rollback(point, "--yes")
    assert code == 1, doc
    msg = doc["error"]["message"]
    assert "do not match" in msg and "disk 2001" in msg and str(SIZES[1]) in msg, msg
    assert len(world.lab.snapshot_events()) == events


def test_the_lab_cannot_write_a_base_disk_under_a_snapshot(world: World) -> None:
    """Why the rollback removes its snapshot before writing (docs/restore.md): in the lab
    a snapshot is a second name of the disk's flat file, so an NBD write to the disk while
    it exists changes the snapshot's frozen bytes too (the guest path, lab.guest, copies
    the file first; nbdkit's file plugin cannot); on ESXi the base disk under a snapshot
    is the snapshot's, and writing it breaks the delta chain."""
    import nbd

    from coordinator import snapshots
    from coordinator.vcenter import Connection
    from tests.coordinator.conftest import vcenter_settings

    vm = world.vms[0]
    conn = Connection(vcenter_settings(world.lab)).connect()
    try:
        mo = conn.moref("VirtualMachine", world.lab.vm(vm)["moref"])
        snap = snapshots.create(conn, mo, prefix="labcheck", job_id="1", coordinator_id="t",
                                quiesce=False, fallback="fail", timeout_s=60)  # fmt: skip
        try:
            frozen, _cfg = snapshots.snapshot_disks(conn, snap)
            frozen_path = world.lab.local_path(next(f.file for f in frozen if f.key == 2000))
            flat = world.flat(vm, 2000)
            assert os.stat(frozen_path).st_ino == os.stat(flat).st_ino  # one file, two names
            h = nbd.NBD()
            h.connect_command(["nbdkit", "-s", "--exit-with-parent", "file", str(flat)])
            h.pwrite(b"\xa5" * 4096, 0)
            h.flush()
            h.shutdown()
            with open(frozen_path, "rb") as fh:
                assert fh.read(4096) == b"\xa5" * 4096, "the snapshot kept its bytes"
        finally:
            snapshots.remove(conn, snap.mo, 60)
    finally:
        conn.close()
