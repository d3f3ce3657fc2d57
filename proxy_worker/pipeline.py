"""One task through the pipeline: read -> zero check -> hash -> have-query -> compress -> send.

Three threads per task plus a shared worker pool, each stage one window ahead of the next:
- the task's thread reads chunks in disk order (holes the transport reports are never
  read), drops zero chunks, and hands non-zero ones to the pool for hashing, in windows;
- a query thread takes each hashed window, asks the owning writers which ids they hold and
  has the pool compress only the unknown chunks;
- a sender thread packs the compressed chunks into per-shard batches, publishes them and
  collects the writers' acks.
So the have-query round trip of one window overlaps reading and hashing of the next and
packing and publishing of the previous one. Hashing and zstd release the GIL, so the pool
keeps both cores busy. Every chunk byte in flight is charged to the proxy's MemoryBudget
before it is read.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import cast

from common.chunk import chunk_id, compress, is_zero
from common.logging import in_log_context
from common.sharding import shard_of
from proxy_worker.budget import MemoryBudget, TaskBudget
from proxy_worker.errors import ProxyError, TaskError, TaskWithdrawnError
from proxy_worker.transports.base import DiskReader, Extent
from proxy_worker.writer_client import PendingBatch, WriterLink


@dataclass(frozen=True)
class PipelineConfig:
    chunk_size: int
    compression_level: int
    n_shards: int
    id_key: bytes | None = None
    batch_bytes: int = 4 << 20
    have_batch: int = 256
    window_bytes: int = 32 << 20  # chunk bytes handed to the sender at once
    partial_cap: int = 32 << 20  # payload bytes a task may keep in unsent partial batches
    # Encoded bytes a task may have at the publisher before the broker confirms them: the
    # encoded message and pika's frames are copies of the payload outside the chunk budget.
    unconfirmed_cap: int = 8 << 20


@dataclass
class TaskStats:
    entries: dict[int, bytes] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_zero: int = 0
    bytes_known: int = 0
    bytes_sent: int = 0  # payload bytes (after compression) published to writers
    bytes_raw_sent: int = 0
    chunks_zero: int = 0
    chunks_known: int = 0
    chunks_sent: int = 0
    seconds: float = 0.0

    def sorted_entries(self) -> list[tuple[int, bytes]]:
        return sorted(self.entries.items())


def plan_chunks(
    ranges: list[tuple[int, int]], chunk_size: int, capacity: int
) -> list[tuple[int, int, int]]:
    """(chunk index, offset, length) for every chunk of the ranges; TaskError on ranges that
    are not chunk aligned, overlap or leave the disk."""
    if chunk_size <= 0 or chunk_size & (chunk_size - 1):
        raise TaskError(f"chunk_size {chunk_size} is not a positive power of two")
    out: list[tuple[int, int, int]] = []
    seen: set[int] = set()
    for off, ln in ranges:
        end = off + ln
        if off < 0 or ln <= 0 or end > capacity:
            raise TaskError(f"range ({off}, {ln}) is empty or outside capacity {capacity}")
        if off % chunk_size or (ln % chunk_size and end != capacity):
            raise TaskError(f"range ({off}, {ln}) is not aligned to chunk size {chunk_size}")
        for o in range(off, end, chunk_size):
            idx = o // chunk_size
            if idx in seen:
                raise TaskError(f"ranges overlap at chunk {idx}")
            seen.add(idx)
            out.append((idx, o, min(chunk_size, end - o)))
    return out


@dataclass
class _Chunk:
    index: int
    length: int
    data: bytes | bytearray | None
    hashed: Future[bytes]


_END = object()


class TaskPipeline:
    def __init__(
        self,
        reader: DiskReader,
        link: WriterLink,
        pool: Executor,
        budget: MemoryBudget,
        cfg: PipelineConfig,
        task_id: str,
        on_read: Callable[[int], None] | None = None,
        *,
        job_id: str = "",
    ) -> None:
        self.reader = reader
        self.link = link
        self.pool = pool
        self.cfg = cfg
        self.task_id = task_id
        self.job_id = job_id
        self.on_read = on_read
        self.abort = threading.Event()
        self.budget = TaskBudget(budget, self.abort)
        self.stats = TaskStats()
        self._windows: queue.Queue[object] = queue.Queue(maxsize=1)  # reader -> query
        self._answered: queue.Queue[object] = queue.Queue(maxsize=1)  # query -> sender
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ended: set[queue.Queue[object]] = set()  # inboxes whose end was taken

    # --- entry point -----------------------------------------------------------------
    def run(self, ranges: list[tuple[int, int]], capacity: int) -> TaskStats:
        t0 = time.monotonic()
        plan = plan_chunks(ranges, self.cfg.chunk_size, capacity)
        tag = self.task_id[:12]
        # the stages log with the task's context (task, job, vm, disk)
        stages = [
            threading.Thread(target=in_log_context(self._stage), args=(loop,), name=f"{what}-{tag}")
            for what, loop in (("query", self._query_loop), ("send", self._send_loop))
        ]
        for t in stages:
            t.start()
        try:
            self._read(plan)
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._put(self._windows, _END)
            for t in stages:
                t.join()
            self.budget.release_all()
        if self._error is not None:
            raise self._error
        self.stats.seconds = time.monotonic() - t0
        return self.stats

    def cancel(self, reason: str) -> None:
        """Stop the task from any thread: ``run`` raises TaskWithdrawnError (never returns
        partial stats as a result)."""
        self._fail(TaskWithdrawnError(reason))

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self.abort.set()

    def _put(self, q: queue.Queue[object], item: object) -> None:
        while True:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.abort.is_set() and item is not _END:
                    raise InterruptedError("next stage stopped") from None
                if self.abort.is_set():  # drop a stuck window so the next stage sees the end
                    with contextlib.suppress(queue.Empty):
                        q.get_nowait()

    # --- stage 1: read, zero check, hash (task thread) ----------------------------------
    def _zero_chunks(self, plan: list[tuple[int, int, int]]) -> set[int]:
        """Chunks entirely inside ranges the transport reports as reading zero."""
        holes: list[Extent] = []
        # one extents call per contiguous run of the plan
        runs: list[tuple[int, int]] = []  # (offset, length)
        for _, off, ln in plan:
            if runs and sum(runs[-1]) == off:
                runs[-1] = (runs[-1][0], runs[-1][1] + ln)
            else:
                runs.append((off, ln))
        for off, ln in runs:
            holes.extend(e for e in self.reader.extents(off, ln) if not e.data)
        zero: set[int] = set()
        if not holes:
            return zero
        i = 0
        for idx, off, ln in plan:  # plan and holes are both in disk order
            while i < len(holes) and holes[i].end <= off:
                i += 1
            if i < len(holes) and holes[i].offset <= off and off + ln <= holes[i].end:
                zero.add(idx)
        return zero

    def _read(self, plan: list[tuple[int, int, int]]) -> None:
        st = self.stats
        zero = self._zero_chunks(plan)
        to_read: list[tuple[int, int, int]] = []
        for idx, off, ln in plan:
            if idx in zero:
                st.entries[idx] = b""
                st.bytes_zero += ln
                st.chunks_zero += 1
            else:
                to_read.append((idx, off, ln))

        def charged() -> Iterator[tuple[int, int]]:
            for _, off, ln in to_read:
                if self.abort.is_set():
                    return
                self.budget.acquire(ln)  # before the request is issued
                yield off, ln

        key = self.cfg.id_key
        window: list[_Chunk] = []
        window_bytes = 0
        for (idx, _off, ln), (_o, data) in zip(
            to_read, self.reader.read_many(charged()), strict=False
        ):
            if self.abort.is_set():
                break
            st.bytes_read += ln
            if self.on_read is not None:
                self.on_read(ln)
            if len(data) != ln:
                raise ProxyError(f"transport returned {len(data)} bytes for a {ln}-byte chunk")
            if is_zero(data):
                st.entries[idx] = b""
                st.bytes_zero += ln
                st.chunks_zero += 1
                self.budget.release(ln)
                continue
            window.append(_Chunk(idx, ln, data, self.pool.submit(chunk_id, data, key)))
            window_bytes += ln
            if window_bytes >= self.cfg.window_bytes:
                self._put(self._windows, window)
                window, window_bytes = [], 0
        if window:
            self._put(self._windows, window)

    # --- stage 2: have-query, compress (query thread) -----------------------------------
    def _stage(self, loop: Callable[[], None]) -> None:
        inbox = self._windows if loop == self._query_loop else self._answered
        try:
            loop()
        except BaseException as exc:
            self._fail(exc)
            # Keep draining so the stage before never blocks on a full queue, unless the
            # loop had its end already: the sender fails after it (the last acks), and
            # waiting for a second end would hang the task, and the proxy, for good.
            if inbox not in self._ended:
                while inbox.get() is not _END:
                    pass
            if loop == self._query_loop:
                self._put(self._answered, _END)

    def _take(self, inbox: queue.Queue[object], timeout: float | None = None) -> object:
        """The next item of a stage's inbox; notes when it was the end."""
        item = inbox.get(timeout=timeout)
        if item is _END:
            self._ended.add(inbox)
        return item

    def _query_loop(self) -> None:
        cfg, st = self.cfg, self.stats
        seen: set[bytes] = set()  # ids of this task already queried
        while True:
            item = self._take(self._windows)
            if item is _END:
                break
            if self.abort.is_set():
                continue
            window = cast(list[_Chunk], item)
            fresh: list[tuple[_Chunk, bytes]] = []
            by_shard: dict[int, list[bytes]] = {}
            for c in window:
                cid = c.hashed.result()
                st.entries[c.index] = cid
                if cid in seen:  # duplicate inside the task: counted as known, sent once
                    self._known(c)
                    continue
                seen.add(cid)
                fresh.append((c, cid))
                by_shard.setdefault(shard_of(cid, cfg.n_shards), []).append(cid)
            present: dict[bytes, bool] = {}
            longest = max((len(v) for v in by_shard.values()), default=0)
            for i in range(0, longest, cfg.have_batch):  # every shard's writer asked at once
                parts = {
                    shard: sids[i : i + cfg.have_batch]
                    for shard, sids in by_shard.items()
                    if i < len(sids)
                }
                for shard, answer in self.link.have(parts).items():
                    present.update(zip(parts[shard], answer, strict=True))
            jobs: list[tuple[_Chunk, bytes, Future[tuple[bytes | bytearray, bool]]]] = []
            for c, cid in fresh:
                if present[cid]:
                    self._known(c)
                else:
                    assert c.data is not None  # read, not yet handed to the compressor
                    fut = self.pool.submit(compress, c.data, cfg.compression_level)
                    c.data = None  # the future holds it until compressed
                    jobs.append((c, cid, fut))
            if jobs:
                self._put(self._answered, jobs)
        self._put(self._answered, _END)

    def _known(self, c: _Chunk) -> None:
        self.stats.bytes_known += c.length
        self.stats.chunks_known += 1
        self.budget.release(c.length)
        c.data = None

    # --- stage 3: pack, send, collect acks (sender thread) ------------------------------
    def _send_loop(self) -> None:
        cfg, st = self.cfg, self.stats
        partial: dict[int, PendingBatch] = {}
        partial_bytes = 0
        inflight: list[PendingBatch] = []

        def flush(shard: int) -> None:
            nonlocal partial_bytes
            b = partial.pop(shard)
            partial_bytes -= b.payload_bytes
            for old in inflight:  # oldest first: wait for confirms until the copy fits
                if sum(x.payload_bytes for x in inflight if not x.confirm.done()) <= max(
                    0, cfg.unconfirmed_cap - b.payload_bytes
                ):
                    break
                with contextlib.suppress(Exception):  # check() reports a failed publish
                    old.confirm.result(timeout=self.link.timeout)
            inflight.append(self.link.send(b))

        def reap(wait: float) -> None:
            for b in list(inflight):
                if self.link.check(b, wait) is not None:
                    inflight.remove(b)
                    self.budget.release(b.payload_bytes)
                    wait = 0.0

        while True:
            try:
                item = self._take(self._answered, timeout=0.05)
            except queue.Empty:
                # The reader is slow or waits for memory: what this task holds in partial
                # batches and unacked sends is what may free it, so push it out now.
                if not self.abort.is_set():
                    for shard in list(partial):
                        flush(shard)
                    reap(0.0)
                continue
            if item is _END:
                break
            if self.abort.is_set():
                continue
            jobs = cast(list[tuple[_Chunk, bytes, Future[tuple[bytes | bytearray, bool]]]], item)
            for c, cid, fut in jobs:
                payload, compressed = fut.result()
                self.budget.release(c.length - len(payload))  # keep only the payload charged
                shard = shard_of(cid, cfg.n_shards)
                b = partial.get(shard)
                if b is None:
                    b = partial[shard] = PendingBatch(shard, self.task_id, [], 0, self.job_id)
                b.chunks.append((cid, c.length, compressed, payload))
                b.payload_bytes += len(payload)
                partial_bytes += len(payload)
                st.bytes_sent += len(payload)
                st.bytes_raw_sent += c.length
                st.chunks_sent += 1
                if b.payload_bytes >= cfg.batch_bytes:
                    flush(shard)
            if partial_bytes > cfg.partial_cap:
                for shard in list(partial):
                    flush(shard)
            reap(0.0)
        if self.abort.is_set():
            return
        for shard in list(partial):
            flush(shard)
        while inflight:
            reap(1.0)
