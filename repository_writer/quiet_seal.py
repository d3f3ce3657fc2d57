"""Upload a writer's open packs as soon as the writer is quiet (s3:// repositories).

A point on S3 is committed only once every chunk it names is in an uploaded pack with
its index object (repository.py, ``commit_point``). The committing writer uploads its own
open packs; the chunks the OTHER writers acknowledged wait in their open packs until
those are sealed. Sealing by idle time (``pack_idle_seal``: per pack, polled) made each
commit wait for that timer: 2-3 s per job with 2 s, up to 30 s with the default.

A backup's commit comes right after its last batches were acknowledged, so a writer
seals its open packs once NO chunk batch (broker or stream) has been in flight for
``quiet_s``: event-driven (the last batch to finish wakes the sealer), writer-wide (a
busy writer's pool packs are never sealed because one of them was not written for a
moment, as per-pack idle times would). The cost: one partly filled pack per writer for
each quiet gap in the middle of a backup (a proxy between disks), at most one per gap.

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


class QuietSealer:
    """``begin``/``end`` around each chunk batch; a thread seals once ``quiet_s`` passed
    with nothing in flight after a batch ended."""

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
        self._stopping = False
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        with self._cond:
            self._inflight += 1
            self._generation += 1

    def end(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._dirty = True
            if self._inflight == 0:
                self._cond.notify_all()

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
            deadline = time.monotonic() + self.quiet_s
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
