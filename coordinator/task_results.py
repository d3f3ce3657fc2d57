"""The coordinator's results queue: each task's TaskResult completes that task's future."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from common.amqp import (
    BrokerParams,
    Consumer,
    Delivery,
    declare_base,
    declare_results_queue,
    results_queue,
)
from common.logging import get_logger
from common.messages import Message, TaskResult

log = get_logger(__name__)


class ResultRouter:
    """Consumes this coordinator's results queue and completes per-task futures."""

    def __init__(self, params: BrokerParams, coordinator_id: str) -> None:
        self.queue = results_queue(coordinator_id)
        self._futures: dict[str, Future[TaskResult]] = {}
        self._lock = threading.Lock()
        self.stale = 0

        def declare(ch: Any) -> None:
            declare_base(ch, params)
            declare_results_queue(ch, params, coordinator_id)

        self.consumer = Consumer(
            params,
            [self.queue],
            self._on_result,
            expect=(TaskResult,),
            prefetch=64,
            workers=2,
            declare=declare,
            name=f"vmbackup-results-{coordinator_id}",
        ).start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self.consumer.wait_ready(timeout)

    def expect(self, task_id: str) -> Future[TaskResult]:
        fut: Future[TaskResult] = Future()
        with self._lock:
            self._futures[task_id] = fut
        return fut

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._futures.pop(task_id, None)

    def _on_result(self, msg: Message, _d: Delivery) -> None:
        assert isinstance(msg, TaskResult)
        with self._lock:
            fut = self._futures.pop(msg.task_id, None)
        if fut is None:
            # a duplicate, or a result of a job that ended (e.g. before a restart)
            self.stale += 1
            log.info("stale_task_result", task=msg.task_id, job=msg.job_id)
            return
        if not fut.done():
            fut.set_result(msg)

    def close(self) -> None:
        self.consumer.stop(timeout=10)
