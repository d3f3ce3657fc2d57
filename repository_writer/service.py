"""`vmbackup writer`: the repository's side of the chunk and commit protocol.

Consumes its shard queues (ChunkBatch -> verify, store, fsync -> ChunkAck to the
sender's reply queue; HaveQuery -> HaveReply) and, optionally, the shared commits
queue (TaskEntries from a proxy -> staged durably -> CommitReply; CommitRequest ->
commit_point -> CommitReply; CommitPart -> staged durably -> CommitReply; JobMarker ->
running-backup marker begun or ended -> CommitReply; JobRecord -> the job's report kept
in the job history -> CommitReply: repository_writer/commit_queue.py;
PruneRequest -> a policy's retention applied -> PruneReply: prune_requests.py).
Handlers run on worker threads of common.amqp.Consumer; a message is acked only after its reply was
published, so a crash at any point means a redelivery, and every handler is
idempotent (chunks are content-addressed, point ids are derived from the request).

Memory: at most ``prefetch`` unacked messages per consumer, i.e. about
prefetch x batch size of chunk payloads, whatever the backlog or the repository
size (existence checks are stat() calls, nothing is cached per id).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from typing import Any

from common import causes, health
from common.amqp import (
    QUEUE_COMMITS,
    BrokerParams,
    Consumer,
    Delivery,
    Publisher,
    UnroutableError,
    check_reply_to,
    declare_base,
    declare_shard_queue,
)
from common.logging import bound, get_logger
from common.messages import (
    ChunkAck,
    ChunkBatch,
    CommitPart,
    CommitReply,
    CommitRequest,
    HaveQuery,
    HaveReply,
    JobMarker,
    JobRecord,
    Message,
    PruneRequest,
    TaskEntries,
)
from common.sharding import parse_shard_set, shard_of, shard_queue
from repository import fsutil
from repository.errors import RepositoryError, RepositoryFullError
from repository.interfaces import ChunkSink, Committer, Pruner
from repository.pack_store import PackStore
from repository.repository import Repository
from repository_writer import metrics
from repository_writer.chunk_stream_server import HELLO_TIMEOUT, ChunkStreamServer, route_address
from repository_writer.commit_limits import DEFAULT_MAX_DISK_CAPACITY, CommitLimits
from repository_writer.commit_queue import commit_queue_reply
from repository_writer.free_space import FreeSpaceGuard, MiB
from repository_writer.message_context import message_context
from repository_writer.prune_requests import prune_reply
from repository_writer.quiet_seal import QuietSealer
from repository_writer.senders import Senders
from repository_writer.stream_identity import make_identity

log = get_logger("writer")
DEFAULT_EXCHANGE = ""  # routes by queue name: replies go straight to the asker's queue


class WriterService:
    def __init__(
        self,
        repo: Repository,
        params: BrokerParams,
        *,
        n_shards: int,
        shards: str | list[int] = "all",
        prefetch: int = 16,
        workers: int = 2,
        consume_commits: bool = True,
        commit_prefetch: int = 1,
        shard_quorum: bool = False,
        name: str = "writer",
        data_listen: str = "",
        data_advertise: str = "",
        data_tls: bool = False,
        min_free_bytes: int = 0,
        stream_max_connections: int = 64,
        stream_hello_timeout: float = HELLO_TIMEOUT,
        stream_idle_timeout: float = 300.0,
        max_disk_capacity: int = DEFAULT_MAX_DISK_CAPACITY,
        coordinator_users: Sequence[str] = (),
        proxy_users: Sequence[str] = (),
        pack_idle_seal: float = 30.0,
        pack_max_age: float = 0.0,
        pack_quiet_seal: float = 0.0,
    ) -> None:
        self.repo = repo
        self.pack_idle_seal = pack_idle_seal  # seconds; 0 = never idle-sealed
        self.pack_max_age = pack_max_age  # seconds; 0 = no age limit
        # what the handlers may do with it: store chunks, or commit (repository/interfaces.py)
        self.chunks: ChunkSink = repo
        self.committer: Committer = repo
        self.pruner: Pruner = repo
        self.senders = Senders.for_account(params.account, coordinator_users, proxy_users)
        self.limits = CommitLimits(repo.chunk_size, max_disk_capacity)
        self.params = params
        self.n_shards = n_shards
        self.shards = parse_shard_set(shards, n_shards)
        self._own = set(self.shards)
        self.shard_quorum = shard_quorum
        self.name = name
        self.publisher = Publisher(params, name=f"{name}-replies")
        # basic_qos is per consumer tag, i.e. per queue: split the budget over the queues
        per_queue = max(1, prefetch // len(self.shards))
        self.chunk_consumer = Consumer(
            params,
            [shard_queue(s) for s in self.shards],
            self.handle,
            expect=(ChunkBatch, HaveQuery),
            prefetch=per_queue,
            workers=workers,
            declare=self._declare,
            name=f"{name}-shards",
        )
        self.commit_consumer = (
            Consumer(
                params,
                [QUEUE_COMMITS],
                self.handle,
                expect=(CommitRequest, CommitPart, JobMarker, JobRecord, TaskEntries, PruneRequest),
                prefetch=commit_prefetch,
                workers=commit_prefetch,
                declare=lambda ch: declare_base(ch, self.params),
                name=f"{name}-commits",
            )
            if consume_commits
            else None
        )
        self._commit_lock = threading.Lock()
        self.chunk_stream = (
            ChunkStreamServer(
                self.on_stream_message,
                listen=data_listen,
                advertise=data_advertise or route_address(*params.host_port()),
                workers=workers,
                max_inflight=prefetch,
                name=name,
                identity=make_identity(name) if data_tls else None,
                max_connections=stream_max_connections,
                idle_timeout=stream_idle_timeout,
                hello_timeout=stream_hello_timeout,
            )
            if data_listen
            else None
        )
        fsutil.fsync_observer = metrics.WRITER_FSYNC_SECONDS.observe
        self.free_space = FreeSpaceGuard(repo.path, min_free_bytes)
        self._stopping = threading.Event()
        self._sealer: threading.Thread | None = None
        # s3:// only: other writers' commits wait for this writer's open packs
        store = repo.chunks
        self.quiet_sealer = (
            QuietSealer(store, pack_quiet_seal, name)
            if repo.on_s3 and isinstance(store, PackStore) and pack_quiet_seal > 0
            else None
        )

    def _declare(self, ch: Any) -> None:
        declare_base(ch, self.params)
        for s in self.shards:
            declare_shard_queue(ch, self.params, s, quorum=self.shard_quorum)

    # --- life cycle ----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> WriterService:
        if self.chunk_stream is not None:
            self.chunk_stream.start()
        self.chunk_consumer.start()
        if self.commit_consumer is not None:
            self.commit_consumer.start()
        for c in self._consumers():
            if not c.wait_ready(timeout) and not c.stopping:  # a signal: run() returns
                raise RepositoryError(f"writer {self.name}: broker not reachable")
        health.add_check(f"writer {self.name}", self.free_space.readiness)
        if isinstance(self.repo.chunks, PackStore) and (self.pack_idle_seal or self.pack_max_age):
            self._stopping.clear()
            self._sealer = threading.Thread(
                target=self._seal_idle_packs, name=f"{self.name}-idle-seal", daemon=True
            )
            self._sealer.start()
        if self.quiet_sealer is not None:
            self.quiet_sealer.start()
        log.info("writer_started", name=self.name, shards=self.shards, repo=self.repo.location)
        return self

    def _seal_idle_packs(self) -> None:
        """Seal open packs that received nothing for ``pack_idle_seal`` seconds or are
        ``pack_max_age`` old: a sealed pack is final (S3 uploads only those), an open one
        waits for more chunks."""
        store = self.repo.chunks
        assert isinstance(store, PackStore)
        idle = self.pack_idle_seal or float("inf")
        every = min(5.0, *(s / 4 for s in (self.pack_idle_seal, self.pack_max_age) if s))
        while not self._stopping.wait(every):
            try:
                n = store.seal_idle(idle, self.pack_max_age)
            except RepositoryError as exc:  # a full disk: the next look tries again
                log.warning("pack_idle_seal_failed", error=str(exc))
                continue
            if n:
                log.info("packs_sealed_idle", packs=n, idle_s=self.pack_idle_seal)

    def _consumers(self) -> list[Consumer]:
        return [c for c in (self.chunk_consumer, self.commit_consumer) if c is not None]

    def run(self) -> None:
        self.start()
        while any(c._thread is not None and c._thread.is_alive() for c in self._consumers()):
            time.sleep(0.5)
        for c in self._consumers():  # a consumer that gave up (bad broker certificate)
            if c.error is not None:
                raise c.error

    def stop(self, timeout: float = 60.0) -> None:
        """Finish in-flight messages, return the rest to the broker."""
        health.remove_check(f"writer {self.name}")
        threads = [threading.Thread(target=c.stop, args=(timeout,)) for c in self._consumers()]
        if self.chunk_stream is not None:
            threads.append(threading.Thread(target=self.chunk_stream.stop))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._stopping.set()
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        if self.quiet_sealer is not None:
            self.quiet_sealer.stop()

    def close(self) -> None:
        self.stop()
        self.publisher.close()

    # --- handlers (worker threads) -------------------------------------------------

    def handle(self, msg: Message, d: Delivery) -> None:
        with bound(**message_context(msg)):
            self._handle(msg, d)

    def _handle(self, msg: Message, d: Delivery) -> None:
        ts = d.properties.timestamp
        if ts:
            metrics.WRITER_QUEUE_LAG_SECONDS.labels(kind=msg.KIND).observe(
                max(0.0, time.time() - ts)
            )
        # An answer that could never be sent (over-long reply_to or id): dead-lettered
        # before any work is done for it.
        if isinstance(msg, ChunkBatch):
            check_reply_to(msg.reply_to, msg.batch_id)
            self._reply(msg.reply_to, msg.batch_id, self.on_batch(msg, _queue_shard(d.queue)))
        elif isinstance(msg, HaveQuery):
            check_reply_to(msg.reply_to, msg.query_id)
            reply_have = self.on_have(msg, with_stream=self.senders.is_proxy(d))
            self._reply(msg.reply_to, msg.query_id, reply_have)
        elif isinstance(msg, CommitRequest | CommitPart | JobMarker | JobRecord | TaskEntries):
            check_reply_to(
                msg.reply_to, msg.part_id if isinstance(msg, CommitPart) else msg.request_id
            )
            self.senders.check_commits_queue(msg, d)
            reply = commit_queue_reply(self.committer, msg, self.limits)
            self._reply(msg.reply_to, reply.request_id, reply)
        elif isinstance(msg, PruneRequest):
            check_reply_to(msg.reply_to, msg.request_id)
            self.senders.check_commits_queue(msg, d)
            pruned = prune_reply(self.pruner, msg)
            self._reply(msg.reply_to, pruned.request_id, pruned)

    def on_stream_message(
        self, msg: ChunkBatch | HaveQuery | TaskEntries
    ) -> ChunkAck | HaveReply | CommitReply:
        """A batch, have-query or task's entries from a chunk stream: the same checks and
        answers as from a shard queue or the commits queue (its peer is a proxy: only
        proxies are given the stream's token)."""
        if isinstance(msg, HaveQuery):
            return self.on_have(msg)
        if isinstance(msg, TaskEntries):
            return commit_queue_reply(self.committer, msg, self.limits)
        shard = shard_of(msg.chunks[0][0], self.n_shards) if msg.chunks else -1
        with bound(**message_context(msg)):
            return self.on_batch(msg, shard)

    def on_batch(self, msg: ChunkBatch, shard: int) -> ChunkAck:
        if self.quiet_sealer is None:
            return self._on_batch(msg, shard)
        self.quiet_sealer.begin()
        try:
            return self._on_batch(msg, shard)
        finally:
            self.quiet_sealer.end()

    def _on_batch(self, msg: ChunkBatch, shard: int) -> ChunkAck:
        stray = [c[0].hex() for c in msg.chunks if shard_of(c[0], self.n_shards) not in self._own]
        if stray:
            why = f"chunks of shards this writer does not own: {stray[:3]}"
            return self._refused(msg, shard, causes.REPOSITORY_ERROR, why)
        size = sum(len(c[3]) for c in msg.chunks)
        why = self.free_space.admit(size)
        if why:
            return self._refused(msg, shard, causes.REPOSITORY_FULL, why)
        t0 = time.perf_counter()
        try:
            res = self.chunks.store_chunks(msg.chunks)
        except RepositoryFullError as exc:
            return self._refused(msg, shard, causes.REPOSITORY_FULL, str(exc))
        except RepositoryError as exc:
            # bad data: tell the proxy (its task fails cleanly), keep going
            return self._refused(msg, shard, causes.REPOSITORY_ERROR, str(exc))
        finally:
            self.free_space.done(size)
        metrics.WRITER_WRITE_SECONDS.observe(time.perf_counter() - t0)
        metrics.WRITER_BATCHES.labels(result="ok").inc()
        metrics.WRITER_CHUNKS.labels(result="new").inc(res.stored)
        metrics.WRITER_CHUNKS.labels(result="known").inc(res.known)
        metrics.WRITER_LOGICAL_BYTES.inc(sum(c[1] for c in msg.chunks))
        metrics.WRITER_NEW_RAW_BYTES.inc(res.raw_stored)
        metrics.WRITER_STORED_BYTES.inc(res.bytes_stored)
        return ChunkAck(msg.batch_id, shard, True, "", res.stored, res.known)

    def _refused(self, msg: ChunkBatch, shard: int, cause: str, why: str) -> ChunkAck:
        if cause == causes.REPOSITORY_FULL:
            error = f"repository full on writer {self.name} (shard {shard}): {why}"
            metrics.WRITER_BATCHES.labels(result="full").inc()
        else:
            error = f"writer {self.name} (shard {shard}) refused the batch: {why}"
            metrics.WRITER_BATCHES.labels(result="error").inc()
        log.error(
            "chunk_batch_refused", batch=msg.batch_id, task=msg.task_id, cause=cause, error=error
        )
        return ChunkAck(msg.batch_id, shard, False, error, 0, 0, cause)

    def on_have(self, msg: HaveQuery, *, with_stream: bool = True) -> HaveReply:
        """The answer; ``with_stream`` adds the chunk stream's address and token (only
        for proxy accounts: the token lets its holder write chunks)."""
        present = self.chunks.has_chunks(msg.ids)
        n = sum(present)
        metrics.WRITER_HAVE_IDS.labels(result="present").inc(n)
        metrics.WRITER_HAVE_IDS.labels(result="absent").inc(len(present) - n)
        if self.chunk_stream is None or not with_stream:
            return HaveReply(msg.query_id, present)
        stream = self.chunk_stream
        return HaveReply(msg.query_id, present, stream.address, stream.token, stream.pin)

    def on_commit(self, msg: CommitRequest) -> CommitReply:
        return commit_queue_reply(self.committer, msg, self.limits)

    def _reply(self, reply_to: str, key: str, reply: Message) -> None:
        try:
            self.publisher.publish_sync(
                DEFAULT_EXCHANGE, reply_to, reply, persistent=False, correlation_id=key
            )
        except UnroutableError:
            # the asker is gone (its exclusive queue died); it re-sends if it comes back
            log.warning("reply_unroutable", reply_to=reply_to, kind=reply.KIND)


def _queue_shard(queue: str) -> int:
    return int(queue.rsplit(".", 1)[1])


def main(args: argparse.Namespace) -> int:
    from common.amqp import stop_on_signals
    from common.malloc_tuning import limit_heap_retention
    from common.role_startup import start_role
    from repository import metrics as repository_metrics

    cfg = start_role(
        "writer",
        args.load_config,
        args.config,
        role_families=[metrics.REGISTRY, repository_metrics.REGISTRY],
    )
    # Before the first frame is received: received batches and their chunks reuse the heap
    # instead of faulting in fresh pages (common/malloc_tuning.py).
    limit_heap_retention()
    rs, ws = cfg.repository, cfg.writer
    repo = rs.open(ws.name)  # on S3: this writer's own cache directory
    repo.commit_wait = ws.s3_commit_wait
    service = WriterService(
        repo,
        BrokerParams.from_settings(cfg.broker),
        n_shards=cfg.broker.n_shards,
        shards=ws.shards,
        prefetch=ws.prefetch,
        consume_commits=ws.consume_commits,
        commit_prefetch=ws.commit_prefetch,
        shard_quorum=ws.shard_queue_type == "quorum",
        name=ws.name,
        data_listen=ws.data_listen,
        data_advertise=ws.data_advertise,
        data_tls=ws.stream_tls(cfg.broker.url),
        min_free_bytes=ws.min_free_mib * MiB,
        stream_max_connections=ws.stream_max_connections,
        stream_hello_timeout=ws.stream_hello_timeout,
        stream_idle_timeout=ws.stream_idle_timeout,
        max_disk_capacity=ws.max_disk_capacity,
        coordinator_users=ws.coordinator_users,
        proxy_users=ws.proxy_users,
        pack_idle_seal=ws.pack_idle_seal,
        pack_max_age=ws.pack_max_age,
        pack_quiet_seal=ws.pack_quiet_seal,
    )
    stop_on_signals(service)
    try:
        service.run()
    finally:
        service.publisher.close()
    return 0
