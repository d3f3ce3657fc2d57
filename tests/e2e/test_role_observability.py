"""What each role process shows its operators: its own metric families only (beside the
shared ones), and log lines that all carry its role, and the job, VM or task in scope.

Real processes (`vmbackup writer`, `vmbackup proxy`, `vmbackup backup`, `vmbackup
coordinator`) against the lab and RabbitMQ, scraped over HTTP and read from their JSON
logs, at debug level so that pika's own lines are there as well."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from common import metrics as shared_metrics
from common.amqp import EXCHANGE_SHARDS, QUEUE_COMMITS, BrokerParams, Publisher
from common.messages import ChunkBatch, CommitRequest
from common.sharding import shard_of, shard_routing_key
from coordinator import metrics as coordinator_metrics
from lab import Lab, LabSpec
from lab.stack import ROOT, Stack, StackSpec, free_port
from proxy_worker import metrics as proxy_metrics
from repository import metrics as repository_metrics
from repository_writer import metrics as writer_metrics
from tests.conftest import BROKER_URL, rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20

# Each role's own registries (what its start_role serves beside the shared families).
OWN: dict[str, list[CollectorRegistry]] = {
    "coordinator": [coordinator_metrics.REGISTRY],
    "proxy": [proxy_metrics.REGISTRY],
    "writer": [writer_metrics.REGISTRY, repository_metrics.REGISTRY],
}


def names(registries: list[CollectorRegistry]) -> set[str]:
    return {m.name for r in registries for m in r.collect()}


def vmbackup_families(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def wait_for_lines(path: Path, event: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = [r for r in log_lines(path) if r.get("event") == event]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {event!r} in {path}: {path.read_text()[-3000:]}"
        time.sleep(0.2)


def close_connections(stack: Stack, user: str) -> int:
    """Have the broker close every connection of ``user`` on the stack's vhost; how many."""
    out = rabbitmqctl("list_connections", "pid", "vhost", "user")
    pids = [
        row[0]
        for row in (line.split("\t") for line in out.splitlines())
        if row[1:] == [stack.vhost, user]
    ]
    assert pids, out
    for pid in pids:
        rabbitmqctl("close_connection", pid, "closed by test_role_observability")
    return len(pids)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[6 * MiB])
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=3)
        sspec = StackSpec(
            writers=1,
            proxies=1,
            n_shards=2,
            transport="http",
            chunk_size=MiB,
            task_max_bytes=2 * MiB,
            log_level="debug",
        )
        with Stack(lab, tmp_path_factory.mktemp("stack"), sspec) as stack:
            yield stack


@pytest.fixture(scope="module")
def backup_log(stack: Stack) -> Path:
    run = stack.backup(timeout=300)
    assert run.returncode == 0, run.log_path.read_text()[-4000:]
    return run.log_path


