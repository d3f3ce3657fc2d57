"""Per-host stream and bandwidth caps hold under a burst of concurrent readers.

Measured, not timed: the maximum concurrency seen, and the bytes admitted in every
sliding window compared with rate * window + burst."""

from __future__ import annotations

import threading
import time

from proxy_worker.settings import ThrottleSettings
from proxy_worker.throttle import MB, Throttle, ThrottledReader, TokenBucket
from proxy_worker.transports.file import FileTransport
from tests.proxy.proxy_helpers import MiB, SparseDisk


def test_caps_hold_under_a_burst(sparse_disk: SparseDisk) -> None:
    rate_mb, burst_mb, streams = 40.0, 1.0, 3
    throttle = Throttle(
        ThrottleSettings(
            max_streams_per_host=streams, max_mb_per_s_per_host=rate_mb, burst_mb=burst_mb
        )
    )
    transport = FileTransport(sparse_disk.settings)
    events: list[tuple[float, int]] = []
    lock = threading.Lock()
    active = 0
    max_active = 0
    piece = 256 * 1024

    def task(host: str) -> None:
        nonlocal active, max_active
        lim = throttle.host(host)
        with lim.stream():
            with lock:
                active += 1
                max_active = max(max_active, active)
            with ThrottledReader(transport.open(sparse_disk.source), lim) as r:
                for i in range(8):
                    data = r.read(i * piece, piece)
                    with lock:
                        events.append((time.monotonic(), len(data)))
            with lock:
                active -= 1

    threads = [threading.Thread(target=task, args=("esx-1",)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max_active == streams
    total = sum(n for _, n in events)
    assert total == 10 * 8 * piece
    # bytes admitted in any window of length w are at most rate*w + burst (+ one piece of
    # timer slack); measured over every window that starts at an event
    events.sort()
    for w in (0.1, 0.25, 0.5):
        for i, (t0, _) in enumerate(events):
            in_window = sum(n for t, n in events[i:] if t < t0 + w)
            assert in_window <= rate_mb * MB * w + burst_mb * MB + piece, (w, in_window)


def test_hosts_are_independent() -> None:
    th = Throttle(ThrottleSettings(max_streams_per_host=1))
    a, b = th.host("a"), th.host("b")
    assert th.host("a") is a and a is not b
    with a.stream(), b.stream():  # a held slot on one host never blocks another host
        assert a.active == 1 and b.active == 1
    got = threading.Event()

    def second() -> None:
        with a.stream():
            got.set()

    with a.stream():
        t = threading.Thread(target=second)
        t.start()
        assert not got.wait(0.2)  # the second stream waits for the slot
    t.join()
    assert got.is_set()


def test_token_bucket_debt_accounting() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=MiB, burst=MiB, clock=lambda: now[0])
    assert bucket.take(MiB) == 0.0  # the burst is free
    assert bucket.take(0) == 0.0
    slept = []
    import proxy_worker.throttle as mod

    real_sleep = mod.time.sleep
    mod.time.sleep = slept.append  # type: ignore[assignment]
    try:
        assert bucket.take(MiB // 2) == 0.5
        now[0] = 0.5
        assert bucket.take(MiB // 2) == 0.5  # still owes for the first half
    finally:
        mod.time.sleep = real_sleep  # type: ignore[assignment]
    assert slept == [0.5, 0.5]
    assert TokenBucket(rate=0, burst=1).take(10**9) == 0.0  # 0 = unlimited
