"""Faults in the middle of a job, end to end: every role is a real process.

A SIGKILLed proxy, a SIGKILLed writer (restarted, as its supervisor would) and a
RabbitMQ restart (stop_app / start_app) in mid-job: the job completes, or fails with a
clear reason and the next run completes; restored disks equal what the snapshots held;
`verify` finds nothing wrong; no snapshot is left in the lab.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab, LabSpec
from lab.checks import disk_digests, lab_snapshots
from lab.stack import BackupRun, Stack, StackSpec, rabbitmqctl

# A fault costs retries (ack and commit time-outs): allow more than the suite default.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MiB = 1 << 20
# Slow the proxies down so that "mid-job" is a wide, reliable moment.
THROTTLE = """
[proxy.throttle]
max_mb_per_s_per_host = 12.0
burst_mb = 2.0
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        clusters=1,
        hosts_per_cluster=2,
        vms_per_host=2,
        disks_per_vm=1,
        disk_sizes=[48 * MiB, 40 * MiB + 4321],
    )
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=11, template_vms=2)
        yield lab


@pytest.fixture
def stack(lab: Lab, tmp_path: Path) -> Iterator[Stack]:
    spec = StackSpec(n_shards=4, task_max_bytes=8 * MiB, extra_config=THROTTLE)
    with Stack(lab, tmp_path, spec) as stack:
        yield stack


def wait_for_progress(stack: Stack, popen: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until a proxy has finished its first task of the running job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert popen.poll() is None, "the job ended before the fault could be injected"
        for p in stack.procs.values():
            if p.role == "proxy" and b'"task_done"' in p.log_path.read_bytes():
                return
        time.sleep(0.05)
    raise AssertionError("no task finished within the timeout")


def finish(stack: Stack, popen: subprocess.Popen[bytes], report: Path, log: Path) -> BackupRun:
    t0 = time.monotonic()
    rc = popen.wait(timeout=600)
    return stack.finish_run(rc, report, log, time.monotonic() - t0)


def check_points(stack: Stack, run: BackupRun, expected: dict[tuple[str, int], str]) -> None:
    vms = run.report["vms"]
    assert vms and all(vm["status"] == "ok" for vm in vms), run.report
    for vm in vms:
        for d in vm["disks"]:
            assert (
                stack.restore_digest(vm["point_id"], d["key"]) == expected[(vm["moref"], d["key"])]
            )


def complete_or_rerun(stack: Stack, lab: Lab, first: BackupRun) -> BackupRun:
    """The job completes, or fails with a clear reason and the next run completes."""
    if first.returncode == 0:
        return first
    failed = [vm for vm in first.report.get("vms", []) if vm.get("status") != "ok"]
    assert first.report, f"no report; coordinator log: {first.log_path}"
    assert all(vm.get("reason") or any(d.get("error") for d in vm["disks"]) for vm in failed), (
        "a failed VM without a reason"
    )
    second = stack.backup()
    assert second.returncode == 0, second.report
    return second


def test_proxy_killed_mid_job(stack: Stack, lab: Lab) -> None:
    expected = disk_digests(lab)
    popen, log, report = stack.backup_popen()
    wait_for_progress(stack, popen)
    stack.kill("proxy-1", signal.SIGKILL)
    run = complete_or_rerun(stack, lab, finish(stack, popen, report, log))
    check_points(stack, run, expected)
    assert "OK" in stack.verify()
    assert lab_snapshots(lab) == []


def test_writer_killed_mid_job_and_restarted(stack: Stack, lab: Lab) -> None:
    expected = disk_digests(lab)
    popen, log, report = stack.backup_popen()
    wait_for_progress(stack, popen)
    stack.kill("writer-1", signal.SIGKILL)
    time.sleep(1.0)
    stack.restart("writer-1")
    run = complete_or_rerun(stack, lab, finish(stack, popen, report, log))
    check_points(stack, run, expected)
    assert "OK" in stack.verify()
    assert lab_snapshots(lab) == []


def test_broker_restart_mid_job(stack: Stack, lab: Lab) -> None:
    expected = disk_digests(lab)
    popen, log, report = stack.backup_popen()
    wait_for_progress(stack, popen)
    rabbitmqctl("stop_app")
    try:
        time.sleep(3.0)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    run = complete_or_rerun(stack, lab, finish(stack, popen, report, log))
    check_points(stack, run, expected)
    assert "OK" in stack.verify()
    assert lab_snapshots(lab) == []
    assert all(p.alive for p in stack.procs.values()), "a role died with the broker restart"
