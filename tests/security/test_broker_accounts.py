"""One broker account per role, on the real broker with every role a real process.

A client holding the proxy's account (what a compromised proxy host has) forges a commit
of an all-zero point dated 30 days ahead and a JobMarker "end" for the job that is
running: the writer dead-letters both, naming the sender; no point appears and the
job's running marker (gc protection) stays until the job ends it. The proxy's account
cannot consume a shard queue or the commits queue, nor claim the coordinator's name in
``user_id``; the coordinator's account cannot stage a task's map entries (only proxies
read disks), and only it can have a policy's points pruned; the backup itself goes
through on the per-role accounts.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from common.amqp import (
    EXCHANGE_SHARDS,
    HEADER_ERROR,
    QUEUE_COMMITS,
    QUEUE_DLQ,
    BrokerParams,
    Publisher,
    ReplyQueue,
)
from common.messages import (
    CommitReply,
    CommitRequest,
    DiskCommit,
    HaveQuery,
    HaveReply,
    JobMarker,
    PruneReply,
    PruneRequest,
    TaskEntries,
    encode,
)
from common.packed_entries import entries_digest, pack_entries
from common.sharding import shard_queue, shard_routing_key
from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.staging import job_dir_name
from tests.conftest import BROKER_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MiB = 1 << 20
DAY = 86400.0
# Slow proxies: the job runs long enough to be attacked while it runs.
THROTTLE = """
[proxy.throttle]
max_mb_per_s_per_host = 8.0
burst_mb = 2.0
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[24 * MiB])
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=5, template_vms=1)
        yield lab


