"""Upload a writer's open packs as soon as the writer is quiet (s3:// repositories).

A point on S3 is committed only once every chunk it names is in an uploaded pack with
its index object (repository.py, ``commit_point``). The committing writer uploads its own
open packs; the chunks the OTHER writers acknowledged wait in their open packs until
those are sealed. Sealing by idle time (``pack_idle_seal``: per pack, polled) made each
commit wait for that timer: 2-3 s per job with 2 s, up to 30 s with the default.

A backup's commit comes right after its last batches were acknowledged, so a writer
seals its open packs once NO chunk batch (broker or stream) has been in flight for
``quiet_s`` (longer on a loaded machine: QuietSealer): event-driven (the last batch to
finish wakes the sealer), writer-wide (a busy writer's pool packs are never sealed
because one of them was not written for a moment, as per-pack idle times would). The
cost: one partly filled pack per writer for each quiet gap in the middle of a backup (a
proxy between disks), at most one per gap.

The durability rule is unchanged: sealing earlier only changes when a commit finds its
chunks; the commit still checks that each is in the bucket's index.
"""

from __future__ import annotations

import threading
import time

from common.logging import get_logger
from repository.errors import RepositoryError
from repository.pack_store import PackStore

log = get_logger(__name__)


GAP_FACTOR = 2.0  # a quiet gap must be this many times the longest gap of the backup
MAX_FACTOR = 8.0  # at most this many times quiet_s; a longer gap starts a new backup


class QuietSealer:
    """``begin``/``end`` around each chunk batch; a thread seals once the writer was quiet
    (nothing in flight) for ``quiet_s`` after a batch ended, or for GAP_FACTOR times the
    longest gap between batches seen since the last gap of MAX_FACTOR x ``quiet_s``: on a
    loaded machine (proxies starved of CPU) the gaps in the middle of a backup grow, and so
    does the quiet time taken for its end, so they do not each upload a partly filled pack.
    """

    def __init__(self, store: PackStore, quiet_s: float, name: str) -> None:
        if quiet_s <= 0:
            raise ValueError(f"quiet seal: {quiet_s} s must be above 0")
        self.store = store
        self.quiet_s = quiet_s
        self.name = name
        self.seals = 0  # quiet gaps in which packs were sealed (tests, logs)
        self._cond = threading.Condition()
        self._inflight = 0
        self._generation = 0  # batches begun: one beginning during the wait restarts it
        self._dirty = False  # a batch ended since the last seal
        self._quiet_since: float | None = None  # when the last batch in flight ended
        self._gap_max = 0.0  # the longest gap between batches of this backup
        self._stopping = False
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        with self._cond:
            if self._inflight == 0 and self._quiet_since is not None:
                gap = time.monotonic() - self._quiet_since
                self._gap_max = 0.0 if gap >= self.cap else max(self._gap_max, gap)
            self._inflight += 1
            self._generation += 1

    def end(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._dirty = True
            if self._inflight == 0:
                self._quiet_since = time.monotonic()
                self._cond.notify_all()

    @property
    def cap(self) -> float:
        return self.quiet_s * MAX_FACTOR

    def quiet_needed(self) -> float:
        """Seconds of quiet after which the open packs are sealed, now."""
        return min(self.cap, max(self.quiet_s, GAP_FACTOR * self._gap_max))

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"{self.name}-quiet-seal", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _quiet(self) -> bool:
        """Wait for a quiet gap (under the lock); False when stopping."""
        while not self._stopping:
            if self._inflight or not self._dirty:
                self._cond.wait()
                continue
            gen = self._generation
            assert self._quiet_since is not None  # set by the end that made it dirty
            deadline = self._quiet_since + self.quiet_needed()
            while not self._stopping and gen == self._generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if not self._stopping and gen == self._generation:  # nothing began meanwhile
                self._dirty = False
                return True
        return False

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._quiet():
                    return
            try:
                n = self.store.seal_idle(0.0)  # every open pack not being written to
            except RepositoryError as exc:  # the idle sealer and the commit try again
                log.warning("pack_quiet_seal_failed", error=str(exc))
                continue
            if n:
                self.seals += 1
                log.info("packs_sealed_quiet", packs=n, quiet_s=self.quiet_s)
