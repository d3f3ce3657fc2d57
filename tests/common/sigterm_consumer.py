"""A consumer process for the SIGTERM test: slow handler, logs start/done per message."""

from __future__ import annotations

import sys
import time

from common.amqp import BrokerParams, Consumer, stop_on_signals
from common.messages import JobEvent, Message


def main() -> None:
    url, queue, log_path = sys.argv[1:4]
    params = BrokerParams(url=url, heartbeat=10, reconnect_max=1.0)
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def handle(msg: Message, _d: object) -> None:
        assert isinstance(msg, JobEvent)
        out.write(f"start {msg.disk_key}\n")
        time.sleep(1.5)
        out.write(f"done {msg.disk_key}\n")

    consumer = Consumer(params, [queue], handle, prefetch=5, workers=1, name="sigterm-test")
    stop_on_signals(consumer)
    consumer.run()
    out.write("exited\n")


if __name__ == "__main__":
    main()
