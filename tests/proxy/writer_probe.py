"""The real writer service (``vmbackup writer``, repository_writer/service.py) for the proxy's
tests, with counters of what reached it.

Everything the proxy talks to is the real service: HaveQuery -> HaveReply, ChunkBatch ->
verify, store, fsync -> ChunkAck, TaskEntries -> staged -> CommitReply (the proxy's
tests run without a coordinator: the probe's own broker account is both). The one fault
hook, ``drop_batches``, swallows the first N chunk batches without an ack: a writer that
took a batch and died before answering, which the real service never does on its own, yet
the proxy must survive by re-sending.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from common.amqp import BrokerParams, Delivery
from common.messages import ChunkBatch, HaveQuery, Message, TaskResult
from repository.repository import Repository
from repository_writer.service import WriterService


class ProbedWriter(WriterService):
    def __init__(self, params: BrokerParams, repo_path: Path, n_shards: int, **init: Any) -> None:
        repo = (
            Repository.open(repo_path)
            if (repo_path / "config").exists()
            else Repository.init(repo_path, **init)
        )
        super().__init__(repo, params, n_shards=n_shards, name="test-writer")
        self.drop_batches = 0
        self.batches = 0
        self.queries = 0
        self.payload_bytes = 0  # payload bytes of the batches that were handled
        self._probe_lock = threading.Lock()
        self.start()

    def staged_entries(self, res: TaskResult) -> list[tuple[int, bytes]]:
        """The entries the task's proxy staged here, checked against its result."""
        return list(
            self.repo.staging.load_task(
                res.job_id,
                res.vm_uuid,
                res.disk_key,
                res.task_id,
                res.entries_digest,
                res.entries_count,
            )
        )

    def handle(self, msg: Message, d: Delivery) -> None:
        with self._probe_lock:
            if isinstance(msg, HaveQuery):
                self.queries += 1
            elif isinstance(msg, ChunkBatch):
                self.batches += 1
                if self.drop_batches > 0:
                    self.drop_batches -= 1
                    return  # acked at the broker, never answered
                self.payload_bytes += sum(len(c[3]) for c in msg.chunks)
        super().handle(msg, d)
