"""Task timeouts: a lost result fails its disk without hanging the job; a disk whose
tasks all answer in time is not failed because the whole disk took long.

The protocol peer (harness.py) takes the tasks over the real broker; the lab's vcsim
takes and removes the snapshots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from common.amqp import EXCHANGE_WITHDRAWALS, declare_base, open_blocking
from common.messages import TaskWithdrawal, decode
from coordinator import report
from coordinator.job import Job
from coordinator.settings import LimitSettings, PolicySettings
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB, vm_report

pytestmark = pytest.mark.integration

CHUNKS = 6  # data in 6 separate chunks: 6 tasks of one chunk each


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(hosts_per_cluster=1, vms_per_host=2, disk_sizes=[8 * MiB])) as lab:
        for v in lab.vms():
            for i in range(CHUNKS):
                lab.write_guest_data(v["name"], 2000, i * MiB + 100, b"t%d" % i * 2048)
        yield lab


def run_bounded(job: Job, limit: float = 60.0) -> report.JobReport:
    """Run the job in a thread; a job still running after ``limit`` is a hang (cancelled
    so the test can clean up, then failed)."""
    out: list[report.JobReport] = []
    t = threading.Thread(target=lambda: out.append(job.run()), daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        job.cancel.set()
        t.join(60)
        pytest.fail(f"job still running {limit:.0f}s after it started: hangs on a lost result")
    return out[0]


def test_lost_results_fail_the_disk_and_free_the_slots(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    rt = env.start(
        task_max_bytes=MiB,
        task_timeout_s=3.0,
        limits=LimitSettings(tasks_per_host=2, vms=1),
    )
    lost = lab.vms()[0]
    env.peer.hold_vm.add(lost["name"])  # taken, never answered: a proxy that died
    watch = open_blocking(env.broker, "test-withdrawals")
    wch = watch.channel()
    declare_base(wch, env.broker)
    wq = wch.queue_declare("", exclusive=True).method.queue
    wch.queue_bind(wq, EXCHANGE_WITHDRAWALS)
    before = len(lab.snapshot_events())
    rep = run_bounded(Job(rt, PolicySettings(name="p", names=[lost["name"]])))
    v = vm_report(rep, lost["name"])
    assert v.status == report.FAILED, rep.to_text()
    assert "no result within" in v.disks[0].error
    assert v.disks[0].tasks == CHUNKS
    assert rt.tasks_per_host.held(lost["host"]) == 0
    new = lab.snapshot_events()[before:]
    assert new and all(e["removed_at"] for e in new)
    # every task given up on was withdrawn: a proxy that still holds one drops it
    withdrawn: dict[str, str] = {}
    deadline = time.monotonic() + 10
    published = {t.task_id for t in env.peer.tasks if t.vm_name == lost["name"]}
    while set(withdrawn) != published and time.monotonic() < deadline:
        m, _p, body = wch.basic_get(wq, auto_ack=True)
        if m is None:
            time.sleep(0.1)
            continue
        w = decode(body, TaskWithdrawal)
        withdrawn.update(dict.fromkeys(w.task_ids, w.reason))
    watch.close()
    assert published and set(withdrawn) == published, (published, withdrawn)
    assert set(withdrawn.values()) == {"timeout"}


def test_slow_disk_with_timely_tasks_is_not_timed_out(lab: Lab, make_env: Any) -> None:
    env = make_env(lab)
    rt = env.start(
        task_max_bytes=MiB,
        task_timeout_s=4.0,
        limits=LimitSettings(tasks_per_host=1, vms=1),
    )
    # each task answered within a second, well inside its timeout; the disk's tasks
    # one after the other take longer than one timeout in all
    env.peer.on_task = lambda _t: time.sleep(1.0)
    vm = lab.vms()[1]
    rep = run_bounded(Job(rt, PolicySettings(name="p", names=[vm["name"]])))
    v = vm_report(rep, vm["name"])
    assert v.disks[0].tasks == CHUNKS
    assert v.status == report.OK, rep.to_text()
    assert rt.tasks_per_host.held(vm["host"]) == 0
