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
from pathlib import Path

from repository_writer import metrics

MiB = 1 << 20


class FreeSpaceGuard:
    def __init__(self, path: Path, floor_bytes: int) -> None:
        self.path = path
        self.floor_bytes = floor_bytes  # 0: no floor, only ENOSPC refuses
        self._lock = threading.Lock()
        self._reserved = 0  # bytes of batches accepted and not yet written
        self._largest = 0  # the largest batch seen: what readiness asks room for

    def free_bytes(self) -> int:
        """Bytes available to this process on the repository's file system (one statvfs:
        a few microseconds, against milliseconds to store a batch)."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        metrics.WRITER_FREE_BYTES.set(free)
        return free

    def admit(self, incoming: int) -> str:
        """Take a batch of ``incoming`` bytes (reserved until ``done``) or say why not;
        "" = taken. Batches being written count against the floor: the free space a stat
        saw a moment ago is theirs too."""
        return self._check(incoming, reserve=True)

    def done(self, incoming: int) -> None:
        """A batch admitted with ``admit`` is written (or failed)."""
        with self._lock:
            self._reserved -= incoming

    def readiness(self) -> str:
        """ "" while a batch as large as the largest seen would be taken, else why not
        (the writer's /ready): a writer that refuses every batch is not ready."""
        return self._check(self._largest, reserve=False)

    def _check(self, incoming: int, *, reserve: bool) -> str:
        if not self.floor_bytes:
            return ""
        free = self.free_bytes()
        with self._lock:
            self._largest = max(self._largest, incoming)
            left = free - self._reserved - incoming
            if left >= self.floor_bytes and reserve:
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
