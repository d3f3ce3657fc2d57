"""The decisions behind a backup's exit status, each tested on its own: the status of a
report, the lines that say why on stderr, and when a run that selected nothing fails.
The lab tests (test_exit_codes_lab.py) run them through `vmbackup backup` and the daemon."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator import report
from coordinator.job_runtime import unreachable_reason
from coordinator.policy import lost_selection
from coordinator.previous_points import History, LastJob
from coordinator.vcenter import VCenterError
from repository.point_commit import DiskChanges, PointCommit
from repository.repository import Repository


def job(*vms: tuple[str, str], error: str = "") -> report.JobReport:
    rep = report.JobReport(job_id="p-20240101T000000Z-abcdef", policy="p", coordinator="c")
    for name, status in vms:
        rep.vms.append(
            report.VmReport("vc1", name, f"vm-{name}", f"u-{name}", status=status, reason="why")
        )
    rep.error = error
    rep.finish()
    return rep


def test_every_selected_vm_backed_up_is_0() -> None:
    assert report.exit_status(job(("a", report.OK), ("b", report.OK))) == report.EXIT_OK
    assert report.exit_status(job()) == report.EXIT_OK  # nothing selected, nothing lost
    # a template in scope cannot be backed up: a skip, not a failure
    assert report.exit_status(job(("a", report.OK), ("t", report.SKIPPED))) == report.EXIT_OK


def test_a_vm_without_a_complete_point_is_1() -> None:
    for status in (report.FAILED, report.PARTIAL):
        assert report.exit_status(job(("a", report.OK), ("b", status))) == 1
    # a VM that never got a status (it did not finish) was not backed up either
    assert report.exit_status(job(("a", report.OK), ("b", ""))) == report.EXIT_SOME_FAILED


def test_a_job_error_is_2_whatever_was_backed_up() -> None:
    rep = job(("a", report.OK), error="vcenter vc2: cannot connect to https://vc2/sdk")
    assert rep.status == report.FAILED
    assert report.exit_status(rep) == report.EXIT_ERROR


def test_failure_lines_name_the_job_error_and_every_vm_not_backed_up() -> None:
    rep = job(("a", report.OK), ("b", report.FAILED), ("c", ""), error="vcenter vc2: down")
    rep.vms[1].cause = "disk_read"
    lines = report.failure_lines(rep)
    assert lines[0] == f"job {rep.job_id} failed: vcenter vc2: down"
    assert "failed vc1/b [disk_read]: why" in lines
    assert "unfinished vc1/c: why" in lines
    assert not any("vc1/a" in line for line in lines)
    assert report.failure_lines(job(("a", report.OK), ("t", report.SKIPPED))) == []
    rep.cause = "vcenter"
    assert report.failure_lines(rep)[0] == f"job {rep.job_id} failed [vcenter]: vcenter vc2: down"


def test_failure_lines_stay_short_for_a_thousand_failed_vms() -> None:
    rep = job(*[(f"vm{i}", report.FAILED) for i in range(1000)])
    lines = report.failure_lines(rep)
    assert len(lines) == report.SHOWN_VMS + 1
    assert lines[-1].startswith(f"... and {1000 - report.SHOWN_VMS} more VM(s)")


def test_nothing_selected_fails_only_when_the_last_job_backed_vms_up() -> None:
    last = LastJob("web-20240101T000000Z-abcdef", ("web1", "web2"), time.time())
    msg = lost_selection("web", 0, last)
    assert "policy web selected no VM" in msg
    assert "web-20240101T000000Z-abcdef backed up 2 VM(s): web1, web2" in msg
    assert lost_selection("web", 3, last) == ""  # it selected VMs
    assert lost_selection("web", 0, None) == ""  # a policy that never had any
    many = LastJob("web-x-1", tuple(f"vm{i:02}" for i in range(12)), 0.0)
    assert "vm00, vm01, vm02, vm03, vm04 and 7 more" in lost_selection("web", 0, many)


def test_a_vm_vcenter_cannot_give_is_selected_as_unavailable_not_skipped() -> None:
    from coordinator.discovery import vm_unavailable
    from coordinator.policy import select
    from coordinator.settings import PolicySettings
    from tests.coordinator.test_policy_limits_report import vm

    host_down = vm("web-1")
    host_down.connection_state = "disconnected"
    host_down.unavailable = vm_unavailable(host_down, has_config=True)
    assert host_down.unavailable == "disconnected VM (runtime.connectionState)"
    assert vm_unavailable(vm("x"), has_config=False).startswith("inaccessible")
    assert vm_unavailable(vm("web-2"), has_config=True) == ""
    sel = select([host_down, vm("web-2"), vm("tmpl", skip="template")], PolicySettings("p"))
    assert [v.name for v in sel.unavailable] == ["web-1"]
    assert [v.name for v in sel.selected] == ["web-2"]
    assert [v.name for v in sel.skipped] == ["tmpl"]


def _commit(repo: Repository, job_id: str, vm: str, t: float) -> None:
    repo.commit_point(
        PointCommit(
            request_id=f"r-{job_id}-{vm}",
            vm_uuid=f"u-{vm}",
            job_id=job_id,
            status="complete",
            snapshot_time=t,
            vcenter="vc1",
            vm_moref=f"vm-{vm}",
            vm_name=vm,
            vm_config=b"{}",
            disks=[
                DiskChanges(
                    key=2000, capacity=1 << 20, change_id="", base_point_id="", entries=[], info={}
                )
            ],
            failed_disks=[],
        )
    )


def test_last_job_of_a_policy_from_the_catalog(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", chunk_size=1 << 20)
    now = time.time()
    _commit(repo, "web-20240101T000000Z-aaaaaa", "web1", now - 7200)
    _commit(repo, "web-20240101T000000Z-aaaaaa", "web2", now - 7200)
    _commit(repo, "web-20240102T000000Z-bbbbbb", "web1", now - 60)  # newest: one VM left
    _commit(repo, "web-db-20240103T000000Z-cccccc", "db1", now)  # policy "web-db", not "web"
    history = History(repo)
    last = history.last_job("web")
    assert last is not None
    assert (last.job_id, last.vm_names) == ("web-20240102T000000Z-bbbbbb", ("web1",))
    other = history.last_job("web-db")
    assert other is not None and other.vm_names == ("db1",)
    assert history.last_job("nightly") is None


def test_unreachable_reason_names_the_vcenter_once() -> None:
    err = VCenterError("vcenter vc1: cannot connect to https://vc1/sdk: refused")
    assert unreachable_reason("vc1", err) == str(err)
    assert unreachable_reason("vc1", RuntimeError("boom")) == "vcenter vc1: RuntimeError: boom"
