"""Load control on production hosts: a cap on concurrent disk streams and a MB/s cap per
ESXi host, shared by every worker thread of the proxy.

Bandwidth is a token bucket with debt: a reader takes the tokens for its request at once and
then sleeps until the bucket is no longer in debt, so over any window T a host serves at most
``rate * T + burst`` bytes, and no request size can starve the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from proxy_worker.settings import ThrottleSettings
from proxy_worker.transports.base import DiskReader, Extent

MB = 1_000_000


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[float, int], None] | None = None,
    ):
        self.rate = rate  # bytes per second; 0 = unlimited
        self.burst = burst
        self._clock = clock
        # told (admission time, bytes) under the lock, so a caller delayed by the scheduler
        # after admission cannot make admissions look bunched (tests measure the cap with it)
        self.observer = observer
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Take ``n`` bytes' worth of tokens; block while in debt. Returns seconds waited."""
        if self.rate <= 0 or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if self.observer is not None:
                self.observer(now + wait, n)
        if wait > 0:
            time.sleep(wait)
        return wait


class HostLimiter:
    """Stream slots and bandwidth of one ESXi host."""

    def __init__(self, host: str, settings: ThrottleSettings) -> None:
        self.host = host
        self.max_streams = settings.max_streams_per_host
        self._slots = threading.BoundedSemaphore(settings.max_streams_per_host)
        self.bucket = TokenBucket(
            settings.max_mb_per_s_per_host * MB, max(settings.burst_mb * MB, 1.0)
        )
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def stream(self) -> Iterator[float]:
        """Hold one stream slot for the block; yields the seconds spent waiting for it."""
        t0 = time.monotonic()
        self._slots.acquire()
        waited = time.monotonic() - t0
        with self._lock:
            self._active += 1
        try:
            yield waited
        finally:
            with self._lock:
                self._active -= 1
            self._slots.release()


class Throttle:
    """Registry of per-host limiters (created on first use), shared across threads."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self.settings = settings
        self._hosts: dict[str, HostLimiter] = {}
        self._lock = threading.Lock()

    def host(self, name: str) -> HostLimiter:
        with self._lock:
            lim = self._hosts.get(name)
            if lim is None:
                lim = self._hosts[name] = HostLimiter(name, self.settings)
            return lim


class ThrottledReader(DiskReader):
    """Wraps a reader: every read first takes its bytes from the host's bucket.
    ``on_wait(seconds)`` is told how long reads were held back (for metrics)."""

    def __init__(
        self,
        inner: DiskReader,
        limiter: HostLimiter,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(inner.capacity)
        self.inner = inner
        self.transport = inner.transport
        self.limiter = limiter
        self._on_wait = on_wait

    def _take(self, n: int) -> None:
        waited = self.limiter.bucket.take(n)
        if waited and self._on_wait is not None:
            self._on_wait(waited)

    def read(self, offset: int, length: int) -> bytes | bytearray:
        self._take(length)
        return self.inner.read(offset, length)

    def read_many(
        self, ranges: Iterable[tuple[int, int]]
    ) -> Iterator[tuple[int, bytes | bytearray]]:
        def paced() -> Iterator[tuple[int, int]]:
            for off, ln in ranges:
                self._take(ln)  # before the request is issued, so the host is never ahead
                yield off, ln

        return self.inner.read_many(paced())

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.inner.extents(offset, length)

    def close(self) -> None:
        self.inner.close()
