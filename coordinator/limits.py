"""Load control: per-key concurrency slots (host, datastore) and the backup window."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """Waiting for a slot was given up (job cancelled or the window closed)."""


class KeyedLimiter:
    """At most ``limit`` holders per key; a holder may need several keys at once.

    All keys are taken together or not at all, so two holders that need the same
    pair of keys in different orders cannot deadlock.
    """

    def __init__(self, limit: int, name: str = "") -> None:
        if limit < 1:
            raise ValueError(f"limit {limit} must be >= 1")
        self.limit = limit
        self.name = name
        self._held: Counter[str] = Counter()
        self._cond = threading.Condition()
        self.peak: Counter[str] = Counter()

    def held(self, key: str) -> int:
        with self._cond:
            return self._held[key]

    def acquire(
        self,
        keys: Iterable[str],
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> None:
        ks = sorted(set(keys))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while any(self._held[k] >= self.limit for k in ks):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{self.name}: cancelled while waiting for {ks}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Cancelled(f"{self.name}: no slot for {ks} within {timeout}s")
                # wake up now and then to look at the cancel flag
                self._cond.wait(0.2 if left is None else min(0.2, left))
            for k in ks:
                self._held[k] += 1
                self.peak[k] = max(self.peak[k], self._held[k])

    def release(self, keys: Iterable[str]) -> None:
        with self._cond:
            for k in sorted(set(keys)):
                if self._held[k] <= 0:
                    raise RuntimeError(f"{self.name}: release of {k!r} that is not held")
                self._held[k] -= 1
                if not self._held[k]:
                    del self._held[k]
            self._cond.notify_all()

    @contextmanager
    def hold(self, keys: Iterable[str], cancel: threading.Event | None = None) -> Iterator[None]:
        ks = list(keys)
        self.acquire(ks, cancel)
        try:
            yield
        finally:
            self.release(ks)


class SnapshotSlots:
    """A VM may be snapshotted when its host and every datastore of its disks have room."""

    def __init__(self, per_host: int, per_datastore: int) -> None:
        self.hosts = KeyedLimiter(per_host, "snapshots per host")
        self.datastores = KeyedLimiter(per_datastore, "snapshots per datastore")
        self._lock = threading.Lock()

    @contextmanager
    def hold(
        self, host: str, datastores: Iterable[str], cancel: threading.Event | None = None
    ) -> Iterator[None]:
        ds = list(datastores)
        # host first, then datastores; both limiters take their keys atomically and a
        # holder never waits on the host limiter while holding datastore slots.
        self.hosts.acquire([host], cancel)
        try:
            self.datastores.acquire(ds, cancel)
        except BaseException:
            self.hosts.release([host])
            raise
        try:
            yield
        finally:
            self.datastores.release(ds)
            self.hosts.release([host])


def _hhmm(text: str) -> dt.time:
    h, m = text.split(":")
    return dt.time(int(h), int(m))


class BackupWindow:
    """A daily window [start, end) in local time; may span midnight. Empty = always open."""

    def __init__(self, start: str = "", end: str = "") -> None:
        self.always = not (start and end)
        self.start = _hhmm(start) if start else dt.time(0)
        self.end = _hhmm(end) if end else dt.time(0)

    def is_open(self, now: dt.datetime) -> bool:
        if self.always:
            return True
        t = now.time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def closes_at(self, now: dt.datetime) -> dt.datetime | None:
        """When the window that is open at ``now`` ends (None: always open or closed now)."""
        if self.always or not self.is_open(now):
            return None
        end = now.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= now:
            end += dt.timedelta(days=1)
        return end
