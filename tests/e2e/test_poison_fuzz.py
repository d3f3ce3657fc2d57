"""Fuzz every consumer with hostile messages, then back up and restore through the same
services: no message may block a queue or a publisher.

In one process, on the real RabbitMQ (own vhost): a real writer (shard queues and the
commits queue), a real proxy (task queue, its reply queue, its withdrawals queue), the
coordinator's real result consumer (coordinator.task_results.ResultRouter) and a reply queue like
the coordinator's. Hypothesis publishes random properties (headers, reply_to,
correlation_id, expiration, user_id...) with random bodies (bytes, msgpack of any shape,
maps of every message kind with random or hostile fields) to each of them; then every queue
must drain, and a normal task -> result -> commit -> restore must come out bit-exact.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pika
import pika.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pika.spec import BasicProperties

from common import metrics
from common.amqp import (
    EXCHANGE_SHARDS,
    EXCHANGE_TASKS,
    EXCHANGE_WITHDRAWALS,
    QUEUE_COMMITS,
    QUEUE_DLQ,
    BrokerParams,
    Publisher,
    ReplyQueue,
    open_blocking,
    results_queue,
    task_queue,
)
from common.amqp.preflight import ENCODING_ERRORS
from common.messages import (
    KINDS,
    BackupTask,
    ChunkAck,
    ChunkBatch,
    CommitPart,
    CommitReply,
    CommitRequest,
    DiskCommit,
    HaveQuery,
    HaveReply,
    JobMarker,
    JobRecord,
    PruneReply,
    PruneRequest,
    StagedTask,
    TaskEntries,
    TaskResult,
    TaskWithdrawal,
)
from common.sharding import shard_queue, shard_routing_key
from coordinator.task_results import ResultRouter
from proxy_worker.service import ProxyService
from proxy_worker.settings import ProxySettings
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from repository_writer.service import WriterService
from tests.proxy.proxy_helpers import MiB, SparseDisk, make_sparse_disk

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHUNK = 256 * 1024
SHARDS = 2
COORDINATOR = "c1"
HOST_KEY = "host.esx-1"


@dataclasses.dataclass
class Services:
    params: BrokerParams
    repo: Repository
    disk: SparseDisk
    writer: WriterService
    proxy: ProxyService
    results: ResultRouter
    replies: ReplyQueue
    publisher: Publisher


@pytest.fixture
def services(broker: BrokerParams, tmp_path: Path) -> Iterator[Services]:
    params = BrokerParams(**{**broker.__dict__, "delivery_limit": 2})
    repo = Repository.init(tmp_path / "repo", chunk_size=CHUNK, compression_level=1)
    writer = WriterService(Repository.open(repo.path), params, n_shards=SHARDS).start()
    disk = make_sparse_disk(tmp_path, capacity=12 * MiB + 777)
    proxy_settings = ProxySettings(
        name="p1",
        queues=[HOST_KEY],
        transport="file",
        datastore_mounts=disk.settings.datastore_mounts,
        writer_timeout=10.0,
    )
    proxy = ProxyService(proxy_settings, params, n_shards=SHARDS).start()
    results = ResultRouter(params, COORDINATOR)
    replies = ReplyQueue(params, name="coordinator-replies")
    publisher = Publisher(params, name="coordinator")
    assert results.wait_ready(30) and publisher.wait_ready(30)
    assert proxy.consumer.ready.wait(30) and proxy.withdrawal_consumer.ready.wait(30)
    yield Services(params, repo, disk, writer, proxy, results, replies, publisher)
    publisher.close()
    replies.close()
    results.close()
    proxy.close()
    writer.close()


# --- strategies ------------------------------------------------------------------------

LONG = st.text(min_size=200, max_size=300)  # over 255 bytes of UTF-8, mostly
short_text = st.text(max_size=30)


def names(known: list[str]) -> st.SearchStrategy[str]:
    """Queue names and ids: real ones (so that answers are routed), random, over-long."""
    return st.one_of(st.sampled_from(known), short_text, LONG, st.just(""))


def header_values() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        short_text,
        st.binary(max_size=40),
        st.datetimes(min_value=__import__("datetime").datetime(1970, 1, 2)),
    )
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
        max_leaves=6,
    )


def properties(known: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    headers = st.dictionaries(
        st.one_of(short_text, st.sampled_from(["x-delivery-count", "x-death", "x-first-death"])),
        st.one_of(header_values(), st.integers(-(10**6), 10**6)),
        max_size=4,
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "headers": headers,
            "reply_to": names(known),
            "correlation_id": names(known),
            "message_id": short_text,
            "content_type": short_text,
            "content_encoding": short_text,
            "type": st.one_of(short_text, st.sampled_from(sorted(KINDS))),
            "delivery_mode": st.sampled_from([1, 2]),
            "priority": st.integers(0, 255),
            "timestamp": st.integers(0, 2**63 - 1),
            "expiration": st.sampled_from(["0", "60000", "600000", "-1", "soon"]),
            "user_id": st.sampled_from(["guest", "guest", "guest", "mallory"]),
            "app_id": short_text,
        },
    )


def any_msgpack() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        short_text,
        st.binary(max_size=64),
    )
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
        max_leaves=12,
    )


def value_for(tp: Any, known: list[str]) -> st.SearchStrategy[Any]:
    """A value of (about) type ``tp``: mostly the right type with hostile contents,
    sometimes anything at all."""
    origin = typing.get_origin(tp)
    if tp is str:
        return names(known)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(st.integers(-3, 5000), st.integers(-(2**63), 2**64 - 1))
    if tp is float:
        return st.floats()
    if tp in (bytes, bytearray):
        return st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(value_for(a, known) for a in typing.get_args(tp)))
    if tp is type(None):
        return st.none()
    if origin is list:
        return st.lists(value_for(typing.get_args(tp)[0], known), max_size=4)
    if origin is tuple:
        return st.tuples(*(value_for(a, known) for a in typing.get_args(tp))).map(list)
    if origin is dict:
        return st.dictionaries(short_text, st.one_of(st.none(), st.integers(-5, 5), short_text))
    if dataclasses.is_dataclass(tp):
        return fields_of(tp, known)
    return any_msgpack()


def fields_of(cls: Any, known: list[str], wild: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Every field of ``cls``: of its type with hostile contents, or (``wild``) sometimes
    of any shape at all."""
    hints = typing.get_type_hints(cls)

    def field(name: str) -> st.SearchStrategy[Any]:
        typed = value_for(hints[name], known)
        return st.one_of(typed, any_msgpack()) if wild else typed

    return st.fixed_dictionaries({f.name: field(f.name) for f in dataclasses.fields(cls)})


