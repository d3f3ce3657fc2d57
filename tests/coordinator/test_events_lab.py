"""Job events on the real broker: every event of a job, with numbers that add up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from common import amqp
from common.amqp import BrokerParams, Consumer, Delivery, declare_topology
from common.messages import JobEvent, Message
from coordinator import report
from coordinator.events import EventPublisher, routing_key
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        clusters=1,
        hosts_per_cluster=1,
        vms_per_host=3,
        disk_sizes=[6 * MiB, 3 * MiB + 4321],
        disks_per_vm=2,
    )
    with Lab.start(spec) as lab:
        for v in lab.vms():
            lab.write_guest_data(v["name"], 2000, 0, b"abc" * 100_000)
        yield lab


class Listener:
    def __init__(self, broker: BrokerParams, key: str = "job.#") -> None:
        self.events: list[tuple[str, JobEvent]] = []
        self.lock = threading.Lock()
        self.consumer = Consumer(
            broker,
            [],
            self.on_event,
            declare=lambda ch: amqp.declare_base(ch, broker),
            name="test-events",
            exclusive_reply_queue=True,
            exclusive_bindings=[(amqp.EXCHANGE_EVENTS, key)],
            workers=1,
        ).start()
        assert self.consumer.ready.wait(30)

    def on_event(self, msg: Message, d: Delivery) -> None:
        assert isinstance(msg, JobEvent)
        with self.lock:
            self.events.append((d.routing_key, msg))

    def close(self) -> None:
        self.consumer.stop(10)


def by_name(events: list[JobEvent], name: str) -> list[JobEvent]:
    return [e for e in events if e.event == name]


def test_job_emits_consistent_events(lab: Lab, make_env: Any, broker: BrokerParams) -> None:
    env = make_env(lab)
    rt = env.start(task_max_bytes=2 * MiB)
    listener = Listener(broker)
    try:
        lab.write_guest_data(lab.vms()[0]["name"], 2001, MiB, b"z" * 1000)
        rep = env.run()
        assert rep.status == report.OK, rep.to_text()
        assert rt.events.flush(10)
        job = rep.job_id
        deadline = threading.Event()
        for _ in range(100):  # the listener gets them asynchronously
            with listener.lock:
                if any(e.event == "job-done" for _k, e in listener.events):
                    break
            deadline.wait(0.1)
        with listener.lock:
            got = list(listener.events)
    finally:
        listener.close()
    events = [e for _k, e in got]
    assert all(e.job_id == job for e in events)
    assert all(k == routing_key(job, e.event) for k, e in got)
    assert events[0].event == "job-started" and events[0].fields == {"policy": "all"}
    assert events[-1].event == "job-done"
    assert events[-1].fields["status"] == rep.status
    assert isinstance(events[-1].fields["seconds"], float)

    (planned,) = by_name(events, "job-planned")
    vms = {v.name for v in rep.vms}
    assert planned.fields["vms"] == len(vms) == 3
    assert {e.vm for e in by_name(events, "vm-started")} == vms
    done = {e.vm: e for e in by_name(events, "vm-done")}
    assert set(done) == vms

    disks = {(e.vm, e.disk_key): e for e in by_name(events, "disk-planned")}
    assert len(disks) == 6
    tasks = by_name(events, "task-done")
    assert len(tasks) >= 4
    for v in rep.vms:
        read = sent = 0
        for d in v.disks:
            ev = disks[(v.name, d.key)]
            assert ev.fields["mode"] == d.mode == "full"
            assert ev.fields["reason"] == d.reason
            assert ev.fields["bytes_planned"] == d.bytes_planned
            assert ev.fields["capacity"] == d.capacity
            mine = [t for t in tasks if t.vm == v.name and t.disk_key == d.key]
            assert len(mine) == d.tasks  # a disk with nothing allocated has none
            # the tasks' ranges cover exactly the planned bytes; every byte was read
            assert sum(int(t.fields["bytes"]) for t in mine) == d.bytes_planned
            assert sum(int(t.fields["bytes_read"]) for t in mine) == d.bytes_read
            assert all(t.fields["ok"] is True for t in mine)
            for t in mine:
                assert set(t.fields) >= {
                    "bytes", "bytes_read", "bytes_sent", "bytes_known", "bytes_zero"
                }  # fmt: skip
            read += d.bytes_read
            sent += d.bytes_sent
        f = done[v.name].fields
        assert f["status"] == v.status == report.OK
        assert f["mode"] == "full"
        assert f["bytes_read"] == read > 0
        assert f["bytes_sent"] == sent
        assert f["seconds"] == v.seconds
    # order per VM: started, then its disks and tasks, then done
    for name in vms:
        seq = [e.event for e in events if e.vm == name]
        assert seq[0] == "vm-started" and seq[-1] == "vm-done"


def test_events_are_best_effort(broker: BrokerParams) -> None:
    from coordinator.metrics import REGISTRY

    def sample(result: str) -> float:
        return (
            REGISTRY.get_sample_value("vmbackup_coordinator_job_events_total", {"result": result})
            or 0.0
        )

    # nobody listens: not an error, and nothing is returned or retried
    declare_topology(broker)  # the coordinator declares the exchanges at start
    pub = EventPublisher(broker, name="test-events-pub")
    before = sample("published")
    pub.emit("job-1", "job-started", policy="p")
    assert pub.flush(30)
    pub.close()
    assert sample("published") == before + 1

    # a broker that is not there: emit neither blocks nor raises; events that were never
    # confirmed count as failed at close
    dead = BrokerParams(url="amqp://guest:guest@127.0.0.1:1/%2F", reconnect_max=0.1)
    pub = EventPublisher(dead, name="test-events-dead")
    failed = sample("failed")
    for i in range(3):
        pub.emit("job-2", "task-done", disk_key=i, bytes=1)
    assert not pub.flush(0.5)
    pub.close(timeout=0.5)
    assert sample("failed") == failed + 3

    # a field that is not a scalar is refused at emit, counted, never raised
    pub = EventPublisher(broker, name="test-events-bad")
    failed = sample("failed")
    pub.emit("job-3", "vm-done", status=["not", "a", "scalar"])  # type: ignore[arg-type]  # the bad input under test
    pub.close()
    assert sample("failed") == failed + 1


def test_routing_key_keeps_topic_words() -> None:
    assert routing_key("nightly-20240101T000000Z-abc", "vm-done") == (
        "job.nightly-20240101T000000Z-abc.vm-done"
    )
    assert routing_key("a.b*c#", "x.y") == "job.a_b_c_.x_y"
