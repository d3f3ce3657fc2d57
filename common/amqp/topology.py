"""Names of exchanges and queues, and their idempotent declaration: exchanges and
durable quorum queues with a delivery limit and a dead-letter exchange."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from common.amqp.params import BrokerParams, open_blocking

# --- names ---------------------------------------------------------------------------
EXCHANGE_TASKS = "vmbackup.tasks"
EXCHANGE_SHARDS = "vmbackup.shards"
EXCHANGE_EVENTS = "vmbackup.events"
# Fanout of TaskWithdrawal messages: every proxy binds its own exclusive queue.
EXCHANGE_WITHDRAWALS = "vmbackup.withdrawals"
EXCHANGE_DLX = "vmbackup.dlx"
QUEUE_DLQ = "vmbackup.dlq"
QUEUE_COMMITS = "vmbackup.commits"

HEADER_ERROR = "x-vmbackup-error"
HEADER_SOURCE_QUEUE = "x-vmbackup-queue"


def task_routing_key(scope: str, name: str) -> str:
    """Routing key of tasks for a host or a datastore: ``host.<name>`` / ``datastore.<name>``."""
    if scope not in ("host", "datastore"):
        raise ValueError(f"task routing scope must be host or datastore, got {scope!r}")
    if not name:
        raise ValueError("task routing needs a host or datastore name")
    return f"{scope}.{name}"


def task_queue(routing_key: str) -> str:
    return f"vmbackup.tasks.{routing_key}"


def results_queue(coordinator_id: str) -> str:
    return f"vmbackup.results.{coordinator_id}"


def quorum_args(delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": EXCHANGE_DLX,
    }


def declare_base(ch: BlockingChannel, params: BrokerParams) -> None:
    """Exchanges, the dead-letter queue and the commits queue. Idempotent."""
    ch.exchange_declare(EXCHANGE_DLX, exchange_type="fanout", durable=True)
    ch.queue_declare(QUEUE_DLQ, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(QUEUE_DLQ, EXCHANGE_DLX)
    ch.exchange_declare(EXCHANGE_TASKS, exchange_type="direct", durable=True)
    ch.exchange_declare(EXCHANGE_SHARDS, exchange_type="direct", durable=True)
    ch.exchange_declare(EXCHANGE_EVENTS, exchange_type="topic", durable=True)
    ch.exchange_declare(EXCHANGE_WITHDRAWALS, exchange_type="fanout", durable=True)
    ch.queue_declare(QUEUE_COMMITS, durable=True, arguments=quorum_args(params.delivery_limit))


def declare_task_queue(ch: BlockingChannel, params: BrokerParams, routing_key: str) -> str:
    name = task_queue(routing_key)
    ch.queue_declare(name, durable=True, arguments=quorum_args(params.delivery_limit))
    ch.queue_bind(name, EXCHANGE_TASKS, routing_key=routing_key)
    return name


def declare_shard_queue(
    ch: BlockingChannel, params: BrokerParams, shard: int, *, quorum: bool = True
) -> str:
    """A writer shard queue (chunk batches and have-queries).

    ``quorum=False`` gives a classic durable queue: faster for bulk chunk data that
    needs no broker-side durability (the proxy re-sends on a missing chunk ack).
    """
    from common.sharding import shard_queue, shard_routing_key

    name = shard_queue(shard)
    args = (
        quorum_args(params.delivery_limit)
        if quorum
        else {"x-queue-type": "classic", "x-dead-letter-exchange": EXCHANGE_DLX}
    )
    ch.queue_declare(name, durable=True, arguments=args)
    ch.queue_bind(name, EXCHANGE_SHARDS, routing_key=shard_routing_key(shard))
    return name


def declare_results_queue(ch: BlockingChannel, params: BrokerParams, coordinator_id: str) -> str:
    name = results_queue(coordinator_id)
    ch.queue_declare(name, durable=True, arguments=quorum_args(params.delivery_limit))
    return name


def declare_topology(
    params: BrokerParams,
    *,
    task_keys: Iterable[str] = (),
    shards: Iterable[int] = (),
    shard_quorum: bool = True,
    coordinator_ids: Iterable[str] = (),
) -> None:
    """Declare everything once over a short-lived connection (idempotent)."""
    conn = open_blocking(params, "vmbackup-topology")
    try:
        ch = conn.channel()
        declare_base(ch, params)
        for key in task_keys:
            declare_task_queue(ch, params, key)
        for shard in shards:
            declare_shard_queue(ch, params, shard, quorum=shard_quorum)
        for cid in coordinator_ids:
            declare_results_queue(ch, params, cid)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
