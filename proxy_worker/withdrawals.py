"""Tasks the coordinator withdrew: a TaskWithdrawal on the ``vmbackup.withdrawals`` fanout
names tasks it no longer waits for (job cancelled, tasks past their time-out).

A task already withdrawn when it is delivered is acked and dropped unread; one running when
its withdrawal arrives is stopped. Without this, the tasks of a cancelled job failed at the
proxies against the removed snapshot, were retried and ended in the DLQ. Best effort: a
withdrawal this proxy missed (it was not connected then) leaves the old path, the task
fails and is dead-lettered; nothing is ever lost either way, since nobody waits for it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from common.amqp import Delivery
from common.logging import get_logger
from common.messages import Message, TaskWithdrawal

log = get_logger(__name__)

KEEP = 100_000  # task ids remembered at most (a few MB)
TTL_S = 24 * 3600.0  # a task is never redelivered a day after its job gave up on it


class Withdrawals:
    """Thread safe: filled by the withdrawal consumer, asked by the task handlers."""

    def __init__(self, *, keep: int = KEEP, ttl_s: float = TTL_S) -> None:
        self.keep = keep
        self.ttl_s = ttl_s
        self._ids: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (when, reason)
        self._running: dict[str, Callable[[str], None]] = {}
        self._lock = threading.Lock()

    def on_message(self, msg: Message, _d: Delivery) -> None:
        """Consumer handler for the withdrawals queue."""
        assert isinstance(msg, TaskWithdrawal)
        self.add(msg)

    def add(self, msg: TaskWithdrawal) -> None:
        now = time.monotonic()
        stop: list[tuple[str, Callable[[str], None]]] = []
        with self._lock:
            for tid in msg.task_ids:
                self._ids[tid] = (now, msg.reason)
                self._ids.move_to_end(tid)
                cancel = self._running.get(tid)
                if cancel is not None:
                    stop.append((tid, cancel))
            while len(self._ids) > self.keep:
                self._ids.popitem(last=False)
            while self._ids:
                first = next(iter(self._ids.values()))
                if now - first[0] <= self.ttl_s:
                    break
                self._ids.popitem(last=False)
        log.info("tasks_withdrawn", job=msg.job_id, tasks=len(msg.task_ids), reason=msg.reason)
        for tid, cancel in stop:
            log.info("running_task_withdrawn", task=tid, reason=msg.reason)
            cancel(msg.reason)

    def reason(self, task_id: str) -> str | None:
        """Why the task was withdrawn, or None when it was not."""
        with self._lock:
            got = self._ids.get(task_id)
        return None if got is None else got[1]

    @contextmanager
    def running(self, task_id: str, cancel: Callable[[str], None]) -> Iterator[None]:
        """While the body runs, a withdrawal of ``task_id`` calls ``cancel(reason)`` (also
        when it arrived just before: the check and the registration are one step)."""
        with self._lock:
            self._running[task_id] = cancel
            got = self._ids.get(task_id)
        try:
            if got is not None:
                cancel(got[1])
            yield
        finally:
            with self._lock:
                self._running.pop(task_id, None)
