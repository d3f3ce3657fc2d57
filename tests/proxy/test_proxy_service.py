"""`vmbackup proxy` on the real broker: tasks in, chunks durable at a writer, results out;
failing tasks retried then dead-lettered; a proxy killed mid-task loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.amqp import (
    EXCHANGE_TASKS,
    EXCHANGE_WITHDRAWALS,
    QUEUE_DLQ,
    BrokerParams,
    Publisher,
    declare_base,
    declare_results_queue,
    declare_task_queue,
    open_blocking,
    results_queue,
)
from common.messages import BackupTask, TaskResult, TaskWithdrawal, decode
from proxy_worker.service import ProxyService
from proxy_worker.settings import NbdSettings, ProxySettings, ThrottleSettings
from tests.proxy.proxy_helpers import MiB, SparseDisk, make_sparse_disk
from tests.proxy.writer_probe import ProbedWriter

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHUNK = 256 * 1024
SHARDS = 2


def _task(d: SparseDisk, task_id: str = "t1", **kw: object) -> BackupTask:
    base: dict[str, object] = dict(
        task_id=task_id,
        job_id="job1",
        vm_uuid="uuid-1",
        vm_name="vm 1",
        disk_key=2000,
        disk=d.source,
        chunk_size=CHUNK,
        compression_level=1,
        ranges=[(0, d.source.capacity)],
        results_to=results_queue("c1"),
        transport="",
    )
    base.update(kw)
    return BackupTask(**base)  # type: ignore[arg-type]


def _setup(params: BrokerParams) -> None:
    conn = open_blocking(params, "test-setup")
    ch = conn.channel()
    declare_base(ch, params)
    declare_task_queue(ch, params, "host.esx-1")
    declare_results_queue(ch, params, "c1")
    conn.close()


def _publish(params: BrokerParams, *tasks: BackupTask) -> None:
    with Publisher(params, name="test-coordinator") as pub:
        for t in tasks:
            pub.publish_sync(EXCHANGE_TASKS, "host.esx-1", t)


def _get(params: BrokerParams, queue: str, timeout: float) -> bytes | None:
    conn = open_blocking(params, "test-get")
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m, _props, body = ch.basic_get(queue, auto_ack=True)
            if m is not None:
                return body
            time.sleep(0.1)
        return None
    finally:
        conn.close()


def _check_result(res: TaskResult, d: SparseDisk, writer: ProbedWriter) -> None:
    assert res.ok, res.error
    assert res.staged and res.entries == []  # the map stays at the writer
    cap = d.source.capacity
    entries = writer.staged_entries(res)
    assert res.entries_count == len(entries)
    assert [i for i, _ in entries] == list(range(-(-cap // CHUNK)))
    for idx, cid in entries:
        want = d.data[idx * CHUNK : min(cap, (idx + 1) * CHUNK)]
        if cid == b"":
            assert want == bytes(len(want))
        else:
            assert writer.repo.read_chunk(cid) == want


@pytest.fixture
def params(broker: BrokerParams) -> BrokerParams:
    p = BrokerParams(**{**broker.__dict__, "delivery_limit": 2})
    _setup(p)
    return p


@pytest.fixture
def writer(params: BrokerParams, tmp_path: Path) -> Iterator[ProbedWriter]:
    w = ProbedWriter(params, tmp_path / "repo", SHARDS, chunk_size=CHUNK)
    yield w
    w.close()


def _service(params: BrokerParams, d: SparseDisk, **kw: object) -> ProxyService:
    settings = ProxySettings(
        name="p1",
        queues=["host.esx-1"],
        transport="nbd",
        datastore_mounts=d.settings.datastore_mounts,
        nbd=NbdSettings(server="file"),
        writer_timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )
    return ProxyService(settings, params, n_shards=SHARDS).start()


def test_task_result_after_chunks_are_durable(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    d = make_sparse_disk(tmp_path, capacity=6 * MiB + 100)
    svc = _service(params, d)
    try:
        _publish(params, _task(d))
        body = _get(params, results_queue("c1"), 60)
        assert body is not None
        res = decode(body, TaskResult)
        _check_result(res, d, writer)
        assert res.proxy == "p1" and res.bytes_read < d.source.capacity
        assert res.bytes_zero + res.bytes_known <= d.source.capacity
        assert res.bytes_sent == writer.payload_bytes
    finally:
        svc.close()


def test_proxy_that_does_not_stage_sends_its_entries_inline(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    """stage_entries = false (writers older than the coordinator): the result carries the
    entries, and nothing is staged at the writer."""
    d = make_sparse_disk(tmp_path, capacity=3 * MiB)
    svc = _service(params, d, stage_entries=False)
    try:
        _publish(params, _task(d))
        res = decode(_get(params, results_queue("c1"), 60) or b"", TaskResult)
        assert res.ok and not res.staged and res.entries_count == 0
        assert [i for i, _ in res.entries] == list(range(-(-d.source.capacity // CHUNK)))
        assert list(writer.repo.staging.leftovers()) == []
    finally:
        svc.close()


def test_failing_task_is_retried_then_dead_lettered(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    d = make_sparse_disk(tmp_path, capacity=2 * MiB)
    svc = _service(params, d)
    try:
        # the disk's data is missing: every attempt fails, the last one reports it
        _publish(params, _task(d, "bad", disk=replace(d.source, disk_file="[ds1] gone/disk.vmdk")))
        body = _get(params, results_queue("c1"), 60)
        assert body is not None
        res = decode(body, TaskResult)
        assert not res.ok and "not_found" in res.error and res.entries == []
        dead = _get(params, QUEUE_DLQ, 30)
        assert dead is not None and decode(dead, BackupTask).task_id == "bad"
        # a malformed task (ranges not aligned) goes to the DLQ at once, with a result
        _publish(params, _task(d, "unaligned", ranges=[(100, CHUNK)]))
        res2 = decode(_get(params, results_queue("c1"), 30) or b"", TaskResult)
        assert not res2.ok and "bad_task" in res2.error
    finally:
        svc.close()


def test_killed_proxy_task_is_redone_by_another(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    d = make_sparse_disk(tmp_path, capacity=16 * MiB)
    with open(d.path, "r+b") as fh:  # all data: the throttled read takes a few seconds
        fh.write(os.urandom(16 * MiB))
    d.data = d.path.read_bytes()
    cfg = tmp_path / "proxy.toml"
    mounts = d.settings.datastore_mounts["ds1"]
    cfg.write_text(
        f"""
