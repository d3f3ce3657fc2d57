"""`make demo`: until the end-to-end pipeline lands, a real smoke flow through RabbitMQ.

Declares the topology in a throw-away vhost, publishes block-range tasks with confirms,
consumes them with acks and prints what happened.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

from common import amqp
from common.amqp import BrokerParams, Consumer, Publisher
from common.messages import BackupTask, Message


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


def main() -> int:
    vhost = f"vmbackup-demo-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        params = BrokerParams().with_vhost(vhost)
        amqp.declare_topology(params, task_keys=["host.esx-01", "host.esx-02"])
        tasks = [
            BackupTask(
                task_id=f"job1/vm-{i}/2000/{off}",
                job_id="job1",
                vcenter="vc",
                datacenter="DC0",
                host=f"esx-0{1 + i % 2}",
                datastore="ds1",
                vm_uuid=f"uuid-{i}",
                vm_moref=f"vm-{i}",
                vm_name=f"vm {i}",
                disk_key=2000,
                snapshot_moref=f"snapshot-{i}",
                disk_file=f"[ds1] vm-{i}/disk.vmdk",
                capacity=1 << 30,
                chunk_size=1 << 20,
                compression_level=3,
                ranges=[(off, 64 << 20)],
                results_to="results",
            )
            for i in range(6)
            for off in range(0, 256 << 20, 64 << 20)
        ]
        done: dict[str, int] = {}
        all_done = threading.Event()

        def handle(msg: Message, d: amqp.Delivery) -> None:
            assert isinstance(msg, BackupTask)
            done[d.queue] = done.get(d.queue, 0) + 1
            if sum(done.values()) == len(tasks):
                all_done.set()

        queues = [amqp.task_queue("host.esx-01"), amqp.task_queue("host.esx-02")]
        consumer = Consumer(params, queues, handle, prefetch=16, workers=2).start()
        t0 = time.monotonic()
        with Publisher(params) as pub:
            pub.flush(
                [pub.publish(amqp.EXCHANGE_TASKS, f"host.{t.host}", t) for t in tasks], timeout=60
            )
        print(f"published {len(tasks)} tasks with confirms in {time.monotonic() - t0:.3f}s")
        ok = all_done.wait(60)
        consumer.stop()
        for q, n in sorted(done.items()):
            print(f"  {q}: {n} tasks consumed and acked")
        print("smoke flow ok" if ok else "smoke flow FAILED: not every task was consumed")
        return 0 if ok else 1
    finally:
        rabbitmqctl("delete_vhost", vhost)


if __name__ == "__main__":
    sys.exit(main())