@contextlib.contextmanager
def coordinator_daemon(stack: Stack, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VMBACKUP_METRICS__PORT": str(port)}
    env.pop("VMBACKUP_TEST_BROKER", None)
    log = (stack.logs / "coordinator-daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "coordinator", "--config", str(stack.config_path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def scrape_when_up(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the coordinator daemon exited"
        try:
            return vmbackup_families(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_only_own(role: str, families: dict[str, Any]) -> None:
    own = names(OWN[role])
    others = set().union(*(names(r) for k, r in OWN.items() if k != role))
    shown = {n for n in families if n.startswith("vmbackup_")}
    assert not shown & others, f"{role} exports other roles' families: {sorted(shown & others)}"
    assert own <= shown, f"{role} lacks its own families: {sorted(own - shown)}"
    shared = {n for n in names([shared_metrics.REGISTRY]) if n.startswith("vmbackup_")}
    assert shared <= shown, f"{role} lacks shared families: {sorted(shared - shown)}"
    (build,) = families["vmbackup_build_info"].samples
    assert build.labels["role"] == role
    assert "process_resident_memory_bytes" in families


def test_writer_and_proxy_serve_only_their_own_families(stack: Stack, backup_log: Path) -> None:
    for proc in stack.procs.values():
        assert_only_own(proc.role, vmbackup_families(proc.metrics_port))


def test_coordinator_serves_only_its_own_families(stack: Stack) -> None:
    port = free_port()
    with coordinator_daemon(stack, port) as proc:
        assert_only_own("coordinator", scrape_when_up(proc, port))


def test_every_line_carries_the_role_threads_and_libraries_too(
    stack: Stack, backup_log: Path
) -> None:
    logs = {"coordinator": backup_log} | {p.role: p.log_path for p in stack.procs.values()}
    for role, path in logs.items():
        lines = log_lines(path)
        assert lines, f"{role}: no JSON log line in {path}"
        bad = [r for r in lines if r.get("role") != role]
        assert not bad, f"{role}: lines without role={role}: {bad[:5]}"
        # "consumer started" is logged by each consumer's own thread
        assert any(r["event"] == "consumer started" for r in lines), role
    # pika's own lines (stdlib logging, on the connections' threads) after the broker
    # closes the writer's connections; the writer reconnects by itself
    writer_log = stack.procs["writer-1"].log_path
    closed = close_connections(stack, stack.accounts["writer"].user)
    wait_for_lines(writer_log, "broker connection back", closed)
    lines = log_lines(writer_log)
    from_pika = [r for r in lines if str(r.get("logger", "")).startswith("pika")]
    assert from_pika, writer_log.read_text()[-3000:]
    assert all(r.get("role") == "writer" for r in lines), [
        r for r in lines if r.get("role") != "writer"
    ][:5]


def test_coordinator_lines_of_a_vm_carry_the_job(backup_log: Path) -> None:
    lines = log_lines(backup_log)
    per_vm = [r for r in lines if "vm" in r]
    assert any(r["event"] == "vm_finished" for r in per_vm)
    job = {r["job"] for r in lines if r.get("event") == "job_started"}
    assert len(job) == 1
    assert all(r.get("job") in job and r.get("policy") == "all" for r in per_vm), [
        r for r in per_vm if r.get("job") not in job
    ][:5]


def test_writer_binds_the_job_of_a_commit_it_handles(stack: Stack, backup_log: Path) -> None:
    # A commit from an account that is not a coordinator's: the writer refuses it, and
    # its line names the job and the VM the commit was for.
    job = "all-20250101T000000Z-abcdef"
    params = BrokerParams(url=BROKER_URL).with_vhost(stack.vhost)
    msg = CommitRequest(
        "c-" + "0" * 32, "amq.gen-nobody", job, "lab", "uuid-1", "vm-1", "vm-one", b"", "complete",
        0.0, [], [],
    )  # fmt: skip
    pub = Publisher(params, name="test-commit")
    try:
        pub.publish_sync("", QUEUE_COMMITS, msg, reply_to=msg.reply_to)  # the default exchange
    finally:
        pub.close()
    log = stack.procs["writer-1"].log_path
    (refused,) = wait_for_lines(log, "commit_sender_refused")
    assert refused["job"] == job and refused["vm"] == "vm-one", refused
    # and the backup's own commits, markers and entries: every line of their handling
    handled = [
        r
        for r in log_lines(log)
        if r.get("event") in ("point_committed", "job_marker", "task_entries_staged")
    ]
    assert {r["event"] for r in handled} == {"point_committed", "job_marker", "task_entries_staged"}
    assert all(r.get("job") and r.get("job") != job for r in handled)


def test_writer_names_the_job_of_a_chunk_batch_it_refuses(stack: Stack) -> None:
    """A chunk batch carries its task's job (message version 2): the writer's line of a
    refused batch (a chunk of a shard the queue's writer does not own) names it."""
    n = stack.spec.n_shards
    stray = next(c for i in range(1000) if shard_of(c := bytes([i % 256, i // 256]) * 16, n) != 0)
    job = "all-20250101T000000Z-feedbe"
    msg = ChunkBatch("b-stray", "task-stray", "amq.gen-nobody", [(stray, 1, False, b"x")], job)
    params = BrokerParams(url=BROKER_URL).with_vhost(stack.vhost)
    pub = Publisher(params, name="test-batch")
    try:
        pub.publish_sync(EXCHANGE_SHARDS, shard_routing_key(0), msg, persistent=False)
    finally:
        pub.close()
    deadline = time.monotonic() + 30
    while True:
        refused = [
            r
            for name, proc in stack.procs.items()
            if name.startswith("writer-")
            for r in log_lines(proc.log_path)
            if r.get("event") == "chunk_batch_refused" and r.get("batch") == "b-stray"
        ]
        if refused:
            break
        assert time.monotonic() < deadline, "no writer refused the stray batch"
        time.sleep(0.2)
    assert refused[0]["job"] == job and refused[0]["task"] == "task-stray", refused[0]
