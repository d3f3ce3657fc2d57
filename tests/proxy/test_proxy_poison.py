"""A task whose result can never be sent (an over-long results_to) reaches a real proxy:
it is dead-lettered at once, unread, with the reason, and the proxy's next task runs and
reports as usual (before, the proxy's publisher retried that result for ever and every
chunk batch and result behind it waited). Real RabbitMQ, the real proxy and writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.amqp import HEADER_ERROR, QUEUE_DLQ, BrokerParams, open_blocking, results_queue
from common.messages import BackupTask, TaskResult, decode
from tests.proxy.proxy_helpers import MiB, make_sparse_disk
from tests.proxy.test_proxy_service import (
    CHUNK,
    SHARDS,
    _check_result,
    _get,
    _publish,
    _service,
    _setup,
    _task,
)
from tests.proxy.writer_probe import ProbedWriter

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def params(broker: BrokerParams) -> BrokerParams:
    p = BrokerParams(**{**broker.__dict__, "delivery_limit": 2})
    _setup(p)
    return p


@pytest.fixture
def writer(params: BrokerParams, tmp_path: Path) -> Iterator[ProbedWriter]:
    w = ProbedWriter(params, tmp_path / "repo", SHARDS, chunk_size=CHUNK)
    yield w
    w.close()


def test_task_with_unusable_results_to_is_dead_lettered_and_the_next_runs(
    params: BrokerParams, writer: ProbedWriter, tmp_path: Path
) -> None:
    d = make_sparse_disk(tmp_path, capacity=3 * MiB + 100)
    svc = _service(params, d)
    try:
        _publish(params, _task(d, "poison", results_to="r" * 256), _task(d, "good"))
        body = _get(params, results_queue("c1"), 60)
        assert body is not None
        res = decode(body, TaskResult)
        assert res.task_id == "good"
        _check_result(res, d, writer)
        conn = open_blocking(params, "test-dlq")
        try:
            _m, props, dead = conn.channel().basic_get(QUEUE_DLQ, auto_ack=True)
        finally:
            conn.close()
        assert dead is not None and decode(dead, BackupTask).task_id == "poison"
        assert "results_to of 256 bytes" in props.headers[HEADER_ERROR]
        # only the good task was read and sent: the poison one was refused unread
        assert writer.payload_bytes == res.bytes_sent
    finally:
        svc.close()
