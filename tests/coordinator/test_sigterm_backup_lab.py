"""SIGTERM of a running ``vmbackup backup``: the job is cancelled, its snapshot removed,
its running-backup marker ended, and the report written, before the process exits."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.amqp import EXCHANGE_WITHDRAWALS, declare_base, open_blocking
from common.messages import TaskWithdrawal, decode
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB, coordinator_only_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=1, disk_sizes=[8 * MiB])) as lab:
        for v in lab.vms():
            lab.write_guest_data(v["name"], 2000, 0, b"data" * 1024)
        yield lab


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_cancels_the_job_and_cleans_up(
    sig: signal.Signals, lab: Lab, make_env: Any, amqp_vhost: str, tmp_path: Path
) -> None:
    stack, env = coordinator_only_stack(lab, make_env, amqp_vhost, tmp_path / "stack", "coord-term")
    # what the proxies would hear: a queue on the withdrawals fanout, as each proxy binds
    params = env.broker
    watch = open_blocking(params, "test-withdrawals")
    wch = watch.channel()
    declare_base(wch, params)
    wq = wch.queue_declare("", exclusive=True).method.queue
    wch.queue_bind(wq, EXCHANGE_WITHDRAWALS)
    before = len(lab.snapshot_events())
    proc, log_path, report_path = stack.backup_popen("nightly")
    try:
        deadline = time.monotonic() + 60
        while not env.peer.tasks and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        assert env.peer.tasks, "no task published"
        assert env.repo.running_jobs(), "no running-backup marker while the job runs"
        proc.send_signal(sig)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vmbackup backup still running 120s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc != 0, log_path.read_text()
    new = lab.snapshot_events()[before:]
    assert new and all(e["removed_at"] for e in new), new
    assert env.repo.running_jobs() == []
    rep = json.loads(report_path.read_text())
    assert rep["vms"] and all(v["status"] == "failed" for v in rep["vms"])
    assert all("cancelled" in v["reason"] for v in rep["vms"]), rep["vms"]
    # the tasks it had published were withdrawn, so proxies drop them instead of failing
    # them against the removed snapshot and dead-lettering them
    withdrawn: set[str] = set()
    while True:
        m, _p, body = wch.basic_get(wq, auto_ack=True)
        if m is None:
            break
        w = decode(body, TaskWithdrawal)
        assert w.reason == "cancelled" and w.job_id
        withdrawn.update(w.task_ids)
    watch.close()
    assert {t.task_id for t in env.peer.tasks} <= withdrawn, (env.peer.tasks, withdrawn)
