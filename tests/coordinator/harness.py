"""Test side of the protocol for coordinator tests: answers tasks and commits.

It reads the lab's frozen snapshot files, stores chunks into a real repository and
commits points with the repository's own ``commit_point``, over the real broker. It
lets the coordinator tests steer failures (a failed task, a task that never gets an
answer, a hook run on the first task) that the real proxy gives no handle on. The
end-to-end test (test_e2e_services.py) runs the real ``vmbackup proxy`` and
``vmbackup writer`` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.amqp import (
    QUEUE_COMMITS,
    BrokerParams,
    Consumer,
    Delivery,
    Publisher,
    declare_topology,
    task_queue,
)
from common.chunk import chunk_id, is_zero
from common.messages import (
    BackupTask,
    CommitPart,
    CommitRequest,
    JobMarker,
    JobRecord,
    Message,
    PruneRequest,
    TaskResult,
)
from repository_writer.commit_queue import commit_queue_reply
from repository_writer.prune_requests import prune_reply


class ProtocolPeer:
    def __init__(
        self,
        broker: BrokerParams,
        repo: Any,
        local_path: Callable[[str], Path],
        routing_keys: list[str],
    ) -> None:
        self.repo = repo
        self.local_path = local_path
        declare_topology(broker, task_keys=routing_keys)
        self.publisher = Publisher(broker, name="test-peer")
        self.tasks: list[BackupTask] = []
        self.commits: list[CommitRequest] = []
        self.parts: list[CommitPart] = []
        self.markers: list[JobMarker] = []
        self.prunes: list[PruneRequest] = []
        self.records: list[JobRecord] = []
        self.on_commit: Callable[[Message], None] | None = None  # runs before the writer's code
        self.fail_vm: set[str] = set()  # vm names whose tasks fail
        self.hold_vm: set[str] = set()  # vm names whose tasks get no answer
        self.on_task: Callable[[BackupTask], None] | None = None
        self._lock = threading.Lock()
        self.task_consumer = Consumer(
            broker,
            [task_queue(k) for k in routing_keys],
            self._on_task,
            expect=(BackupTask,),
            prefetch=4,
            workers=2,
            name="test-peer-tasks",
        ).start()
        self.commit_consumer = Consumer(
            broker,
            [QUEUE_COMMITS],
            self._on_commit,
            expect=(CommitRequest, CommitPart, JobMarker, JobRecord, PruneRequest),
            prefetch=1,
            workers=1,
            name="test-peer-commits",
        ).start()
        self.task_consumer.ready.wait(30)
        self.commit_consumer.ready.wait(30)

    def _on_task(self, msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, BackupTask)
        with self._lock:
            self.tasks.append(msg)
            hook = self.on_task
        if hook is not None:
            hook(msg)
        if msg.vm_name in self.hold_vm:
            return  # acked, never answered: like a proxy that died after taking it
        if msg.vm_name in self.fail_vm:
            self._answer(msg, [], ok=False, error="injected read failure")
            return
        cs = msg.chunk_size
        entries: list[tuple[int, bytes]] = []
        read = 0
        with open(self.local_path(msg.disk.disk_file), "rb") as fh:
            for off, length in msg.ranges:
                pos = off
                while pos < off + length:
                    n = min(cs, off + length - pos)
                    fh.seek(pos)
                    data = fh.read(n)
                    data += bytes(n - len(data))  # a sparse file may end early
                    read += n
                    if is_zero(data):
                        entries.append((pos // cs, b""))
                    else:
                        cid = chunk_id(data, self.repo.id_key)
                        self.repo.store_chunk(cid, len(data), False, data)
                        entries.append((pos // cs, cid))
                    pos += n
        self._answer(msg, entries, ok=True, error="", read=read)

    def _answer(
        self,
        t: BackupTask,
        entries: list[tuple[int, bytes]],
        *,
        ok: bool,
        error: str,
        read: int = 0,
    ) -> None:
        res = TaskResult(
            task_id=t.task_id,
            job_id=t.job_id,
            vm_uuid=t.vm_uuid,
            disk_key=t.disk_key,
            ok=ok,
            error=error,
            entries=entries,
            bytes_read=read,
            bytes_zero=0,
            bytes_known=0,
            bytes_sent=read,
            seconds=0.0,
            proxy="test-peer",
        )
        self.publisher.publish_sync("", t.results_to, res)

    def _on_commit(self, msg: Message, d: Delivery) -> None:
        # the writer service's own handlers for the commits queue
        assert isinstance(msg, CommitRequest | CommitPart | JobMarker | JobRecord | PruneRequest)
        with self._lock:
            if isinstance(msg, CommitRequest):
                self.commits.append(msg)
            elif isinstance(msg, CommitPart):
                self.parts.append(msg)
            elif isinstance(msg, PruneRequest):
                self.prunes.append(msg)
            elif isinstance(msg, JobRecord):
                self.records.append(msg)
            else:
                self.markers.append(msg)
            hook = self.on_commit
        if hook is not None:
            hook(msg)
        if isinstance(msg, PruneRequest):
            pruned = prune_reply(self.repo, msg)
            self.publisher.publish_sync(
                "", msg.reply_to, pruned, correlation_id=pruned.request_id, persistent=False
            )
            return
        reply = commit_queue_reply(self.repo, msg)
        self.publisher.publish_sync(
            "", msg.reply_to, reply, correlation_id=reply.request_id, persistent=False
        )

    def close(self) -> None:
        self.task_consumer.stop(10)
        self.commit_consumer.stop(10)
        self.publisher.close()
