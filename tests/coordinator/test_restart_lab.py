"""A coordinator killed mid-job leaves a snapshot; the next start removes it and resumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import report
from coordinator.daemon import Daemon
from coordinator.settings import PolicySettings
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB, coordinator_only_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=2, disk_sizes=[8 * MiB])) as lab:
        for v in lab.vms():
            lab.write_guest_data(v["name"], 2000, 0, b"data" * 1024)
        yield lab


def open_snapshots(lab: Lab) -> list[dict[str, Any]]:
    return [e for e in lab.snapshot_events() if not e["removed_at"]]


def snapshot_of_another_coordinator(rt: Any, vm_moref: str, coordinator_id: str) -> Any:
    """A backup snapshot as another coordinator's job would have left it."""
    from coordinator import snapshots

    conn = rt.connections["lab"]
    return snapshots.create(
        conn,
        conn.moref("VirtualMachine", vm_moref),
        prefix="vmbackup",
        job_id="p-20240101T000000Z-abcdef",
        coordinator_id=coordinator_id,
        quiesce=False,
        fallback="crash",
        timeout_s=30,
    )


def test_killed_coordinator_orphan_swept_and_job_resumed(
    lab: Lab, make_env: Any, amqp_vhost: str, tmp_path: Path
) -> None:
    # only the coordinator runs as a process; the test's peer (same vhost) takes its tasks
    stack, env = coordinator_only_stack(
        lab, make_env, amqp_vhost, tmp_path / "stack", "coord-killed"
    )
    proc, _log, _report = stack.backup_popen("nightly")
    try:
        deadline = time.monotonic() + 60
        while not env.peer.tasks and time.monotonic() < deadline:
            assert proc.poll() is None, "vmbackup backup exited early"
            time.sleep(0.1)
        assert env.peer.tasks, "no task published"
    finally:
        proc.kill()
        proc.wait(10)
    left = open_snapshots(lab)
    assert left, "the killed coordinator should have left its snapshot behind"
    (killed,) = [j["job_id"] for j in env.repo.running_jobs()]  # its gc marker too

    # restart (same coordinator id): the sweep finds the orphan, removes it, and the
    # policy of the unfinished job runs again
    env.peer.hold_vm.clear()
    rt = env.start(id="coord-killed")
    daemon = Daemon(rt, [PolicySettings(name="nightly")])
    assert daemon.sweep_all() == {"nightly"}
    assert not open_snapshots(lab)
    assert daemon.unfinished_jobs == {killed}
    daemon.end_stale_markers()
    assert env.repo.running_jobs() == []
    assert daemon.start_job("nightly", "resume")
    assert daemon.wait_idle(120)
    (rep,) = daemon.reports
    assert rep.status == report.OK, rep.to_text()
    assert not open_snapshots(lab)


def test_snapshot_of_other_coordinator_kept_until_old(lab: Lab, make_env: Any) -> None:

    env = make_env(lab)
    rt = env.start(id="coord-a", orphan_min_age_s=3600.0)
    s = snapshot_of_another_coordinator(rt, lab.vms()[0]["moref"], "coord-b")
    res = rt.sweep(rt.connections["lab"])
    assert [k.snapshot._moId for k in res.kept] == [s.moref] and not res.removed
    rt.settings.orphan_min_age_s = 0.0
    res = rt.sweep(rt.connections["lab"])
    assert [k.snapshot._moId for k in res.removed] == [s.moref]
    assert not open_snapshots(lab)


def test_an_orphan_that_cannot_be_removed_is_kept_and_its_age_exported(
    lab: Lab, make_env: Any
) -> None:
    """vCenter refuses to remove an orphan (a locked delta file): it stays, the sweep
    reports it, and the age gauge the alert VmbackupOrphanSnapshotStuck watches holds its
    age until a later sweep removes it."""
    from coordinator.metrics import REGISTRY

    def oldest_stuck_orphan() -> float | None:
        return REGISTRY.get_sample_value(
            "vmbackup_coordinator_orphan_snapshot_oldest_age_seconds", {"vcenter": "lab"}
        )

    env = make_env(lab)
    rt = env.start(id="coord-a", orphan_min_age_s=0.0)
    conn = rt.connections["lab"]
    name = lab.vms()[1]["name"]
    s = snapshot_of_another_coordinator(rt, lab.vms()[1]["moref"], "coord-gone")
    lab.inject(fail_remove_vm=name)
    try:
        res = rt.sweep(conn)
        assert [f.snapshot._moId for f, _ in res.failed] == [s.moref]
        assert "FileLocked" in res.failed[0][1], res.failed[0][1]
        assert [e["snapshot"] for e in open_snapshots(lab)] == [s.moref]
        age = oldest_stuck_orphan()
        assert age is not None and 0.0 <= age < 600  # just taken: seconds old
    finally:
        lab.inject(fail_remove_vm=None)
    res = rt.sweep(conn)
    assert [r.snapshot._moId for r in res.removed] == [s.moref]
    assert not open_snapshots(lab)
    assert oldest_stuck_orphan() == 0.0


def test_daemon_runs_policies_on_their_cron_schedule(lab: Lab, make_env: Any) -> None:
    import datetime as dt
    import itertools
    import threading

    env = make_env(lab)
    rt = env.start(id="coord-daemon")
    ticks = itertools.count()
    base = dt.datetime(2024, 5, 1, 21, 58)

    def clock() -> dt.datetime:  # each look at the clock is one minute later
        return base + dt.timedelta(minutes=next(ticks))

    daemon = Daemon(
        rt,
        [PolicySettings(name="every-min", schedule="* * * * *"), PolicySettings(name="manual")],
        clock=clock,
    )
    t = threading.Thread(target=daemon.run, kwargs={"max_seconds": 120})
    t.start()
    try:
        deadline = time.monotonic() + 100
        while not daemon.reports and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        daemon.stop()
        t.join(150)
    assert daemon.reports, "the scheduled policy never ran"
    assert {r.policy for r in daemon.reports} == {"every-min"}
    assert daemon.reports[0].status == report.OK, daemon.reports[0].to_text()
    assert not open_snapshots(lab)