def bodies(known: list[str], expected: tuple[type, ...]) -> st.SearchStrategy[bytes]:
    """Bodies for a queue that takes ``expected`` kinds: mostly those kinds with hostile
    fields (they get past decoding, to the handlers), else any kind of any shape, msgpack
    that is no message, or bytes that are no msgpack."""

    def kind_map(cls: Any, wild: bool) -> st.SearchStrategy[bytes]:
        version = (
            st.one_of(st.just(cls.VERSION), st.integers(0, 4)) if wild else st.just(cls.VERSION)
        )
        return st.builds(
            lambda v, f: msgpack.packb({"k": cls.KIND, "v": v, **f}, use_bin_type=True),
            version,
            fields_of(cls, known, wild),
        )

    kinds = list(KINDS.values())
    typed = st.sampled_from(expected).flatmap(lambda cls: kind_map(cls, wild=False))
    other = st.one_of(
        st.binary(max_size=2000),
        any_msgpack().map(lambda v: msgpack.packb(v, use_bin_type=True)),
        st.sampled_from(kinds).flatmap(lambda cls: kind_map(cls, wild=True)),
    )
    return st.integers(0, 9).flatmap(lambda n: typed if n < 6 else other)


# --- the test ---------------------------------------------------------------------------


def _depths(params: BrokerParams, queues: list[str]) -> dict[str, int]:
    """Ready messages per queue, from the broker at once (``rabbitmqctl list_queues``
    reports quorum queues only on a metrics tick)."""
    conn = open_blocking(params, "test-depths")
    try:
        ch = conn.channel()
        return {q: int(ch.queue_declare(q, passive=True).method.message_count) for q in queues}
    finally:
        conn.close()


def _wait_drained(params: BrokerParams, queues: list[str], timeout: float) -> None:
    """Every one of ``queues`` empty three polls in a row."""
    deadline = time.monotonic() + timeout
    calm = 0
    depths: dict[str, int] = {}
    while time.monotonic() < deadline:
        depths = _depths(params, queues)
        calm = 0 if any(depths.values()) else calm + 1
        if calm >= 3:
            return
        time.sleep(0.5)
    raise AssertionError(f"queues still hold messages after {timeout}s: {depths}")


def _retries() -> float:
    """Handler failures so far that were given back to their queue for a retry."""
    return sum(
        sample.value
        for family in metrics.AMQP_REJECTED.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("reason") == "retry"
    )