@pytest.fixture(scope="module")
def stack(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = StackSpec(writers=1, proxies=1, n_shards=2, extra_config=THROTTLE)
    with Stack(lab, tmp_path_factory.mktemp("stack"), spec) as stack:
        yield stack


def as_role(stack: Stack, role: str) -> BrokerParams:
    acc = stack.accounts[role]
    return BrokerParams(
        url=stack.broker_url,
        user=acc.user,
        password=acc.password_file.read_text(),
        heartbeat=10,
        reconnect_max=2.0,
    )


def as_admin(stack: Stack) -> BrokerParams:
    """guest: the test's own view of the stack's vhost (it is no role)."""
    return BrokerParams(url=BROKER_URL.rsplit("/", 1)[0] + "/" + stack.vhost)


def admin_conn(stack: Stack) -> pika.BlockingConnection:
    return pika.BlockingConnection(as_admin(stack).pika_params("test-admin"))


def dead_letters(stack: Stack, want: int, timeout: float = 60.0) -> list[tuple[Any, bytes]]:
    """Take ``want`` messages from vmbackup.dlq (waiting for them)."""
    conn = admin_conn(stack)
    got: list[tuple[Any, bytes]] = []
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            method, props, body = ch.basic_get(QUEUE_DLQ, auto_ack=True)
            if method is None:
                time.sleep(0.2)
                continue
            got.append((props, body))
    finally:
        conn.close()
    return got


def forged_commit(vm: dict[str, Any], job_id: str) -> CommitRequest:
    chunks = 24
    disk = DiskCommit(
        key=2999,  # no real disk has it
        capacity=chunks * MiB,
        change_id="*",
        base_point_id="",
        entries=[(i, b"") for i in range(chunks)],  # every chunk zero
        info={},
    )
    return CommitRequest(
        request_id=f"forged-{vm['uuid']}",
        reply_to="amq.gen-forger",
        job_id=job_id,
        vcenter="lab",
        vm_uuid=vm["uuid"],
        vm_moref=vm["moref"],
        vm_name=vm["name"],
        vm_config=b"",
        status="complete",
        snapshot_time=time.time() + 30 * DAY,
        disks=[disk],
        failed_disks=[],
    )


def wait_running_marker(repo_path: Path, popen: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert popen.poll() is None, "the job ended before it could be attacked"
        jobs = Repository.open(repo_path).running_jobs()
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError("no running-backup marker within the timeout")


def writer_log(stack: Stack) -> str:
    return "\n".join(
        p.log_path.read_text(errors="replace") for p in stack.procs.values() if p.role == "writer"
    )


def test_proxy_account_cannot_consume_shard_or_commits_queues(stack: Stack) -> None:
    conn = pika.BlockingConnection(as_role(stack, "proxy").pika_params("test-proxy-reader"))
    try:
        for queue in (shard_queue(0), QUEUE_COMMITS):
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                ch.basic_consume(queue, lambda *_a: None)
            assert err.value.reply_code == 403, err.value  # ACCESS_REFUSED
            assert queue in err.value.reply_text
    finally:
        conn.close()


def test_proxy_account_cannot_claim_the_coordinator_name(stack: Stack) -> None:
    conn = pika.BlockingConnection(as_role(stack, "proxy").pika_params("test-impostor"))
    try:
        ch = conn.channel()
        props = pika.BasicProperties(user_id=stack.accounts["coordinator"].user)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.basic_publish("", QUEUE_COMMITS, b"x", props)
            ch.basic_qos(prefetch_count=1)  # a round trip: the broker's refusal arrives
        assert err.value.reply_code == 406, err.value  # PRECONDITION_FAILED
        assert "user_id" in err.value.reply_text
    finally:
        conn.close()


def have_reply(params: BrokerParams, name: str) -> HaveReply:
    replies = ReplyQueue(params, name=f"{name}-replies")
    pub = Publisher(params, name=name)
    try:
        fut = replies.expect(name)
        query = HaveQuery(query_id=name, reply_to=replies.name, ids=[bytes(32)])
        pub.publish_sync(EXCHANGE_SHARDS, shard_routing_key(0), query, persistent=False)
        reply = fut.result(timeout=60)
    finally:
        pub.close()
        replies.close()
    assert isinstance(reply, HaveReply)
    return reply


def test_stream_token_only_reaches_the_proxy_account(stack: Stack) -> None:
    to_proxy = have_reply(as_role(stack, "proxy"), "test-have-proxy")
    assert to_proxy.data_token and to_proxy.data_addr
    # Any other account that can reach a shard queue (here the broker's admin) learns
    # which chunks exist, not how to write them.
    to_other = have_reply(as_admin(stack), "test-have-admin")
    assert to_other.present == to_proxy.present
    assert not to_other.data_token and not to_other.data_addr


def test_forged_commit_and_marker_refused_while_a_backup_runs(stack: Stack, lab: Lab) -> None:
    popen, log_path, report_path = stack.backup_popen()
    running = wait_running_marker(stack.repo, popen)
    job_id = running["job_id"]
    vm = lab.vms()[0]
    proxy = Publisher(as_role(stack, "proxy"), name="test-forger")
    try:
        proxy.publish_sync("", QUEUE_COMMITS, forged_commit(vm, job_id))
        proxy.publish_sync("", QUEUE_COMMITS, JobMarker("forged-end", "amq.gen-x", job_id, "end"))
    finally:
        proxy.close()
    # No user_id at all: refused too ("none").
    conn = admin_conn(stack)
    try:
        body = encode(JobMarker("forged-end-2", "amq.gen-x", job_id, "end"))
        conn.channel().basic_publish("", QUEUE_COMMITS, body)
    finally:
        conn.close()

    refused = dead_letters(stack, 3)
    reasons = sorted(str(props.headers[HEADER_ERROR]) for props, _ in refused)
    proxy_user = stack.accounts["proxy"].user
    assert len(reasons) == 3, reasons
    assert sum(f"broker user {proxy_user!r}" in r for r in reasons) == 2, reasons
    assert sum("broker user 'none'" in r for r in reasons) == 1, reasons
    assert all("not a coordinator account" in r for r in reasons), reasons
    log = writer_log(stack)
    assert log.count('"commit_sender_refused"') == 3, log[-3000:]
    assert f'"sender": "{proxy_user}"' in log
    (writer,) = [p for p in stack.procs.values() if p.role == "writer"]
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{writer.metrics_port}/metrics").read()
    assert b'vmbackup_writer_commits_total{result="sender_refused"} 3.0' in scrape

    # The job is still protected while it runs, and then ends its marker itself.
    assert popen.poll() is None, "the job ended before its marker could be checked"
    assert [j["job_id"] for j in Repository.open(stack.repo).running_jobs()] == [job_id]
    run = stack.finish_run(popen.wait(timeout=600), report_path, log_path, 0.0)
    assert run.returncode == 0, log_path.read_text()[-3000:]
    assert run.report["vms"] and all(v["status"] == "ok" for v in run.report["vms"]), run.report
    repo = Repository.open(stack.repo)
    assert repo.running_jobs() == []
    # Only the job's own points: none dated ahead, none with the forged disk.
    points = repo.points()
    assert sorted(p.vm_moref for p in points) == sorted(v["moref"] for v in lab.vms())
    assert all(p.snapshot_time < time.time() + DAY for p in points)
    assert all(2999 not in [d.key for d in p.disks] for p in points)
    stack.verify()


# Last: its refusal would count in the forged-commit test's totals.
def stage_as(params: BrokerParams, name: str, msg_for: Any) -> CommitReply | None:
    """Send TaskEntries built for our reply queue; the writer's reply, or None when none
    came (refused to the dead-letter queue)."""
    replies = ReplyQueue(params, name=f"{name}-replies")
    pub = Publisher(params, name=name)
    try:
        fut = replies.expect(name)
        pub.publish_sync("", QUEUE_COMMITS, msg_for(replies.name), correlation_id=name)
        try:
            reply = fut.result(timeout=15)
        except TimeoutError:
            return None
    finally:
        pub.close()
        replies.close()
    assert isinstance(reply, CommitReply)
    return reply


def test_only_proxy_accounts_stage_task_entries(stack: Stack) -> None:
    packed = pack_entries([(i, b"") for i in range(8)])  # a forged all-zero slice of a disk

    def entries(request_id: str, job: str) -> Any:
        return lambda reply_to: TaskEntries(
            request_id, reply_to, job, "vm-uuid-x", 2000, "task-1", packed
        )

    assert stage_as(as_role(stack, "coordinator"), "te-coord", entries("te-coord", "job-c")) is None
    (refused,) = dead_letters(stack, 1)
    reason = str(refused[0].headers[HEADER_ERROR])
    assert "task-entries sent by broker user" in reason and "not a proxy account" in reason
    assert not (stack.repo / "staging" / job_dir_name("job-c", "vm-uuid-x")).exists()

    ok = stage_as(as_role(stack, "proxy"), "te-proxy", entries("te-proxy", "job-p"))
    assert ok is not None and ok.ok, ok
    staged = Repository.open(stack.repo).staging.load_task(
        "job-p", "vm-uuid-x", 2000, "task-1", entries_digest(packed), 8
    )
    assert list(staged) == [(i, b"") for i in range(8)]


def test_only_coordinator_accounts_prune(stack: Stack) -> None:
    """A policy's points are removed only on a coordinator's request: a proxy account's
    PruneRequest is dead-lettered before any decision, a coordinator's is answered."""

    def prune_as(params: BrokerParams, name: str) -> PruneReply | None:
        replies = ReplyQueue(params, name=f"{name}-replies")
        pub = Publisher(params, name=name)
        try:
            fut = replies.expect(name)
            msg = PruneRequest(name, replies.name, "all", 1, 0, 0, 0, 0, 0, False)
            pub.publish_sync("", QUEUE_COMMITS, msg, correlation_id=name)
            try:
                reply = fut.result(timeout=15)
            except TimeoutError:
                return None
        finally:
            pub.close()
            replies.close()
        assert isinstance(reply, PruneReply)
        return reply

    before = [p.id for p in Repository.open(stack.repo).points()]
    assert prune_as(as_role(stack, "proxy"), "prune-proxy") is None
    (refused,) = dead_letters(stack, 1)
    reason = str(refused[0].headers[HEADER_ERROR])
    assert "prune sent by broker user" in reason and "not a coordinator account" in reason
    assert [p.id for p in Repository.open(stack.repo).points()] == before
    ok = prune_as(as_role(stack, "coordinator"), "prune-coord")
    assert ok is not None and ok.ok, ok
    assert ok.kept == len(before) and ok.removed_count == 0  # one job: each is the newest
