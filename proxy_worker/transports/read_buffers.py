"""Read buffers lent to the pipeline and reused once nothing refers to them any more.

A transport that reads into memory it provides (NBD's aio reads) takes a buffer here and
hands that very buffer on as the chunk: no copy out of a receive buffer, no zero-filling of
a fresh one (either costs about as much as the read itself: bench/RESULTS.md, Proxy).

The pool does not rely on anyone giving a buffer back. A buffer is free again when the
pool's own reference is the only one left (CPython's reference count): a hash or compress
job still running, a batch waiting for its ack, a view into it, a task that failed halfway
with chunks still queued somewhere, each keeps its buffer from being overwritten, with no
release call to forget on any path.
"""

from __future__ import annotations

import sys
import threading
from collections import deque


def _refs(pool: deque[bytearray], i: int) -> int:
    """References to ``pool[i]``, this call's own included."""
    return sys.getrefcount(pool[i])


# What _refs reads for a buffer that only the pool holds (measured, not assumed: the
# count of temporaries differs between interpreter versions).
_ONLY_POOL = _refs(deque([bytearray(1)]), 0)


class ReadBuffers:
    """Buffers of power-of-two sizes (chunk sizes), at most ``limit`` bytes of them kept.

    Beyond the limit, or for other sizes (a disk's short last chunk), ``take`` returns an
    ordinary new bytearray that goes away with its last user.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = 0  # bytes of pooled buffers, free or lent
        self._by_size: dict[int, deque[bytearray]] = {}
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes that nobody else refers to (contents stale)."""
        if size <= 0 or size & (size - 1):
            return bytearray(size)
        with self._lock:
            pool = self._by_size.setdefault(size, deque())
            buf = self._free_one(pool)
            if buf is not None:
                return buf
            if self.kept + size > self.limit:
                return bytearray(size)
            buf = bytearray(size)
            pool.append(buf)
            self.kept += size
            return buf

    @staticmethod
    def _free_one(pool: deque[bytearray]) -> bytearray | None:
        for i in range(len(pool)):
            if _refs(pool, i) == _ONLY_POOL:
                buf = pool[i]
                del pool[i]  # to the back: the longest-lent are looked at first next time
                pool.append(buf)
                return buf
        return None
