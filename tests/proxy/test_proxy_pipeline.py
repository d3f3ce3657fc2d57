"""The pipeline on the real broker into the real writer service and its repository."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.amqp import BrokerParams, Publisher, ReplyQueue
from proxy_worker.budget import MemoryBudget
from proxy_worker.errors import TaskError, WriterError, WriterRefusedError
from proxy_worker.pipeline import PipelineConfig, TaskPipeline, plan_chunks
from proxy_worker.transports.file import FileTransport
from proxy_worker.writer_client import WriterLink
from tests.proxy.proxy_helpers import MiB, SparseDisk, make_sparse_disk
from tests.proxy.writer_probe import ProbedWriter
from tests.small_fs import small_filesystem

pytestmark = pytest.mark.integration
CHUNK = 256 * 1024
SHARDS = 4


@pytest.fixture
def env(broker: BrokerParams, tmp_path: Path) -> Iterator[dict[str, object]]:
    writer = ProbedWriter(broker, tmp_path / "repo", SHARDS, chunk_size=CHUNK)
    pub = Publisher(broker, name="proxy-test")
    replies = ReplyQueue(broker, name="proxy-test-replies")
    link = WriterLink(pub, replies, persistent_chunks=False, timeout=2.0)
    pool = ThreadPoolExecutor(2)
    yield {"writer": writer, "link": link, "pool": pool}
    pool.shutdown()
    replies.close()
    pub.close()
    writer.close()


def _disk_with_duplicates(tmp_path: Path) -> SparseDisk:
    d = make_sparse_disk(tmp_path, capacity=12 * MiB + 5000)
    # the same 256 KiB block at two chunk-aligned places: sent once
    block = random.Random(3).randbytes(CHUNK)
    data = bytearray(d.data)
    with open(d.path, "r+b") as fh:
        for off in (6 * MiB, 7 * MiB):
            fh.seek(off)
            fh.write(block)
            data[off : off + CHUNK] = block
    d.data = bytes(data)
    return d


def _run(env: dict[str, object], d: SparseDisk, budget: MemoryBudget | None = None, **kw: int):
    cfg = PipelineConfig(
        chunk_size=CHUNK,
        compression_level=3,
        n_shards=SHARDS,
        batch_bytes=kw.pop("batch_bytes", 1 * MiB),
        have_batch=kw.pop("have_batch", 7),
        window_bytes=kw.pop("window_bytes", 2 * MiB),
        partial_cap=kw.pop("partial_cap", 2 * MiB),
    )
    budget = budget or MemoryBudget(64 * MiB)
    with FileTransport(d.settings).open(d.source) as r:
        p = TaskPipeline(r, env["link"], env["pool"], budget, cfg, "task-1")  # type: ignore[arg-type]
        return p.run([(0, d.source.capacity)], d.source.capacity)


def test_every_chunk_lands_exactly(env: dict[str, object], tmp_path: Path) -> None:
    d = _disk_with_duplicates(tmp_path)
    writer: ProbedWriter = env["writer"]  # type: ignore[assignment]
    st = _run(env, d)
    cap = d.source.capacity
    n_chunks = -(-cap // CHUNK)
    assert sorted(st.entries) == list(range(n_chunks))
    for idx, cid in st.entries.items():
        want = d.data[idx * CHUNK : min(cap, (idx + 1) * CHUNK)]
        if cid == b"":
            assert want == bytes(len(want))
        else:
            assert writer.repo.read_chunk(cid) == want
    assert st.bytes_zero + st.bytes_known + st.bytes_raw_sent == cap
    assert st.bytes_read < cap // 2  # holes were never read
    assert st.chunks_known == 1  # the duplicate block, sent once
    assert st.bytes_sent == writer.payload_bytes
    # a second run of the same disk sends nothing: every id is known at the writers
    again = _run(env, d)
    assert again.entries == st.entries
    assert again.bytes_sent == 0 and again.chunks_sent == 0
    assert again.bytes_known == st.bytes_known + st.bytes_raw_sent


def test_lost_chunk_ack_is_resent(env: dict[str, object], tmp_path: Path) -> None:
    d = make_sparse_disk(tmp_path, capacity=4 * MiB)
    writer: ProbedWriter = env["writer"]  # type: ignore[assignment]
    writer.drop_batches = 2
    st = _run(env, d)
    for idx, cid in st.entries.items():
        if cid:
            assert writer.repo.read_chunk(cid) == d.data[idx * CHUNK : (idx + 1) * CHUNK]
    assert writer.batches >= 2 + 1


def test_memory_stays_within_budget(env: dict[str, object], tmp_path: Path) -> None:
    d = make_sparse_disk(tmp_path, capacity=24 * MiB)
    with open(d.path, "r+b") as fh:  # fill it so every chunk is read
        fh.write(random.Random(5).randbytes(24 * MiB))
    budget = MemoryBudget(6 * CHUNK)
    st = _run(env, d, budget, window_bytes=2 * CHUNK, partial_cap=2 * CHUNK, batch_bytes=2 * CHUNK)
    assert st.bytes_read == 24 * MiB
    assert 0 < budget.peak <= 6 * CHUNK
    assert budget.used == 0


def test_writer_gone_fails_the_task(broker: BrokerParams, tmp_path: Path) -> None:
    d = make_sparse_disk(tmp_path, capacity=2 * MiB)
    pub = Publisher(broker, name="proxy-test")
    replies = ReplyQueue(broker, name="proxy-test-replies")
    link = WriterLink(pub, replies, persistent_chunks=False, timeout=1.0, attempts=1)
    budget = MemoryBudget(16 * MiB)
    try:
        # no shard queue exists: the publish is returned unroutable -> writer error
        with ThreadPoolExecutor(2) as pool, pytest.raises(WriterError):
            _run({"link": link, "pool": pool}, d, budget)
    finally:
        replies.close()
        pub.close()
    assert budget.used == 0  # a failed task gives its memory back


def test_full_repository_fails_the_task_and_frees_its_memory(
    broker: BrokerParams, tmp_path: Path
) -> None:
    """The writer refuses the last batches (its disk is full) after the reader is done:
    the task fails with the writer's cause, it does not wait for an end that never comes
    (which hung the proxy for good)."""
    d = make_sparse_disk(tmp_path, capacity=12 * MiB)
    with open(d.path, "r+b") as fh:
        fh.write(random.Random(8).randbytes(12 * MiB))  # incompressible: 12 MiB to store
    with small_filesystem(tmp_path / "repo", 4 * MiB):
        writer = ProbedWriter(broker, tmp_path / "repo", SHARDS, chunk_size=CHUNK)
        pub = Publisher(broker, name="proxy-test")
        replies = ReplyQueue(broker, name="proxy-test-replies")
        link = WriterLink(pub, replies, persistent_chunks=False, timeout=5.0)
        budget = MemoryBudget(64 * MiB)
        outcome: list[BaseException | None] = []
        env: dict[str, object] = {"link": link}

        def run() -> None:
            try:
                # one window and no batch sent before the reader is done: every refusal
                # comes after the sender took the end of its inbox
                big = 64 * MiB
                _run(env, d, budget, batch_bytes=big, window_bytes=big, partial_cap=big)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        try:
            with ThreadPoolExecutor(2) as pool:
                env["pool"] = pool
                t = threading.Thread(target=run, daemon=True)
                t.start()
                t.join(120)  # a hang is the defect; 120 s is far beyond any run here
                assert not t.is_alive(), "the task hung after the writer refused its batches"
        finally:
            replies.close()
            pub.close()
            writer.close()
    assert len(outcome) == 1 and isinstance(outcome[0], WriterRefusedError), outcome
    err = outcome[0]
    assert err.cause == "repository_full" and err.permanent
    assert "repository full on writer test-writer (shard " in str(err)
    assert budget.used == 0


def test_plan_rejects_bad_ranges() -> None:
    assert plan_chunks([(0, 10)], 4, 10) == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    with pytest.raises(TaskError, match="aligned"):
        plan_chunks([(2, 4)], 4, 10)
    with pytest.raises(TaskError, match="aligned"):
        plan_chunks([(0, 6)], 4, 10)
    with pytest.raises(TaskError, match="outside capacity"):
        plan_chunks([(8, 4)], 4, 10)
    with pytest.raises(TaskError, match="overlap"):
        plan_chunks([(0, 8), (4, 4)], 4, 10)
    with pytest.raises(TaskError, match="power of two"):
        plan_chunks([(0, 6)], 6, 10)
