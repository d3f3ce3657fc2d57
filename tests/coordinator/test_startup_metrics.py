"""A restarted coordinator rebuilds its last-success gauge from the repository and
creates its counters' label sets at zero."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator import restored_metrics as startup
from coordinator.metrics import REGISTRY
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def commit(repo: Repository, vm: str, uuid: str, t: float, status: str = "complete") -> None:
    repo.commit_point(
        PointCommit(
            request_id=f"r-{uuid}-{t}",
            vm_uuid=uuid,
            job_id=f"job-{t}",
            status=status,
            snapshot_time=t,
            vcenter="vc-start",
            vm_moref="vm-1",
            vm_name=vm,
            vm_config=b"{}",
            disks=[
                DiskChanges(
                    key=2000, capacity=1 << 20, change_id="", base_point_id="", entries=[], info={}
                )
            ],
            failed_disks=[] if status == "complete" else [(2001, "read failed")],
        )
    )


def test_last_success_from_complete_points(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", chunk_size=1 << 20)
    now = time.time()
    commit(repo, "web-start", "u-web", now - 7200)
    commit(repo, "web-start", "u-web", now - 3600)  # newest complete wins
    commit(repo, "web-start", "u-web", now - 60, status="partial")  # not a success
    commit(repo, "db-start", "u-db", now - 30 * 3600)  # old, but within the alert's 7 d
    commit(repo, "gone-start", "u-gone", now - 8 * 86400)  # beyond: no series
    (repo.path / "points" / "u-bad" / "20240101T000000Z-deadbeef").mkdir(parents=True)

    assert startup.last_success_from_repository(repo, now=now) == 2
    gauge = "vmbackup_coordinator_last_success_timestamp_seconds"
    assert sample(gauge, vcenter="vc-start", vm="web-start") == now - 3600
    assert sample(gauge, vcenter="vc-start", vm="db-start") == now - 30 * 3600
    assert sample(gauge, vcenter="vc-start", vm="gone-start") is None


def test_counter_label_sets_exist_at_zero() -> None:
    startup.zero_label_sets(["startup-policy"])
    for result in ("ok", "partial", "failed"):
        assert (
            sample("vmbackup_coordinator_jobs_total", policy="startup-policy", result=result) == 0
        )
    for outcome in ("discovered", "protected", "skipped", "failed"):
        assert (
            sample("vmbackup_coordinator_vms_total", policy="startup-policy", outcome=outcome) == 0
        )
        assert (
            sample("vmbackup_coordinator_disks_total", policy="startup-policy", outcome=outcome)
            == 0
        )
