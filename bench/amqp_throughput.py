"""Publish-with-confirms and consume-with-ack throughput: vmbackup's layer vs bare pika.

Both sides run in the same process against the same broker, one after the other, on
the same quorum task queue in a throw-away vhost. The bare publisher is the best
pika loop we know (SelectConnection, a window of unconfirmed messages, multiple acks
counted); the bare consumer acks in the I/O callback with the same prefetch.

    .venv/bin/python -m bench.amqp_throughput [--small N] [--large N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

import pika
from pika.adapters.utils import io_services_utils

from common import amqp
from common.amqp import BrokerParams, Consumer, Publisher
from tests.conftest import BROKER_URL, drop_vhost, make_vhost

ROUTING_KEY = "host.bench"
QUEUE = amqp.task_queue(ROUTING_KEY)


def bare_publish(params: BrokerParams, body: bytes, n: int, window: int) -> float:
    """SelectConnection publisher keeping ``window`` unconfirmed; returns seconds."""
    state = {"sent": 0, "acked": 0, "t0": 0.0, "t1": 0.0}

    def pump(ch: pika.channel.Channel) -> None:
        props = pika.BasicProperties(delivery_mode=2)
        while state["sent"] < n and state["sent"] - state["acked"] < window:
            ch.basic_publish(amqp.EXCHANGE_TASKS, ROUTING_KEY, body, props, mandatory=True)
            state["sent"] += 1

    def on_open(conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: pika.channel.Channel) -> None:
        def on_confirm(frame: pika.frame.Method) -> None:
            tag = frame.method.delivery_tag
            state["acked"] = tag if frame.method.multiple else max(state["acked"], tag)
            if state["acked"] >= n:
                state["t1"] = time.perf_counter()
                ch.connection.close()
            else:
                pump(ch)

        def on_mode(_f: object) -> None:
            state["t0"] = time.perf_counter()
            pump(ch)

        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=on_mode)

    conn = pika.SelectConnection(
        params.pika_params("bench-bare-pub"),
        on_open_callback=on_open,
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    conn.ioloop.start()
    return state["t1"] - state["t0"]


def bare_consume(params: BrokerParams, n: int, prefetch: int) -> float:
    conn = pika.BlockingConnection(params.pika_params("bench-bare-consume"))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = 0
    t0 = time.perf_counter()

    def on_msg(c: object, method: pika.spec.Basic.Deliver, _p: object, _b: bytes) -> None:
        nonlocal got
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got >= n:
            ch.stop_consuming()

    ch.basic_consume(QUEUE, on_msg)
    ch.start_consuming()
    dt = time.perf_counter() - t0
    conn.close()
    return dt


def ours_publish(params: BrokerParams, body: bytes, n: int, window: int) -> float:
    with Publisher(params, window=window) as pub:
        pub.wait_ready()
        t0 = time.perf_counter()
        futs = [pub.publish(amqp.EXCHANGE_TASKS, ROUTING_KEY, body) for _ in range(n)]
        pub.flush(futs, timeout=600)
        return time.perf_counter() - t0


def ours_consume(params: BrokerParams, n: int, prefetch: int) -> float:
    done = threading.Event()
    lock = threading.Lock()
    got = [0]

    def handler(_msg: object, _d: amqp.Delivery) -> None:
        with lock:
            got[0] += 1
            if got[0] >= n:
                done.set()

    # Raw bodies are not messages: feed valid ones so the decode path is measured too.
    c = Consumer(params, [QUEUE], handler, prefetch=prefetch, workers=2, name="bench-consume")
    t0 = time.perf_counter()
    c.start()
    done.wait(600)
    dt = time.perf_counter() - t0
    c.stop()
    return dt


def message_body(size: int) -> bytes:
    from common.messages import ChunkBatch, encode

    # A chunk batch of the requested size: what the pipeline really moves.
    payload = os.urandom(max(0, size - 120))
    return encode(ChunkBatch("b" * 16, "t" * 16, "r" * 16, [(b"\x01" * 32, 1, False, payload)]))


def run(small: int, large: int, window: int, prefetch: int, repeat: int) -> list[dict[str, object]]:
    vhost = make_vhost("bench")
    rows: list[dict[str, object]] = []
    try:
        params = BrokerParams(url=BROKER_URL).with_vhost(vhost)
        amqp.declare_topology(params, task_keys=[ROUTING_KEY])
        for label, size, n in (("1 KiB", 1024, small), ("1 MiB", 1 << 20, large)):
            body = message_body(size)
            cases: list[tuple[str, Callable[[], float], Callable[[], float]]] = [
                (
                    "publish+confirm",
                    lambda b=body, k=n: bare_publish(params, b, k, window),
                    lambda b=body, k=n: ours_publish(params, b, k, window),
                ),
            ]
            for what, bare_fn, ours_fn in cases:
                # Alternate bare and ours, best of `repeat`: the broker warms up and other
                # load on the box comes and goes; best-of compares each at its best.
                t_bare = t_cons_bare = t_ours = t_cons_ours = float("inf")
                for _ in range(repeat):
                    t_bare = min(t_bare, bare_fn())
                    t_cons_bare = min(t_cons_bare, bare_consume(params, n, prefetch))
                    t_ours = min(t_ours, ours_fn())
                    t_cons_ours = min(t_cons_ours, ours_consume(params, n, prefetch))
                for op, tb, to in (
                    (what, t_bare, t_ours),
                    ("consume+ack", t_cons_bare, t_cons_ours),
                ):
                    rows.append(
                        {
                            "size": label,
                            "op": op,
                            "n": n,
                            "bare_msgs": n / tb,
                            "ours_msgs": n / to,
                            "bare_mib": n * len(body) / tb / 2**20,
                            "ours_mib": n * len(body) / to / 2**20,
                            "ratio": tb / to,
                        }
                    )
    finally:
        drop_vhost(vhost)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=20000, help="1 KiB messages per case")
    ap.add_argument("--large", type=int, default=500, help="1 MiB messages per case")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--prefetch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    ap.add_argument(
        "--recv-bytes",
        type=int,
        default=None,
        help="socket read size of every pika connection here, bare ones included (default:"
        " common.amqp.RECV_BYTES; 4096 is pika's own)",
    )
    ap.add_argument(
        "--pika-wire",
        choices=("ours", "pika"),
        default="ours",
        help="frame reader/writer of every connection here: common/amqp_wire.py's (ours, what"
        " the roles run) or pika's own (the patch left out, for the comparison)",
    )
    args = ap.parse_args()
    if args.pika_wire == "pika":
        from common import amqp_wire

        amqp_wire.install = lambda: None  # type: ignore[assignment]  # leave pika's own
    if args.recv_bytes is not None:
        io_services_utils._AsyncTransportBase._MAX_RECV_BYTES = args.recv_bytes
        io_services_utils._AsyncTransportBase._MAX_CONSUME_BYTES = max(102400, 4 * args.recv_bytes)
    print(f"pika socket reads of {io_services_utils._AsyncTransportBase._MAX_RECV_BYTES} bytes")
    import resource

    load0 = os.getloadavg()[0]
    rows = run(args.small, args.large, args.window, args.prefetch, args.repeat)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    load1 = os.getloadavg()[0]
    print(
        f"frame reader/writer: {args.pika_wire}; this process's CPU {cpu:.1f} s"
        f" (user {ru.ru_utime:.1f}, sys {ru.ru_stime:.1f}); load {load0:.2f}->{load1:.2f}"
    )
    print(
        "| size | operation | messages | bare pika msg/s | vmbackup msg/s | bare MiB/s "
        "| vmbackup MiB/s | vmbackup / bare |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['op']} | {r['n']} | {r['bare_msgs']:.0f} | {r['ours_msgs']:.0f} "
            f"| {r['bare_mib']:.1f} | {r['ours_mib']:.1f} | {r['ratio']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
