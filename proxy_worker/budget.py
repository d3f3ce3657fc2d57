"""A byte budget shared by every task of the proxy: the bound on chunk memory in flight."""

from __future__ import annotations

import threading


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, abort: threading.Event | None = None) -> None:
        """Block until ``n`` bytes fit (a request larger than the limit waits for an empty
        budget, so a huge chunk still goes through alone)."""
        n = max(n, 0)
        with self._cond:
            while self.used > 0 and self.used + n > self.limit:
                if abort is not None and abort.is_set():
                    raise InterruptedError("task aborted while waiting for memory")
                self._cond.wait(0.1)
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used -= n
            if self.used < 0:
                raise RuntimeError("memory budget released more than acquired")
            self._cond.notify_all()


class TaskBudget:
    """A task's share: remembers what it holds so a failed task gives everything back."""

    def __init__(self, shared: MemoryBudget, abort: threading.Event) -> None:
        self.shared = shared
        self.abort = abort
        self.held = 0
        self._lock = threading.Lock()

    def acquire(self, n: int) -> None:
        self.shared.acquire(n, self.abort)
        with self._lock:
            self.held += n

    def release(self, n: int) -> None:
        with self._lock:
            n = min(n, self.held)
            self.held -= n
        self.shared.release(n)

    def release_all(self) -> None:
        with self._lock:
            n, self.held = self.held, 0
        self.shared.release(n)
