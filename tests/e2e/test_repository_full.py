"""A writer's repository fills up during a backup: every role a real process, the
repository a real small file system (tmpfs) that answers ENOSPC.

The job must fail fast (well under the task time-out) naming the full repository, the
writer and the shard; the proxies must stay healthy (they take the next job, SIGTERM
stops them at once); once there is room again the next backup succeeds with no restart,
restores bit-exact and verifies. With a free-space floor the writer refuses before the
file system is full, and says so on /ready.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabSpec
from lab.checks import disk_digests, lab_snapshots
from lab.stack import BackupRun, Stack, StackSpec
from tests.small_fs import MiB, free_bytes, grow, small_filesystem

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
TASK_TIMEOUT_S = 600.0  # lab/stack.py's coordinator.task_timeout_s


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        clusters=1, hosts_per_cluster=2, vms_per_host=2, disks_per_vm=1, disk_sizes=[48 * MiB]
    )
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=11, template_vms=0)  # no two VMs alike: ~100 MiB stored
        yield lab


def _stack(lab: Lab, tmp_path: Path, floor_mib: int) -> Stack:
    spec = StackSpec(
        n_shards=4, task_max_bytes=8 * MiB, env={"VMBACKUP_WRITER__MIN_FREE_MIB": str(floor_mib)}
    )
    return Stack(lab, tmp_path, spec)


def _ready(stack: Stack, proc: str) -> tuple[int, str]:
    port = stack.procs[proc].metrics_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _assert_failed_fast_naming_the_writer(run: BackupRun) -> None:
    rep: dict[str, Any] = run.report
    assert run.returncode == 1, (run.returncode, run.log_path.read_text()[-3000:])
    assert rep["status"] in ("failed", "partial"), rep
    assert rep["cause"] == "repository_full", rep
    assert "repository full on writer writer-" in rep["stopped"] and "(shard " in rep["stopped"]
    failed = [vm for vm in rep["vms"] if vm["status"] != "ok"]
    assert failed
    for vm in failed:
        assert vm["cause"] == "repository_full", vm
        assert "repository full" in vm["reason"], vm
    # not the task time-out: the proxies said it as soon as the writer refused
    assert run.seconds < TASK_TIMEOUT_S / 4, run.seconds
    assert "no result within" not in str(rep), rep


def _proxies_stop_on_sigterm(stack: Stack) -> None:
    for name, proc in stack.procs.items():
        if proc.role != "proxy" or proc.popen is None:
            continue
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not stop within 30 s of SIGTERM:\n{stack.tail(proc)}")


def _backed_up_exactly(stack: Stack, lab: Lab, run: BackupRun) -> None:
    assert run.returncode == 0, run.report
    expected = disk_digests(lab)
    for vm in run.report["vms"]:
        assert vm["status"] == "ok", vm
        for d in vm["disks"]:
            got = stack.restore_digest(vm["point_id"], d["key"])
            assert got == expected[(vm["moref"], d["key"])]
    assert "OK" in stack.verify()
    assert lab_snapshots(lab) == []


def test_full_disk_fails_fast_and_the_next_backup_succeeds(lab: Lab, tmp_path: Path) -> None:
    with (
        small_filesystem(tmp_path / "repo", 40 * MiB) as repo_fs,
        _stack(lab, tmp_path, floor_mib=0) as stack,  # no floor: the disk itself fills
    ):
        run = stack.backup(timeout=TASK_TIMEOUT_S)
        _assert_failed_fast_naming_the_writer(run)
        assert free_bytes(repo_fs) < 2 * MiB  # it really was full
        logs = "".join(p.log_path.read_text() for p in stack.procs.values())
        assert "no space left on device" in logs
        assert (
            sum(
                stack.metric(f"writer-{i}", 'vmbackup_writer_batches_total{result="full"}')
                for i in (1, 2)
            )
            > 0
        )
        assert all(p.alive for p in stack.procs.values())
        grow(repo_fs, 512 * MiB)  # room again: the same processes, no restart
        _backed_up_exactly(stack, lab, stack.backup(timeout=TASK_TIMEOUT_S))
        _proxies_stop_on_sigterm(stack)


def test_free_space_floor_refuses_before_the_disk_fills(lab: Lab, tmp_path: Path) -> None:
    floor = 24
    with (
        small_filesystem(tmp_path / "repo", 64 * MiB) as repo_fs,
        _stack(lab, tmp_path, floor_mib=floor) as stack,
    ):
        assert _ready(stack, "writer-1")[0] == 200
        run = stack.backup(timeout=TASK_TIMEOUT_S)
        _assert_failed_fast_naming_the_writer(run)
        assert "the floor of 24 MiB (writer.min_free_mib)" in run.report["stopped"]
        # refused early: the file system never filled, no write failed halfway
        assert free_bytes(repo_fs) > (floor - 8) * MiB
        logs = "".join(p.log_path.read_text() for p in stack.procs.values())
        assert "no space left on device" not in logs
        status, text = _ready(stack, "writer-1")
        assert status == 503 and "the floor of 24 MiB" in text, text
        assert stack.metric("writer-1", "vmbackup_writer_accepting_chunks") == 0
        grow(repo_fs, 512 * MiB)
        assert _ready(stack, "writer-1")[0] == 200
        _backed_up_exactly(stack, lab, stack.backup(timeout=TASK_TIMEOUT_S))
        _proxies_stop_on_sigterm(stack)