[broker]
url = "{params.url}"
n_shards = {SHARDS}
delivery_limit = 2
[metrics]
port = 0
[proxy]
name = "doomed"
queues = ["host.esx-1"]
transport = "file"
datastore_mounts = {{ ds1 = "{mounts}" }}
[proxy.throttle]
max_mb_per_s_per_host = 4.0
burst_mb = 0.5
"""
    )
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "proxy", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _publish(params, _task(d, "big"))
        deadline = time.monotonic() + 30
        while writer.batches == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.batches > 0, (tmp_path / "proxy.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _get(params, results_queue("c1"), 0.5) is None  # no result from a dead proxy
        svc = _service(params, d)
        try:
            body = _get(params, results_queue("c1"), 60)
            assert body is not None
            _check_result(decode(body, TaskResult), d, writer)
        finally:
            svc.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_stream_cap_holds_under_a_task_burst(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    disks = [make_sparse_disk(tmp_path / f"d{i}", capacity=3 * MiB, seed=i) for i in range(6)]
    mounts = disks[0].settings.datastore_mounts
    svc = _service(
        params,
        disks[0],
        tasks_in_parallel=4,
        throttle=ThrottleSettings(max_streams_per_host=2, max_mb_per_s_per_host=20.0, burst_mb=1),
    )
    seen: list[int] = []
    lim = svc.throttle.host("esx-1")
    stop = False

    def watch() -> None:
        while not stop:
            seen.append(lim.active)
            time.sleep(0.002)

    import threading

    th = threading.Thread(target=watch)
    th.start()
    try:
        tasks = []
        for i, d in enumerate(disks):
            # every disk under the one mount: same datastore, distinct files
            name = f"vm{i}/disk"
            dst = Path(mounts["ds1"]) / f"{name}-flat.vmdk"
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(d.path, dst)
            tasks.append(_task(d, f"t{i}", disk=replace(d.source, disk_file=f"[ds1] {name}.vmdk")))
        _publish(params, *tasks)
        got = [_get(params, results_queue("c1"), 60) for _ in tasks]
    finally:
        stop = True
        th.join()
        svc.close()
    assert all(g is not None for g in got)
    for g in got:
        assert decode(g or b"", TaskResult).ok
    assert max(seen) == 2  # four task workers, never more than two streams on the host


def _outcome_count(outcome: str) -> float:
    from proxy_worker.metrics import REGISTRY

    return REGISTRY.get_sample_value("vmbackup_proxy_tasks_total", {"outcome": outcome}) or 0.0


def _withdrawn_count() -> float:
    return _outcome_count("withdrawn")


def read() -> float:
    """Bytes the nbd transport read from host esx-1 so far (this process's metric)."""
    from proxy_worker.metrics import REGISTRY

    labels = {"transport": "nbd", "host": "esx-1"}
    return REGISTRY.get_sample_value("vmbackup_proxy_read_bytes_total", labels) or 0.0


def _withdraw(params: BrokerParams, *task_ids: str) -> None:
    with Publisher(params, name="test-coordinator") as pub:
        pub.publish_sync(
            EXCHANGE_WITHDRAWALS,
            "",
            TaskWithdrawal("job1", list(task_ids), "cancelled"),
            persistent=False,
            mandatory=False,
        )


def _queue_depth(params: BrokerParams, queue: str) -> int:
    conn = open_blocking(params, "test-depth")
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_withdrawn_task_is_dropped_unread(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    """A task of a cancelled job, withdrawn before a proxy took it: acked and dropped, no
    read, no retry, nothing in the DLQ, no result (nobody waits for one)."""
    d = make_sparse_disk(tmp_path, capacity=2 * MiB)
    svc = _service(params, d)
    try:
        assert svc.withdrawal_consumer.ready.wait(30)
        n0 = _withdrawn_count()
        _withdraw(params, "gone")
        assert _wait(lambda: svc.withdrawals.reason("gone") == "cancelled", 30)
        # its snapshot is gone too: without the withdrawal this task would fail and retry
        _publish(
            params, _task(d, "gone", disk=replace(d.source, disk_file="[ds1] removed/disk.vmdk"))
        )
        assert _wait(lambda: _withdrawn_count() == n0 + 1, 30)
        _publish(params, _task(d, "kept"))  # the next task runs as usual
        res = decode(_get(params, results_queue("c1"), 60) or b"", TaskResult)
        assert res.task_id == "kept" and res.ok, res.error
        assert _get(params, QUEUE_DLQ, 2) is None
        assert _queue_depth(params, "vmbackup.tasks.host.esx-1") == 0
        assert _get(params, results_queue("c1"), 1) is None  # none for the withdrawn one
    finally:
        svc.close()


def test_running_task_is_stopped_by_its_withdrawal(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    """A task being read when its job is cancelled stops (the source host's load ends with
    the job), is not retried and reports nothing."""
    d = make_sparse_disk(tmp_path, capacity=24 * MiB, seed=5)
    d.path.write_bytes(os.urandom(d.source.capacity))  # all data: 24 s at 1 MB/s
    svc = _service(params, d, throttle=ThrottleSettings(max_mb_per_s_per_host=1.0, burst_mb=1))

    try:
        assert svc.withdrawal_consumer.ready.wait(30)
        n0, r0 = _withdrawn_count(), read()
        _publish(params, _task(d, "slow"))
        assert _wait(lambda: read() > r0, 30), "the task never started"
        _withdraw(params, "slow")
        assert _wait(lambda: _withdrawn_count() == n0 + 1, 30)
        assert read() - r0 < d.source.capacity / 2  # stopped, not read to the end
        assert svc.throttle.host("esx-1").active == 0
        assert _get(params, QUEUE_DLQ, 2) is None
        assert _get(params, results_queue("c1"), 1) is None
        assert _queue_depth(params, "vmbackup.tasks.host.esx-1") == 0  # acked, not requeued
    finally:
        svc.close()


def test_task_withdrawn_while_waiting_for_a_stream_is_dropped_when_it_fails(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    """Taken before its withdrawal came, then failing against its removed snapshot: the
    failure of a withdrawn task is no failure (no retry, no DLQ entry)."""
    d = make_sparse_disk(tmp_path, capacity=24 * MiB, seed=6)
    d.path.write_bytes(os.urandom(d.source.capacity))  # 24 s at 1 MB/s
    svc = _service(
        params,
        d,
        tasks_in_parallel=2,
        throttle=ThrottleSettings(max_streams_per_host=1, max_mb_per_s_per_host=1.0, burst_mb=1),
    )

    try:
        assert svc.withdrawal_consumer.ready.wait(30)
        n0, r0 = _withdrawn_count(), read()
        retries0 = _outcome_count("retry")
        _publish(params, _task(d, "slow"))
        assert _wait(lambda: read() > r0, 30), "the first task never started"
        # the second is taken at once and waits for the host's only stream
        _publish(
            params, _task(d, "waiting", disk=replace(d.source, disk_file="[ds1] removed/disk.vmdk"))
        )
        assert _wait(lambda: _queue_depth(params, "vmbackup.tasks.host.esx-1") == 0, 30)
        _withdraw(params, "waiting")
        assert _wait(lambda: svc.withdrawals.reason("waiting") is not None, 30)
        _withdraw(params, "slow")  # frees the stream; "waiting" then fails to open its disk
        assert _wait(lambda: _withdrawn_count() == n0 + 2, 30)
        assert _outcome_count("retry") == retries0  # dropped at its failure, not retried
        assert _get(params, QUEUE_DLQ, 2) is None
        assert _get(params, results_queue("c1"), 1) is None
        assert _queue_depth(params, "vmbackup.tasks.host.esx-1") == 0
    finally:
        svc.close()
