"""Backup jobs against the lab (vcsim + CBT) over the real broker and a real repository.

The protocol peer (harness.py) answers tasks from the lab's frozen snapshot files; a
restore of every committed disk is compared with the guest data byte for byte.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator import report
from coordinator.settings import LimitSettings, PolicySettings
from lab import Lab, LabSpec
from repository.restore import restore_disk
from tests.coordinator.conftest import MiB, vm_report

pytestmark = pytest.mark.integration

SPEC = LabSpec(
    clusters=1,
    hosts_per_cluster=2,
    vms_per_host=3,
    disks_per_vm=1,
    disk_sizes=[24 * MiB, 20 * MiB + 12345, 300 * MiB],
    cbt_page_size=2000,
    cbt_granularity=64 * 1024,
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(SPEC) as lab:
        yield lab


def restored(env: Any, point_id: str, key: int) -> bytes:
    buf = io.BytesIO()
    restore_disk(env.repo, point_id, key, buf)
    return buf.getvalue()


def assert_points_match_guest(env: Any, lab: Lab, rep: report.JobReport) -> None:
    for v in rep.vms:
        if v.status != report.OK:
            continue
        for d in v.disks:
            guest = lab.read_guest_data(v.moref, d.key, 0, d.capacity)
            assert restored(env, v.point_id, d.key) == guest, (v.name, d.key)


def test_full_then_incremental(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start()
    names = [v["name"] for v in lab.vms()]
    lab.write_guest_data(names[0], 2000, 5 * MiB + 3, b"hello" * 1000)
    rep1 = env.run()
    assert rep1.status == report.OK, rep1.to_text()
    assert report.exit_status(rep1) == 0
    for v in rep1.vms:
        assert v.status == report.OK
        (d,) = v.disks
        assert d.mode == "full"
        assert "CBT was just enabled" in d.reason or "no previous" in d.reason
        assert d.bytes_planned <= d.capacity
    v0 = vm_report(rep1, names[0])
    assert v0.disks[0].bytes_planned >= MiB  # the written chunk is in the allocated areas
    assert_points_match_guest(env, lab, rep1)

    lab.write_guest_data(names[0], 2000, 9 * MiB, b"x" * 10)
    lab.write_guest_data(names[1], 2000, 0, b"y" * (3 * MiB))
    rep2 = env.run()
    assert rep2.status == report.OK, rep2.to_text()
    planned = {v.name: v.disks[0] for v in rep2.vms}
    for d in planned.values():
        assert d.mode == "incremental", rep2.to_text()
    assert planned[names[0]].bytes_planned == MiB
    assert planned[names[1]].bytes_planned == 3 * MiB
    assert all(planned[n].bytes_planned == 0 for n in names[2:])
    assert_points_match_guest(env, lab, rep2)
    # every snapshot of both jobs is gone
    events = lab.snapshot_events()
    assert events and all(e["removed_at"] for e in events)
    # metrics
    from coordinator.metrics import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    assert sample("vmbackup_coordinator_vms_total", policy="all", outcome="protected") >= 12
    assert sample("vmbackup_coordinator_planned_bytes_total", policy="all", kind="changed") >= (
        4 * MiB
    )
    assert sample("vmbackup_coordinator_cbt_fallbacks_total", reason="cbt_enabled") >= 6
    assert sample("vmbackup_coordinator_snapshots_open") == 0
    assert sample("vmbackup_coordinator_last_success_timestamp_seconds", vcenter="lab", vm=names[0])


def test_more_than_2000_changed_areas(lab: Lab, make_env: Any) -> None:
    big = next(v for v in lab.vms() if v["disks"][0]["capacity"] == 300 * MiB)
    env = make_env(lab)
    env.start()
    pol = PolicySettings(name="big", names=[big["name"]])
    rep1 = env.run(pol)
    assert rep1.status == report.OK, rep1.to_text()
    # 2400 areas 128 KiB apart: more than one reply of at most 2000 areas
    for i in range(2400):
        lab.write_guest_data(big["name"], 2000, i * 128 * 1024, b"\x01")
    rep2 = env.run(pol)
    (v,) = rep2.vms
    d = v.disks[0]
    assert v.status == report.OK and d.mode == "incremental", rep2.to_text()
    assert d.bytes_planned == 300 * MiB  # every 1 MiB chunk holds a change
    assert env.conn.calls["QueryChangedDiskAreas"] >= 2
    assert_points_match_guest(env, lab, rep2)


def test_cbt_reset_grown_disk_missing_point(lab: Lab, make_env: Any) -> None:
    vms = [v for v in lab.vms() if v["disks"][0]["capacity"] < 100 * MiB][:3]
    env = make_env(lab)
    env.start()
    pol = PolicySettings(name="three", names=[v["name"] for v in vms])
    assert env.run(pol).status == report.OK
    reset, grown, fresh = vms
    lab.inject(reset_cbt=(reset["name"], 2000))
    lab.inject(grow_disk=(grown["name"], 2000, grown["disks"][0]["capacity"] + 4 * MiB))
    # a missing previous point: a second repository knows nothing of these VMs
    rep = env.run(pol)
    by = {v.name: v.disks[0] for v in rep.vms}
    assert by[reset["name"]].mode == "full"
    assert "CBT was reset" in by[reset["name"]].reason
    assert by[grown["name"]].mode == "full"
    assert "capacity grew" in by[grown["name"]].reason
    assert by[fresh["name"]].mode == "incremental"
    assert rep.status == report.OK, rep.to_text()
    assert_points_match_guest(env, lab, rep)
    text = rep.to_text()
    assert "CBT was reset" in text and "capacity grew" in text

    env2 = make_env(lab)  # new repository: no previous point
    env2.start(id="coord-other")
    rep3 = env2.run(pol)
    for v in rep3.vms:
        assert v.disks[0].mode == "full"
        assert "no previous restore point" in v.disks[0].reason


def test_failed_snapshot_and_failed_task(lab: Lab, make_env: Any) -> None:
    names = [v["name"] for v in lab.vms() if v["disks"][0]["capacity"] < 100 * MiB]
    bad_snap, bad_task = names[0], names[1]
    env = make_env(lab)
    env.start()
    env.peer.fail_vm.add(bad_task)
    before = len(lab.snapshot_events())
    lab.inject(fail_snapshot_vm=bad_snap)
    try:
        rep = env.run(PolicySettings(name="p", names=names))
    finally:
        lab.inject(fail_snapshot_vm=None)
    assert report.exit_status(rep) == report.EXIT_SOME_FAILED
    v = vm_report(rep, bad_snap)
    assert v.status == report.FAILED and "snapshot failed" in v.reason
    v = vm_report(rep, bad_task)
    assert v.status == report.FAILED
    assert "injected read failure" in v.disks[0].error
    assert not v.point_id
    others = [vm_report(rep, n) for n in names[2:]]
    assert others and all(o.status == report.OK for o in others), rep.to_text()
    new = lab.snapshot_events()[before:]
    assert {e["vm"] for e in new} >= {bad_task}
    assert all(e["removed_at"] for e in new)


def test_session_expiry_mid_job(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start(limits=LimitSettings(vms=1))
    fired: list[bool] = []

    def expire(_task: Any) -> None:
        if not fired:
            fired.append(True)
            lab.inject(expire_sessions=True)

    env.peer.on_task = expire
    for v in lab.vms():
        lab.write_guest_data(v["name"], 2000, MiB, b"s" * 4096)
    rep = env.run()
    assert fired
    assert rep.status == report.OK, rep.to_text()
    assert env.conn.relogins >= 1
    assert all(e["removed_at"] for e in lab.snapshot_events())


def test_snapshot_limit_per_host(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    env.start(limits=LimitSettings(snapshots_per_host=1, snapshots_per_datastore=10, vms=8))
    before = len(lab.snapshot_events())
    rep = env.run()
    assert rep.status == report.OK, rep.to_text()
    events = lab.snapshot_events()[before:]
    assert len(events) == len(lab.vms())
    for host in {e["host"] for e in events}:
        spans = sorted((e["created_at"], e["removed_at"]) for e in events if e["host"] == host)
        assert len(spans) >= 2
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two snapshots at once on {host}: {spans}"


def test_backup_window(lab: Lab, make_env: Any) -> None:
    import datetime as dt

    from coordinator.settings import WindowSettings

    env = make_env(lab)
    env.start(limits=LimitSettings(vms=1))
    pol = PolicySettings(name="win", window=WindowSettings(start="22:00", end="06:00"))
    noon = dt.datetime(2024, 5, 1, 12, 0)
    rep = env.run(pol, clock=lambda: noon)
    assert "outside the backup window" in rep.error and not rep.vms
    assert report.exit_status(rep) == report.EXIT_ERROR

    # inside the window for the first VM only: the others must not start
    times = iter([dt.datetime(2024, 5, 1, 23, 0)] * 3)
    late = dt.datetime(2024, 5, 2, 6, 30)
    before = len(lab.snapshot_events())
    rep = env.run(pol, clock=lambda: next(times, late))
    started = [v for v in rep.vms if v.status == report.OK]
    stopped = [v for v in rep.vms if v.status == report.FAILED]
    assert len(started) == 1 and len(stopped) == len(lab.vms()) - 1, rep.to_text()
    assert all("backup window closed" in v.reason for v in stopped)
    assert len(lab.snapshot_events()) == before + 1


@pytest.mark.parametrize(("fallback", "attempts"), [("crash", 2), ("fail", 1)])
def test_quiesce_fallback_policy(lab: Lab, make_env: Any, fallback: str, attempts: int) -> None:
    names = [v["name"] for v in lab.vms() if v["disks"][0]["capacity"] < 100 * MiB][:2]
    bad, good = names
    env = make_env(lab)
    env.start()
    pol = PolicySettings(name="q", names=names, quiesce=True, quiesce_fallback=fallback)
    lab.inject(fail_snapshot_vm=bad)  # the lab fails quiesced and crash-consistent snapshots
    try:
        rep = env.run(pol)
    finally:
        lab.inject(fail_snapshot_vm=None)
    assert vm_report(rep, good).status == report.OK
    assert vm_report(rep, good).consistency == "quiesced"
    v = vm_report(rep, bad)
    assert v.status == report.FAILED and "snapshot failed" in v.reason
    assert env.conn.calls["CreateSnapshot_Task"] == 1 + attempts


def test_periodic_full(lab: Lab, make_env: Any) -> None:
    import datetime as dt

    name = next(v["name"] for v in lab.vms() if v["disks"][0]["capacity"] < 100 * MiB)
    env = make_env(lab)
    env.start()
    pol = PolicySettings(name="weekly", names=[name], full_every_days=7)
    assert env.run(pol).status == report.OK
    (v,) = env.run(pol).vms  # right after the full: incremental
    assert v.disks[0].mode == "incremental", v
    later = dt.datetime.now() + dt.timedelta(days=8)
    (v,) = env.run(pol, clock=lambda: later).vms
    assert v.status == report.OK
    assert v.disks[0].mode == "full" and "periodic full" in v.disks[0].reason


def test_a_pruned_newest_point_is_not_used_as_base(lab: Lab, make_env: Any) -> None:
    """The same coordinator runs two jobs; between them the newest point of a VM is
    deleted (prune). The next job must plan on what the repository holds now."""
    env = make_env(lab)
    env.start()
    name = lab.vms()[0]["name"]
    lab.write_guest_data(name, 2000, 2 * MiB, b"a" * 5000)
    rep1 = env.run()
    assert rep1.status == report.OK, rep1.to_text()
    lab.write_guest_data(name, 2000, 4 * MiB, b"b" * 5000)
    rep2 = env.run()
    assert rep2.status == report.OK, rep2.to_text()
    newest = vm_report(rep2, name).point_id
    env.repo.delete_point(newest)
    lab.write_guest_data(name, 2000, 6 * MiB, b"c" * 5000)
    rep3 = env.run()
    assert rep3.status == report.OK, rep3.to_text()
    d = vm_report(rep3, name).disks[0]
    assert newest not in d.reason
    assert_points_match_guest(env, lab, rep3)
