"""RabbitMQ plumbing (pika) for a pipeline that must lose nothing.

* :mod:`.params`: connection parameters (:class:`BrokerParams`) and reconnect backoff.
* :mod:`.topology`: names, :func:`declare_topology` and the ``declare_*`` helpers:
  idempotent exchanges and durable quorum queues with a delivery limit and a dead-letter
  exchange.
* :mod:`.publisher`: :class:`Publisher`, confirms with a window, mandatory routing,
  bounded retry across reconnects.
* :mod:`.consumer`: :class:`Consumer`, manual acks after the handler, worker threads,
  reconnects, graceful stop, dead-lettering with the reason in a header.
* :mod:`.replies`: :class:`ReplyQueue`, request/reply over an exclusive queue.

Everything public is re-exported here: callers import from ``common.amqp``.
"""

from common.amqp.consumer import Consumer, Handler, stop_on_signals
from common.amqp.delivery import Delivery, PermanentError
from common.amqp.errors import PublishError, UnpublishableError, UnroutableError
from common.amqp.params import (
    RECV_BYTES,
    BrokerParams,
    backoff_delay,
    open_blocking,
    pump,
)
from common.amqp.publisher import Publisher
from common.amqp.replies import ReplyLost, ReplyQueue, check_reply_to
from common.amqp.topology import (
    EXCHANGE_DLX,
    EXCHANGE_EVENTS,
    EXCHANGE_SHARDS,
    EXCHANGE_TASKS,
    EXCHANGE_WITHDRAWALS,
    HEADER_ERROR,
    HEADER_SOURCE_QUEUE,
    QUEUE_COMMITS,
    QUEUE_DLQ,
    declare_base,
    declare_results_queue,
    declare_shard_queue,
    declare_task_queue,
    declare_topology,
    quorum_args,
    results_queue,
    task_queue,
    task_routing_key,
)

__all__ = [
    "EXCHANGE_DLX",
    "EXCHANGE_EVENTS",
    "EXCHANGE_SHARDS",
    "EXCHANGE_TASKS",
    "EXCHANGE_WITHDRAWALS",
    "HEADER_ERROR",
    "HEADER_SOURCE_QUEUE",
    "QUEUE_COMMITS",
    "QUEUE_DLQ",
    "RECV_BYTES",
    "BrokerParams",
    "Consumer",
    "Delivery",
    "Handler",
    "PermanentError",
    "PublishError",
    "Publisher",
    "ReplyLost",
    "ReplyQueue",
    "UnpublishableError",
    "UnroutableError",
    "backoff_delay",
    "check_reply_to",
    "declare_base",
    "declare_results_queue",
    "declare_shard_queue",
    "declare_task_queue",
    "declare_topology",
    "open_blocking",
    "pump",
    "quorum_args",
    "results_queue",
    "stop_on_signals",
    "task_queue",
    "task_routing_key",
]
