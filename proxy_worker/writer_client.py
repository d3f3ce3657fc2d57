"""The proxy's side of the writer protocol: have-queries and chunk batches on the writer's
chunk stream where its have-replies offer one, through the shard queues otherwise (and for
a shard's first query and its periodic refresh); answers on the stream or the proxy's
exclusive reply queue; re-sent when an answer does not come. And, once a task's chunks
are durable, its map entries staged at a writer: on a chunk stream when one is known (no
broker round trip), through the commits queue otherwise."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from common import causes
from common.amqp import EXCHANGE_SHARDS, QUEUE_COMMITS, Publisher, PublishError, ReplyQueue
from common.logging import get_logger
from common.messages import (
    ChunkAck,
    ChunkBatch,
    CommitReply,
    HaveQuery,
    HaveReply,
    Message,
    TaskEntries,
)
from common.packed_entries import entries_digest, pack_entries
from common.sharding import shard_routing_key
from proxy_worker import metrics
from proxy_worker.chunk_stream_client import Endpoint, WriterStreams
from proxy_worker.errors import WriterError, WriterRefusedError

log = get_logger(__name__)

ChunkTuple = tuple[bytes, int, bool, bytes | bytearray]  # (id, raw_len, compressed, payload)


@dataclass
class PendingBatch:
    shard: int
    task_id: str
    chunks: list[ChunkTuple]
    payload_bytes: int
    job_id: str = ""  # of the task: the writer's log lines name it
    batch_id: str = ""
    reply: Future[Message] = field(default_factory=Future)
    confirm: Future[None] = field(default_factory=Future)
    sent_at: float = 0.0
    attempts: int = 0


class WriterLink:
    """Shared by the proxy's tasks (thread safe: Publisher and ReplyQueue are)."""

    def __init__(
        self,
        publisher: Publisher,
        replies: ReplyQueue,
        *,
        persistent_chunks: bool,
        timeout: float,
        attempts: int = 3,
        streams: WriterStreams | None = None,
        stream_refresh: float = 60.0,
    ) -> None:
        self.publisher = publisher
        self.replies = replies
        self.persistent_chunks = persistent_chunks
        self.timeout = timeout
        self.attempts = attempts
        self.streams = streams
        # shard -> the chunk stream its writer last offered, and when.
        # Have-queries of a shard go through the broker again after ``stream_refresh``
        # seconds: where several writers consume one shard queue (scaled out), the broker
        # hands each refresh to one of them, so proxies spread over them.
        self.endpoints: dict[int, Endpoint] = {}
        self._learned: dict[int, float] = {}
        self.stream_refresh = stream_refresh

    # --- have-queries ------------------------------------------------------------------
    def have(self, by_shard: dict[int, list[bytes]]) -> dict[int, list[bool]]:
        """Ask every shard's writer at once which ids it holds; re-ask on a lost reply.
        On the writer's chunk stream where it offered one, else through the broker."""
        left = dict(by_shard)
        out: dict[int, list[bool]] = {}
        for attempt in range(1, self.attempts + 1):
            waits: dict[int, tuple[str, Future[Message]]] = {}
            for shard, ids in left.items():
                qid = uuid.uuid4().hex
                waits[shard] = (qid, self._ask(shard, qid, ids))
            deadline = time.monotonic() + self.timeout
            for shard, (qid, fut) in waits.items():
                try:
                    rep = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:  # a time-out, a lost reply queue or chunk stream
                    self._forget(qid)
                    continue
                if not isinstance(rep, HaveReply) or len(rep.present) != len(left[shard]):
                    raise WriterError(f"shard {shard} answered a have-query with {rep!r:.200}")
                out[shard] = list(rep.present)
                if rep.data_addr:
                    offered = Endpoint(rep.data_addr, rep.data_token, rep.data_pin)
                    if self.endpoints.get(shard) != offered:
                        self.endpoints[shard] = offered
                        self._learned[shard] = time.monotonic()
                else:
                    self.endpoints.pop(shard, None)
            left = {s: ids for s, ids in left.items() if s not in out}
            if not left:
                return out
            log.warning("have_reply_timeout", shards=sorted(left), attempt=attempt)
        raise WriterError(f"no have-reply from shards {sorted(left)} after {self.attempts} tries")

    def _ask(self, shard: int, qid: str, ids: list[bytes]) -> Future[Message]:
        endpoint = self.endpoints.get(shard)
        if endpoint is not None and (
            time.monotonic() - self._learned.get(shard, 0.0) > self.stream_refresh
        ):
            self._learned[shard] = time.monotonic()  # this query goes through the broker
            endpoint = None
        if self.streams is not None and endpoint is not None:
            fut: Future[Message] = Future()
            if self.streams.send(endpoint, HaveQuery(query_id=qid, reply_to="", ids=ids), fut):
                metrics.PROXY_HAVE_QUERIES.labels(path="direct").inc()
                return fut
        fut = self.replies.expect(qid)
        msg = HaveQuery(query_id=qid, reply_to=self.replies.name, ids=ids)
        try:
            self.publisher.publish(
                EXCHANGE_SHARDS, shard_routing_key(shard), msg, persistent=False
            ).result(timeout=self.timeout)
        except (PublishError, FutureTimeout) as exc:
            self.replies.forget(qid)
            raise WriterError(f"have-query to shard {shard}: {exc}") from exc
        metrics.PROXY_HAVE_QUERIES.labels(path="broker").inc()
        return fut

    def _forget(self, key: str) -> None:
        self.replies.forget(key)
        if self.streams is not None:
            self.streams.forget(key)

    # --- a task's map entries ----------------------------------------------------------
    def stage_entries(
        self,
        task_id: str,
        job_id: str,
        vm_uuid: str,
        disk_key: int,
        entries: list[tuple[int, bytes]],
    ) -> tuple[bytes, int]:
        """Have a writer stage the task's entries durably; return (digest, count) for the
        task's result. Re-sent when no answer comes (staging is idempotent); after a lost
        stream, through the broker."""
        packed = pack_entries(entries)
        last = "no reply"
        for attempt in range(1, self.attempts + 1):
            key = uuid.uuid4().hex
            try:
                fut = self._send_entries(key, job_id, vm_uuid, disk_key, task_id, packed)
                rep = fut.result(timeout=self.timeout)
            except (PublishError, FutureTimeout) as exc:  # StreamLost is a TimeoutError
                self._forget(key)
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("task_entries_no_reply", attempt=attempt, error=last)
                continue
            if not isinstance(rep, CommitReply):
                raise WriterError(f"task entries answered with {rep!r:.200}")
            if not rep.ok:
                raise WriterRefusedError(
                    f"writer refused the task's entries: {rep.error}", causes.REPOSITORY_ERROR
                )
            metrics.PROXY_ENTRIES_STAGED.inc(len(entries))
            return entries_digest(packed), len(entries)
        raise WriterError(f"task entries not staged after {self.attempts} tries: {last}")

    def _send_entries(
        self, key: str, job_id: str, vm_uuid: str, disk_key: int, task_id: str, packed: bytes
    ) -> Future[Message]:
        """On the stream of any writer the proxy knows (every writer stages in the one shared
        repository); else through the commits queue, confirmed."""
        endpoint = next(iter(self.endpoints.values()), None)
        if self.streams is not None and endpoint is not None:
            fut: Future[Message] = Future()
            msg = TaskEntries(key, "", job_id, vm_uuid, disk_key, task_id, packed)
            if self.streams.send(endpoint, msg, fut):
                return fut
        fut = self.replies.expect(key)
        msg = TaskEntries(key, self.replies.name, job_id, vm_uuid, disk_key, task_id, packed)
        self.publisher.publish_sync(
            "", QUEUE_COMMITS, msg, correlation_id=key, timeout=self.timeout
        )
        return fut

    # --- chunk batches -----------------------------------------------------------------
    def send(self, batch: PendingBatch) -> PendingBatch:
        """Send (or re-send) a batch; its ``reply`` future gets the ChunkAck."""
        batch.attempts += 1
        if batch.batch_id:
            self._forget(batch.batch_id)
        batch.batch_id = uuid.uuid4().hex
        if self.streams is not None and self._send_direct(batch):
            metrics.PROXY_BATCHES_SENT.labels(path="direct").inc()
            batch.sent_at = time.monotonic()
            return batch
        batch.reply = self.replies.expect(batch.batch_id)
        msg = ChunkBatch(
            batch_id=batch.batch_id,
            task_id=batch.task_id,
            reply_to=self.replies.name,
            chunks=batch.chunks,
            job_id=batch.job_id,
        )
        try:
            # The confirm is looked at in check(): publishing stays windowed, not one by one.
            batch.confirm = self.publisher.publish(
                EXCHANGE_SHARDS,
                shard_routing_key(batch.shard),
                msg,
                persistent=self.persistent_chunks,
                timeout=self.timeout,
            )
        except PublishError as exc:
            raise WriterError(f"chunk batch to shard {batch.shard}: {exc}") from exc
        metrics.PROXY_BATCHES_SENT.labels(path="broker").inc()
        batch.sent_at = time.monotonic()
        return batch

    def _send_direct(self, batch: PendingBatch) -> bool:
        """On the shard's writer's chunk stream, if it offered one that works. The stream
        has taken the bytes when this returns, so there is no confirm to wait for."""
        assert self.streams is not None
        endpoint = self.endpoints.get(batch.shard)
        if endpoint is None:
            return False
        reply: Future[Message] = Future()
        msg = ChunkBatch(
            batch_id=batch.batch_id,
            task_id=batch.task_id,
            reply_to="",
            chunks=batch.chunks,
            job_id=batch.job_id,
        )
        if not self.streams.send(endpoint, msg, reply):
            return False
        batch.reply = reply
        batch.confirm = _SENT
        return True

    def check(self, batch: PendingBatch, wait: float) -> ChunkAck | None:
        """The batch's ack if it came within ``wait`` seconds; re-sends after a timeout;
        raises WriterError when the writer refused it or never answered."""
        confirm = batch.confirm
        try:
            rep = batch.reply.result(timeout=wait)
        except FutureTimeout:
            if confirm.done() and confirm.exception() is not None:
                raise WriterError(
                    f"chunk batch to shard {batch.shard}: {confirm.exception()}"
                ) from confirm.exception()
            lost = batch.reply.done()  # ReplyLost: our reply queue was re-created
            if not lost and time.monotonic() - batch.sent_at < self.timeout:
                return None
            if batch.attempts >= self.attempts:
                raise WriterError(
                    f"no chunk ack from shard {batch.shard} after {batch.attempts} tries"
                ) from None
            log.warning("chunk_ack_timeout", shard=batch.shard, attempt=batch.attempts)
            self.send(batch)
            return None
        if not isinstance(rep, ChunkAck):
            raise WriterError(f"shard {batch.shard} answered a chunk batch with {rep!r:.200}")
        if not rep.ok:
            raise WriterRefusedError(rep.error or f"shard {batch.shard} refused a batch", rep.cause)
        return rep


_SENT: Future[None] = Future()
_SENT.set_result(None)
