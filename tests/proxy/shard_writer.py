"""A minimal writer for the proxy's tests, on the real broker and a real Repository.

It stands in for ``vmbackup writer`` (repository_writer/service.py, built in parallel) and
speaks the same protocol: HaveQuery -> HaveReply, ChunkBatch -> store (verified by hashing
the plaintext) -> ChunkAck. ``drop_batches`` swallows the first N batches without an ack so
tests can check that the proxy re-sends.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from common.amqp import (
    BrokerParams,
    Consumer,
    Delivery,
    Publisher,
    declare_base,
    declare_shard_queue,
)
from common.messages import ChunkAck, ChunkBatch, HaveQuery, HaveReply, Message
from common.sharding import shard_queue
from repository_writer.repository import Repository


class ShardWriter:
    def __init__(self, params: BrokerParams, repo_path: Path, n_shards: int, **init: Any) -> None:
        self.repo = (
            Repository.open(repo_path)
            if (repo_path / "config").exists()
            else Repository.init(repo_path, **init)
        )
        self.n_shards = n_shards
        self.params = params
        self.drop_batches = 0
        self.batches = 0
        self.queries = 0
        self.payload_bytes = 0
        self._lock = threading.Lock()
        self.publisher = Publisher(params, name="test-writer")
        self.consumer = Consumer(
            params,
            [shard_queue(s) for s in range(n_shards)],
            self._handle,
            expect=(HaveQuery, ChunkBatch),
            prefetch=16,
            workers=2,
            declare=self._declare,
            name="test-writer",
        ).start()
        if not self.consumer.ready.wait(30):
            raise RuntimeError("test writer could not reach the broker")

    def _declare(self, ch: Any) -> None:
        declare_base(ch, self.params)
        for s in range(self.n_shards):
            declare_shard_queue(ch, self.params, s, quorum=False)

    def _handle(self, msg: Message, d: Delivery) -> None:
        if isinstance(msg, HaveQuery):
            with self._lock:
                self.queries += 1
            rep: Message = HaveReply(query_id=msg.query_id, present=self.repo.has_chunks(msg.ids))
            self.publisher.publish_sync("", msg.reply_to, rep, persistent=False)
            return
        assert isinstance(msg, ChunkBatch)
        with self._lock:
            self.batches += 1
            if self.drop_batches > 0:
                self.drop_batches -= 1
                return
            self.payload_bytes += sum(len(c[3]) for c in msg.chunks)
        res = self.repo.store_chunks(msg.chunks)
        shard = int(d.queue.rsplit(".", 1)[1])
        ack = ChunkAck(
            batch_id=msg.batch_id,
            shard=shard,
            ok=True,
            error="",
            stored=res.stored,
            known=res.known,
        )
        self.publisher.publish_sync("", msg.reply_to, ack, persistent=False)

    def close(self) -> None:
        self.consumer.stop(10)
        self.publisher.close()
