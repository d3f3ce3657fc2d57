"""A process with one publisher and one consumer, logging as a service does (JSON lines
on stdout), for the reconnect-logging test; stops when stdin closes."""

from __future__ import annotations

import sys

from common.amqp import BrokerParams, Consumer, Publisher
from common.logging import setup_logging


def main() -> None:
    setup_logging("info", "json", role="test")
    params = BrokerParams(url=sys.argv[1], reconnect_max=0.3, connect_timeout=2.0, heartbeat=5)
    consumer = Consumer(
        params, [], lambda _m, _d: None, name="test-consumer", exclusive_reply_queue=True
    ).start()
    publisher = Publisher(params, name="test-publisher")
    sys.stdin.read()
    consumer.stop(5)
    publisher.close(2)


if __name__ == "__main__":
    main()
