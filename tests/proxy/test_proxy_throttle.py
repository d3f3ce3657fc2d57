"""Per-host stream and bandwidth caps hold under a burst of concurrent readers.

Measured, not timed: the maximum concurrency seen, and the bytes admitted in every
sliding window compared with rate * window + burst. Admission times come from the token
bucket itself (its observer hook, under its lock), so a reader thread that the scheduler
delays after admission cannot make admissions look bunched; each read is also checked to
start no earlier than its admission, which is what makes the bucket's times the real ones."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from proxy_worker.settings import ThrottleSettings
from proxy_worker.throttle import MB, Throttle, ThrottledReader, TokenBucket
from proxy_worker.transports.base import DiskReader
from proxy_worker.transports.file import FileTransport
from tests.proxy.proxy_helpers import MiB, SparseDisk


class _StartRecorder(DiskReader):
    """Notes when each read reaches the transport (after the throttle let it through)."""

    def __init__(self, inner: DiskReader, starts: list[float]) -> None:
        super().__init__(inner.capacity)
        self.inner = inner
        self.starts = starts

    def read(self, offset: int, length: int) -> bytes | bytearray:
        self.starts.append(time.monotonic())
        return self.inner.read(offset, length)

    def close(self) -> None:
        self.inner.close()


def test_caps_hold_under_a_burst(sparse_disk: SparseDisk) -> None:
    rate_mb, burst_mb, streams = 40.0, 1.0, 3
    throttle = Throttle(
        ThrottleSettings(
            max_streams_per_host=streams, max_mb_per_s_per_host=rate_mb, burst_mb=burst_mb
        )
    )
    transport = FileTransport(sparse_disk.settings)
    lock = threading.Lock()
    admitted: list[tuple[float, int]] = []
    admits_by_thread: dict[int, list[float]] = defaultdict(list)
    starts_by_thread: dict[int, list[float]] = defaultdict(list)

    def observe(at: float, n: int) -> None:  # runs in the reading thread, under the bucket lock
        admitted.append((at, n))
        admits_by_thread[threading.get_ident()].append(at)

    lim0 = throttle.host("esx-1")
    lim0.bucket.observer = observe
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
            inner = _StartRecorder(
                transport.open(sparse_disk.source), starts_by_thread[threading.get_ident()]
            )
            with ThrottledReader(inner, lim) as r:
                for i in range(8):
                    assert len(r.read(i * piece, piece)) == piece
            with lock:
                active -= 1

    threads = [threading.Thread(target=task, args=("esx-1",)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max_active == streams
    assert sum(n for _, n in admitted) == 10 * 8 * piece
    # no read reached the disk before the bucket admitted it (sleep never returns early;
    # 1 µs for float rounding of the monotonic clock)
    assert admits_by_thread.keys() == starts_by_thread.keys()
    for ident, admits in admits_by_thread.items():
        starts = starts_by_thread[ident]
        assert len(starts) == len(admits) == 8
        for a, s in zip(admits, starts, strict=True):
            assert s >= a - 1e-6, (a, s)
    # bytes admitted in any window of length w are at most rate*w + burst (+ one piece: the
    # debt bucket admits a request once the debt before it is paid); every window that
    # starts at an admission
    admitted.sort()
    for w in (0.1, 0.25, 0.5):
        for i, (t0, _) in enumerate(admitted):
            in_window = sum(n for t, n in admitted[i:] if t < t0 + w)
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