def _backup_and_restore(s: Services, tmp_path: Path) -> None:
    d = s.disk
    src = d.source
    task_id = f"good-{uuid.uuid4().hex}"
    result = s.results.expect(task_id)
    task = BackupTask(
        task_id=task_id,
        job_id="job-good",
        vm_uuid="uuid-good",
        vm_name="vm good",
        disk_key=2000,
        disk=src,
        chunk_size=CHUNK,
        compression_level=1,
        ranges=[(0, src.capacity)],
        results_to=s.results.queue,
    )
    s.publisher.publish_sync(EXCHANGE_TASKS, HOST_KEY, task)
    res = result.result(timeout=120)
    assert res.ok and res.staged, res.error
    request_id = uuid.uuid4().hex
    reply = s.replies.expect(request_id)
    commit = CommitRequest(
        request_id=request_id,
        reply_to=s.replies.name,
        job_id="job-good",
        vcenter=src.vcenter,
        vm_uuid="uuid-good",
        vm_moref=src.vm_moref,
        vm_name="vm good",
        vm_config=b"cfg",
        status="complete",
        snapshot_time=time.time(),
        disks=[
            DiskCommit(
                2000,
                src.capacity,
                "",
                "",
                [],
                {},
                tasks=[StagedTask(task.task_id, res.entries_digest, res.entries_count)],
                planned=[(0, src.capacity)],
            )
        ],
        failed_disks=[],
    )
    s.publisher.publish_sync("", QUEUE_COMMITS, commit, correlation_id=request_id)
    rep = reply.result(timeout=60)
    assert isinstance(rep, CommitReply) and rep.ok, rep
    out = tmp_path / "restored"
    restore_disk(s.repo, rep.point_id, 2000, out)
    assert out.read_bytes() == d.data


def test_fuzzed_consumers_keep_serving_and_a_backup_restores_bit_exact(
    services: Services, tmp_path: Path
) -> None:
    s = services
    known = [s.results.queue, s.replies.name, s.proxy.replies.name, QUEUE_COMMITS, "x"]
    answers = (ChunkAck, HaveReply, CommitReply, PruneReply)
    targets: list[tuple[str, str, tuple[type, ...]]] = [
        (EXCHANGE_SHARDS, shard_routing_key(0), (ChunkBatch, HaveQuery)),
        (EXCHANGE_SHARDS, shard_routing_key(1), (ChunkBatch, HaveQuery)),
        (
            "",
            QUEUE_COMMITS,
            (CommitRequest, CommitPart, JobMarker, JobRecord, TaskEntries, PruneRequest),
        ),
        (EXCHANGE_TASKS, HOST_KEY, (BackupTask,)),
        ("", results_queue(COORDINATOR), (TaskResult,)),
        ("", s.replies.name, answers),
        ("", s.proxy.replies.name, answers),
        (EXCHANGE_WITHDRAWALS, "", (TaskWithdrawal,)),
    ]
    examples = st.sampled_from(targets).flatmap(
        lambda t: st.tuples(st.just(t[:2]), properties(known), bodies(known, t[2]))
    )
    conn = open_blocking(s.params, "fuzzer")
    channel = [conn.channel()]
    sent = [0]

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(examples)
    def fuzz(example: tuple[tuple[str, str], dict[str, Any], bytes]) -> None:
        (exchange, key), props, body = example
        try:
            channel[0].basic_publish(exchange, key, body, BasicProperties(**props))
            sent[0] += 1
        except ENCODING_ERRORS:
            pass  # pika itself cannot send these: they never reach a consumer
        except pika.exceptions.ChannelClosed:
            # the broker refused it (a bad expiration or user_id) and closed the channel
            channel[0] = conn.channel()

    try:
        fuzz()
        conn.process_data_events(0)  # a channel closed by the last one is noticed here
    finally:
        conn.close()
    assert sent[0] > 50  # most examples reached the broker
    durable = [shard_queue(0), shard_queue(1), QUEUE_COMMITS, task_queue(HOST_KEY), s.results.queue]
    _wait_drained(s.params, durable, timeout=180)
    # and nothing goes round and round unacked (a retried message is not "ready" long)
    retries = _retries()
    time.sleep(2)
    assert _retries() == retries
    # hostile messages were parked, with their reasons
    assert _depths(s.params, [QUEUE_DLQ])[QUEUE_DLQ] > 0
    # the same running services: a normal backup and restore, bit-exact
    _backup_and_restore(s, tmp_path)
    assert verify(s.repo).ok
