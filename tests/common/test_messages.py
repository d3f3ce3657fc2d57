"""Strict message schemas: round trips and malformed input (hypothesis)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import messages as m
from common.compression_level import MAX_LEVEL, MIN_LEVEL
from common.job_ids import new_job_id
from common.packed_entries import pack_entries
from common.snapshot_disk import SnapshotDisk

ids = st.binary(min_size=32, max_size=32)
text = st.text(max_size=40)
i64 = st.integers(min_value=0, max_value=2**63 - 1)
scalar = st.one_of(st.none(), st.booleans(), i64, text, st.floats(allow_nan=False))
pairs = st.lists(st.tuples(i64, st.one_of(st.just(b""), ids)), max_size=20)
# sorted, distinct indexes with runs (what a disk's commit entries look like)
sorted_pairs = st.lists(
    st.tuples(st.integers(0, 2**40), st.one_of(st.just(b""), ids)),
    max_size=30,
    unique_by=lambda p: p[0],
).map(sorted)


@st.composite
def commit_parts(draw: st.DrawFn) -> m.CommitPart:
    request_id, disk_key, part = draw(text), draw(i64), draw(st.integers(0, 10**6))
    return m.CommitPart(
        request_id=request_id,
        part_id=m.part_key(request_id, disk_key, part),
        reply_to=draw(text),
        disk_key=disk_key,
        part=part,
        entries=pack_entries(draw(sorted_pairs)),
        job_id=draw(text),
    )


STRATEGIES: dict[type[m.Message], st.SearchStrategy[m.Message]] = {
    m.BackupTask: st.builds(
        m.BackupTask,
        task_id=text,
        job_id=text,
        vm_uuid=text,
        vm_name=text,
        disk_key=i64,
        disk=st.builds(
            SnapshotDisk,
            vcenter=text,
            datacenter=text,
            host=text,
            datastore=text,
            vm_moref=text,
            snapshot_moref=text,
            disk_file=text,
            capacity=i64,
        ),
        chunk_size=i64,
        compression_level=st.integers(MIN_LEVEL, MAX_LEVEL),
        ranges=st.lists(st.tuples(i64, i64), max_size=10),
        results_to=text,
        transport=text,
    ),
    m.TaskResult: st.builds(
        m.TaskResult,
        task_id=text,
        job_id=text,
        vm_uuid=text,
        disk_key=i64,
        ok=st.booleans(),
        error=text,
        entries=st.just([]),
        bytes_read=i64,
        bytes_zero=i64,
        bytes_known=i64,
        bytes_sent=i64,
        seconds=st.floats(min_value=0, max_value=1e6),
        proxy=text,
        cause=text,
        entries_digest=ids,
        entries_count=i64,
    )
    | st.builds(
        m.TaskResult,
        task_id=text,
        job_id=text,
        vm_uuid=text,
        disk_key=i64,
        ok=st.booleans(),
        error=text,
        entries=pairs,
        bytes_read=i64,
        bytes_zero=i64,
        bytes_known=i64,
        bytes_sent=i64,
        seconds=st.floats(min_value=0, max_value=1e6),
        proxy=text,
    ),
    m.TaskEntries: st.builds(
        m.TaskEntries,
        request_id=text,
        reply_to=text,
        job_id=text.filter(bool),
        vm_uuid=text,
        disk_key=i64,
        task_id=text.filter(bool),
        entries=sorted_pairs.map(pack_entries),
    ),
    m.TaskWithdrawal: st.builds(
        m.TaskWithdrawal, job_id=text, task_ids=st.lists(text, max_size=5), reason=text
    ),
    m.ChunkBatch: st.builds(
        m.ChunkBatch,
        batch_id=text,
        task_id=text,
        reply_to=text,
        chunks=st.lists(st.tuples(ids, i64, st.booleans(), st.binary(max_size=64)), max_size=5),
        job_id=text,
    ),
    m.ChunkAck: st.builds(
        m.ChunkAck, batch_id=text, shard=i64, ok=st.booleans(), error=text, stored=i64, known=i64
    ),
    m.HaveQuery: st.builds(
        m.HaveQuery, query_id=text, reply_to=text, ids=st.lists(ids, max_size=9)
    ),
    m.HaveReply: st.builds(
        m.HaveReply,
        query_id=text,
        present=st.lists(st.booleans()),
        data_addr=text,
        data_token=text,
        data_pin=st.one_of(st.just(""), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    ),
    m.StreamHello: st.builds(m.StreamHello, token=text, client=text),
    m.CommitRequest: st.builds(
        m.CommitRequest,
        request_id=text,
        reply_to=text,
        job_id=text,
        vcenter=text,
        vm_uuid=text,
        vm_moref=text,
        vm_name=text,
        vm_config=st.binary(max_size=100),
        status=st.sampled_from(["complete", "partial"]),
        snapshot_time=st.floats(min_value=0, max_value=2e9),
        disks=st.lists(
            st.builds(
                m.DiskCommit,
                key=i64,
                capacity=i64,
                change_id=text,
                base_point_id=text,
                entries=pairs,
                info=st.dictionaries(text, scalar, max_size=4),
                parts=st.integers(0, 10**6),
                tasks=st.lists(st.builds(m.StagedTask, text, ids, i64), max_size=3),
                planned=st.none() | st.lists(st.tuples(i64, i64), max_size=4),
            ),
            max_size=3,
        ),
        failed_disks=st.lists(st.tuples(i64, text), max_size=3),
    ),
    m.CommitReply: st.builds(
        m.CommitReply, request_id=text, ok=st.booleans(), error=text, point_id=text
    ),
    m.CommitPart: commit_parts(),
    m.JobMarker: st.builds(
        m.JobMarker,
        request_id=text,
        reply_to=text,
        job_id=text.filter(bool),
        op=st.sampled_from(["begin", "end"]),
    ),
    m.JobRecord: st.builds(
        m.JobRecord,
        request_id=text,
        reply_to=text,
        job_id=st.builds(
            new_job_id,
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
        ),
        report=st.binary(max_size=200),
    ),
    m.PruneRequest: st.builds(
        m.PruneRequest,
        request_id=text,
        reply_to=text,
        policy=text.filter(bool),
        keep_last=st.integers(1, 10**6),
        keep_hourly=i64,
        keep_daily=i64,
        keep_weekly=i64,
        keep_monthly=i64,
        keep_yearly=i64,
        dry_run=st.booleans(),
        job_id=text,
    )
    | st.builds(
        m.PruneRequest,
        request_id=text,
        reply_to=text,
        policy=text.filter(bool),
        keep_last=st.just(0),
        keep_hourly=st.just(0),
        keep_daily=st.integers(1, 400),
        keep_weekly=st.just(0),
        keep_monthly=st.integers(0, 120),
        keep_yearly=st.just(0),
        dry_run=st.booleans(),
    ),
    m.PruneReply: st.builds(
        m.PruneReply,
        request_id=text,
        ok=st.booleans(),
        error=text,
        kept=i64,
        removed_count=i64,
        removed=st.lists(st.tuples(text, text, text), max_size=5),
    ),
    m.JobEvent: st.builds(
        m.JobEvent,
        job_id=text,
        event=text,
        vm=text,
        disk_key=i64,
        ts=st.floats(min_value=0, max_value=2e9),
        fields=st.dictionaries(text, scalar, max_size=4),
    ),
}


def test_every_kind_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(m.KINDS.values())


any_message = st.one_of(*STRATEGIES.values())


@given(any_message)
@settings(max_examples=300)
def test_round_trip(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg
    assert m.decode(m.encode(msg), expect=type(msg)) == msg


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    with contextlib.suppress(m.MessageError):
        m.decode(data)


@given(any_message, st.data())
@settings(max_examples=300)
def test_truncated_messages_raise_only_message_error(msg: m.Message, data: st.DataObject) -> None:
    raw = m.encode(msg)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(m.MessageError):
        m.decode(raw[:cut])


@given(any_message, st.data())
@settings(max_examples=200)
def test_mutated_fields_raise_only_message_error(msg: m.Message, data: st.DataObject) -> None:
    body = msgpack.unpackb(m.encode(msg), raw=False)
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(msg)]))
    body[name] = data.draw(st.one_of(scalar, st.binary(max_size=4), st.lists(scalar, max_size=2)))
    try:
        out = m.decode(msgpack.packb(body, use_bin_type=True))
    except m.MessageError:
        return
    assert type(out) is type(msg)  # the mutation happened to fit the schema


def _raw(msg: m.Message) -> dict:
    return msgpack.unpackb(m.encode(msg), raw=False)


EXAMPLE = m.HaveQuery(query_id="q", reply_to="r", ids=[b"\x01" * 32])


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b.update(v=2), "unsupported version 2"),
        (lambda b: b.pop("ids"), "missing field 'ids'"),
        (lambda b: b.update(extra=1), "unexpected field(s) 'extra'"),
        (lambda b: b.update(query_id=5), "query_id: expected str, got int"),
        (lambda b: b.update(k="nope"), "unknown message kind 'nope'"),
        (lambda b: b.update(ids=[b"short"]), "chunk id of 5 bytes"),
    ],
)
def test_errors_name_what_was_wrong(mutate, needle: str) -> None:
    body = _raw(EXAMPLE)
    mutate(body)
    with pytest.raises(m.MessageError) as exc:
        m.decode(msgpack.packb(body, use_bin_type=True))
    assert needle in str(exc.value)


def test_wrong_kind_for_expect() -> None:
    with pytest.raises(m.MessageError, match="expected a 'commit' message"):
        m.decode(m.encode(EXAMPLE), expect=m.CommitRequest)


@given(any_message)
@settings(max_examples=300)
def test_encode_parts_is_encode_in_pieces(msg: m.Message) -> None:
    assert b"".join(m.encode_parts(msg)) == m.encode(msg)


# Payloads around the msgpack bin8/bin16/bin32 limits and INLINE_BELOW, as bytes and as
# bytearray (a chunk as read, sent without a copy).
_sizes = st.sampled_from([0, 255, 256, 65535, 65536, 65537, 300_000])
_payload = st.builds(
    lambda n, seed, kind: kind(bytes([seed]) * n),
    _sizes,
    st.integers(0, 255),
    st.sampled_from([bytes, bytearray]),
)


@given(st.lists(st.tuples(ids, i64, st.booleans(), _payload), max_size=4))
@settings(max_examples=60, deadline=None)
def test_encode_parts_references_long_payloads(chunks: list[tuple]) -> None:
    msg = m.ChunkBatch("b", "t", "r", chunks)
    parts = m.encode_parts(msg)
    joined = b"".join(parts)
    assert joined == m.encode(msg)
    as_bytes = m.ChunkBatch("b", "t", "r", [(c[0], c[1], c[2], bytes(c[3])) for c in chunks])
    assert joined == m.encode(as_bytes)
    assert m.decode(joined) == as_bytes
    for c in chunks:  # long payloads are sent from the caller's buffer, not from a copy
        assert any(p is c[3] for p in parts) == (len(c[3]) >= m.INLINE_BELOW)


class _Payload(bytearray):
    """A bytearray that can be weakly referenced."""


def test_encode_parts_keeps_no_payload_alive() -> None:
    """Once the caller drops the parts, the payloads go at once, not at the next run of the
    cyclic collector (a self-calling closure once kept every sent batch alive until then)."""
    payload = _Payload(b"x" * (2 * m.INLINE_BELOW))
    gone = weakref.ref(payload)
    gc.disable()
    try:
        parts = m.encode_parts(m.ChunkBatch("b", "t", "r", [(b"\x02" * 32, 9, False, payload)]))
        assert any(p is payload for p in parts)
        del parts, payload
        assert gone() is None
    finally:
        gc.enable()


def test_encode_checks_payload_types() -> None:
    text: Any = "text"  # the wrong type on purpose: encode must refuse it
    bad = m.ChunkBatch("b", "t", "r", [(b"\x02" * 32, 1, False, text)])
    for enc in (m.encode, m.encode_parts):
        with pytest.raises(
            m.MessageError, match=r"chunk-batch.chunks\[0\]\[3\]: str is not bytes \| bytearray"
        ):
            enc(bad)


def test_oversize_payload_is_refused() -> None:
    big = m.ChunkBatch("b", "t", "r", [(b"\x02" * 32, 1, False, b"x" * (m.MAX_MESSAGE_BYTES + 1))])
    with pytest.raises(m.MessageError, match="exceeds limit"):
        m.encode(big)
    with pytest.raises(m.MessageError, match="exceeds limit"):
        m.encode_parts(big)
    with pytest.raises(m.MessageError, match="exceeds limit"):
        m.decode(b"\x00" * (m.MAX_MESSAGE_BYTES + 1))


def test_bool_is_not_an_int() -> None:
    body = _raw(m.ChunkAck("b", 1, True, "", 0, 0))
    body["shard"] = True
    with pytest.raises(m.MessageError, match="shard: expected int, got bool"):
        m.decode(msgpack.packb(body))


def test_commit_part_is_checked() -> None:
    good = pack_entries([(0, b"\x01" * 32), (1, b"")])
    m.CommitPart("r", m.part_key("r", 2000, 0), "q", 2000, 0, good)
    with pytest.raises(m.MessageError, match="truncated"):
        m.CommitPart("r", m.part_key("r", 2000, 0), "q", 2000, 0, good[:-1])
    with pytest.raises(m.MessageError, match="does not match"):
        m.CommitPart("r", m.part_key("r", 2000, 1), "q", 2000, 0, good)
    body = _raw(m.CommitPart("r", m.part_key("r", 2000, 0), "q", 2000, 0, good))
    body["entries"] = good + b"\x00"
    with pytest.raises(m.MessageError, match="commit-part: packed entries: truncated"):
        m.decode(msgpack.packb(body, use_bin_type=True))
    with pytest.raises(m.MessageError, match="op 'start'"):
        m.JobMarker("r", "q", "job", "start")


def test_prune_request_never_asks_to_remove_everything() -> None:
    m.PruneRequest("r", "q", "gold", 0, 0, 7, 0, 0, 0, False)
    with pytest.raises(m.MessageError, match="no keep rule"):
        m.PruneRequest("r", "q", "gold", 0, 0, 0, 0, 0, 0, False)
    with pytest.raises(m.MessageError, match="negative"):
        m.PruneRequest("r", "q", "gold", 3, 0, -1, 0, 0, 0, False)
    with pytest.raises(m.MessageError, match="policy is empty"):
        m.PruneRequest("r", "q", "", 3, 0, 0, 0, 0, 0, False)
    # the same checks on the way in: a hostile body is refused before any handler
    body = _raw(m.PruneRequest("r", "q", "gold", 1, 0, 0, 0, 0, 0, True))
    body["keep_last"] = 0
    with pytest.raises(m.MessageError, match="no keep rule"):
        m.decode(msgpack.packb(body, use_bin_type=True))


def test_have_reply_of_a_writer_before_chunk_streams_is_understood() -> None:
    """Rolling upgrade, proxies first: a version 1 have-reply (no stream) still decodes,
    as a reply without a chunk stream; versions nobody knows are refused by name."""
    body = {"k": "have-reply", "v": 1, "query_id": "q", "present": [True, False]}
    got = m.decode(msgpack.packb(body, use_bin_type=True), m.HaveReply)
    assert got == m.HaveReply("q", [True, False], "", "", "")
    for bad in (4, 0, True, "1", [1]):
        with pytest.raises(m.MessageError, match=r"unsupported version .* \(supported: 3, 1, 2\)"):
            m.decode(msgpack.packb({**body, "v": bad}, use_bin_type=True))
    # an old writer's fields only: a v1 body with v2 fields is not a v1 message
    with pytest.raises(m.MessageError, match="unexpected field"):
        m.decode(msgpack.packb({**body, "data_addr": "h:1"}, use_bin_type=True))


def test_have_reply_of_a_writer_before_stream_tls_offers_plain_tcp() -> None:
    body = {"k": "have-reply", "v": 2, "query_id": "q", "present": [True]}
    v2 = {**body, "data_addr": "h:7", "data_token": "t"}
    got = m.decode(msgpack.packb(v2, use_bin_type=True), m.HaveReply)
    assert got == m.HaveReply("q", [True], "h:7", "t", "")
    with pytest.raises(m.MessageError, match="unexpected field"):
        m.decode(msgpack.packb({**v2, "data_pin": "ab" * 32}, use_bin_type=True))


@pytest.mark.parametrize("pin", ["ab", "AB" * 32, "zz" * 32, "ab" * 33])
def test_have_reply_pin_is_a_sha256_in_hex_or_nothing(pin: str) -> None:
    with pytest.raises(m.MessageError, match="data_pin"):
        m.HaveReply("q", [], "h:1", "t", pin)
    good = m.HaveReply("q", [], "h:1", "t", "ab" * 32)
    assert m.decode(m.encode(good)) == good


def test_commit_request_version_2_or_later_is_required() -> None:
    req = m.CommitRequest("r", "q", "j", "vc", "u", "vm-1", "vm", b"", "complete", 1.0, [], [])
    body = _raw(req)
    assert body["v"] == 3
    body["v"] = 1
    with pytest.raises(m.MessageError, match="unsupported version 1"):
        m.decode(msgpack.packb(body, use_bin_type=True))


def test_commit_request_of_a_coordinator_before_staged_entries_is_understood() -> None:
    """Rolling upgrade, writers first: a version 2 commit (entries inline or in parts,
    no staged tasks, no planned ranges) decodes as one whose coverage is not checked."""
    disk = m.DiskCommit(7, 4096, "c", "", [(0, b"")], {"label": "d"}, 2)
    req = m.CommitRequest("r", "q", "j", "vc", "u", "vm-1", "vm", b"", "complete", 1.0, [disk], [])
    body = _raw(req)
    body["v"] = 2
    for d in body["disks"]:
        del d["tasks"], d["planned"]
    got = m.decode(msgpack.packb(body, use_bin_type=True), m.CommitRequest)
    assert got == req
    assert got.disks[0].tasks == [] and got.disks[0].planned is None
    body["disks"][0]["tasks"] = []  # a v2 body with a v3 field is not a v2 message
    with pytest.raises(m.MessageError, match="unexpected field"):
        m.decode(msgpack.packb(body, use_bin_type=True))


def test_task_result_of_a_proxy_that_sends_entries_inline_is_understood() -> None:
    """Rolling upgrade, coordinator first: a version 2 result carries its entries inline."""
    r = m.TaskResult("t", "j", "u", 1, True, "", [(0, b"\x01" * 32)], 1, 0, 0, 1, 0.1, "p")
    body = _raw(r)
    body["v"] = 2
    del body["entries_digest"], body["entries_count"]
    got = m.decode(msgpack.packb(body, use_bin_type=True), m.TaskResult)
    assert got == r and not got.staged


def test_task_result_entries_are_staged_or_inline_never_both() -> None:
    with pytest.raises(m.MessageError, match="both staged"):
        m.TaskResult(
            "t", "j", "u", 1, True, "", [(0, b"")], 1, 0, 0, 1, 0.1, "p", "", b"\x02" * 32, 1
        )
    with pytest.raises(m.MessageError, match="entries_digest of 3 bytes"):
        m.TaskResult("t", "j", "u", 1, True, "", [], 1, 0, 0, 1, 0.1, "p", "", b"abc", 1)


def test_task_entries_are_checked() -> None:
    good = pack_entries([(0, b"\x01" * 32)])
    m.TaskEntries("r", "q", "j", "u", 1, "t", good)
    with pytest.raises(m.MessageError, match="truncated"):
        m.TaskEntries("r", "q", "j", "u", 1, "t", good[:-1])
    with pytest.raises(m.MessageError, match="task_id must not be empty"):
        m.TaskEntries("r", "q", "j", "u", 1, "", good)


def _v1_task(task: m.BackupTask) -> dict[str, Any]:
    """The body an old coordinator sends for ``task``: version 1, the disk spelled out flat."""
    body = _raw(task)
    return {**{k: v for k, v in body.items() if k != "disk"}, "v": 1, **body["disk"]}


@given(STRATEGIES[m.BackupTask])
@settings(max_examples=200)
def test_task_of_a_coordinator_before_the_nested_disk_is_understood(task: m.BackupTask) -> None:
    """Rolling upgrade, proxies first: a version 1 task (flat disk fields) decodes as the
    version 2 task an upgraded coordinator would send."""
    assert _raw(task)["v"] == 2
    v1 = _v1_task(task)
    assert "disk" not in v1 and v1["disk_file"] == task.disk.disk_file
    assert m.decode(msgpack.packb(v1, use_bin_type=True), m.BackupTask) == task


def test_task_v1_is_checked_as_strictly_as_v2() -> None:
    disk = SnapshotDisk("vc", "dc", "esx", "ds", "vm-1", "snapshot-1", "[ds] a/a.vmdk", 4096)
    v1 = _v1_task(m.BackupTask("t", "j", "u", "vm", 2000, disk, 1024, 1, [(0, 4096)], "r"))
    for mutate, needle in [
        (lambda b: b.pop("capacity"), "task v1: missing field 'capacity'"),
        (lambda b: b.update(disk={}), "task v1: unexpected field(s) 'disk'"),
        (lambda b: b.update(capacity="big"), "task.disk.capacity: expected int, got str"),
        (lambda b: b.update(extra=1), "task: unexpected field(s) 'extra'"),
        (lambda b: b.pop("ranges"), "task: missing field 'ranges'"),
    ]:
        body = dict(v1)
        mutate(body)
        with pytest.raises(m.MessageError) as exc:
            m.decode(msgpack.packb(body, use_bin_type=True))
        assert needle in str(exc.value)
    with pytest.raises(m.MessageError, match=r"unsupported version 3 \(supported: 2, 1\)"):
        m.decode(msgpack.packb({**v1, "v": 3}, use_bin_type=True))


@pytest.mark.parametrize(
    ("msg", "kind"),
    [
        (m.ChunkBatch("b", "t", "r", [(bytes(32), 1, False, b"x")], "job-1"), m.ChunkBatch),
        (m.CommitPart("c", m.part_key("c", 2000, 0), "r", 2000, 0, b"", "job-1"), m.CommitPart),
        (m.PruneRequest("p", "r", "gold", 1, 0, 0, 0, 0, 0, False, "job-1"), m.PruneRequest),
    ],
)
def test_messages_of_senders_before_job_ids_are_understood(msg: m.Message, kind: type) -> None:
    """Rolling upgrade, writers first: a version-1 chunk batch, commit part or prune
    request (no job id) decodes with job id ""; a version-1 body with a job id is no
    version-1 message."""
    body = msgpack.unpackb(m.encode(msg), raw=False)
    assert body["v"] == 2 and body.pop("job_id") == "job-1"
    v1 = {**body, "v": 1}
    got = m.decode(msgpack.packb(v1, use_bin_type=True), kind)
    assert got == dataclasses.replace(msg, job_id="")
    with pytest.raises(m.MessageError, match="unexpected field"):
        m.decode(msgpack.packb({**v1, "job_id": "x"}, use_bin_type=True), kind)


@pytest.mark.parametrize("level", [MIN_LEVEL - 1, MAX_LEVEL + 1, 10**9])
def test_a_task_with_a_compression_level_zstd_has_not_is_refused(level: int) -> None:
    disk = SnapshotDisk("vc", "dc", "esx", "ds", "vm-1", "snapshot-1", "[ds] a/a.vmdk", 4096)
    body = _raw(m.BackupTask("t", "j", "u", "vm", 2000, disk, 1024, 1, [(0, 4096)], "r"))
    body["compression_level"] = level
    with pytest.raises(m.MessageError, match=f"task: compression level {level} outside"):
        m.decode(msgpack.packb(body, use_bin_type=True))
    body["compression_level"] = MIN_LEVEL  # a fast level crosses as it is
    assert m.decode(msgpack.packb(body, use_bin_type=True)).compression_level == MIN_LEVEL
