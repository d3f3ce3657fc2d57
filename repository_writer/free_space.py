"""The writer's free-space floor: refuse new chunk batches before the file system fills.

A batch written into a full file system fails halfway (a chunk's write or fsync gets
ENOSPC), after the proxy read, hashed and sent it. Below the floor the writer refuses
batches at once, with a reason that names the writer and the shard, so the proxy fails
the task instead of retrying it into the same wall, and the coordinator fails the job
fast. Have-queries and commits still work: they need (almost) no space, and a point whose
chunks are all stored can still be committed. The floor also keeps room for the maps
and metadata of points that are being committed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from common import metrics

MiB = 1 << 20


class FreeSpaceGuard:
    def __init__(self, path: Path, floor_bytes: int, *, recheck_s: float = 1.0) -> None:
        self.path = path
        self.floor_bytes = floor_bytes
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._free = -1
        self._checked = 0.0
        self._reserved = 0  # bytes of batches accepted and not yet written

    def free_bytes(self) -> int:
        """Bytes available to this process on the repository's file system (statvfs at
        most every ``recheck_s`` seconds: a batch costs more than one stat, not less)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.recheck_s or self._free < 0:
                st = os.statvfs(self.path)
                self._free = st.f_bavail * st.f_frsize
                self._checked = now
                metrics.WRITER_FREE_BYTES.set(self._free)
            return self._free

    def admit(self, incoming: int) -> str:
        """Take a batch of ``incoming`` bytes (reserved until ``done``) or say why not;
        "" = taken. Batches being written count against the floor: the free space a stat
        saw a moment ago is theirs too."""
        free = self.free_bytes()
        with self._lock:
            left = free - self._reserved - incoming
            if left >= self.floor_bytes:
                self._reserved += incoming
        if left >= self.floor_bytes:
            metrics.WRITER_ACCEPTING.set(1)
            return ""
        metrics.WRITER_ACCEPTING.set(0)
        floor = f"the floor of {self.floor_bytes / MiB:.0f} MiB (writer.min_free_mib)"
        if incoming == 0 or free - self._reserved < self.floor_bytes:
            return f"{free / MiB:.1f} MiB free on {self.path}, below {floor}"
        return (
            f"{free / MiB:.1f} MiB free on {self.path}: a batch of {incoming / MiB:.1f} MiB"
            f" would leave less than {floor}"
        )

    def done(self, incoming: int) -> None:
        """A batch admitted with ``admit`` is written (or failed)."""
        with self._lock:
            self._reserved -= incoming
            self._checked = 0.0  # what was written shows in the next statvfs

    def readiness(self) -> str:
        """ "" when a batch would be taken now, else why not (the writer's /ready)."""
        why = self.admit(0)
        return why
