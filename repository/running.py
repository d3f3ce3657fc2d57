"""Running-backup markers: ``running/<32 hex of BLAKE3(job id)>`` while a backup is in
progress; gc keeps every chunk newer than the oldest marker's start (gc.py). Each marker
is one object of the repository's storage (storage.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any

import blake3

from repository.errors import MissingObjectError, RepositoryError
from repository.storage import Storage

PREFIX = "running"
_MARKER = re.compile(r"[0-9a-f][^/]*")  # what a marker's name starts with (and temps do not)


class RunningMarkers:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def _marker(job_id: str) -> str:
        return f"{PREFIX}/{blake3.blake3(job_id.encode()).hexdigest()[:32]}"

    def begin(self, job_id: str) -> None:
        """Declare a backup in progress: gc keeps every chunk newer than its start."""
        name = self._marker(job_id)
        if self.storage.exists(name):
            return
        doc = {
            "job_id": job_id,
            "started": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.storage.write(name, [json.dumps(doc).encode()])

    def end(self, job_id: str) -> None:
        self.storage.delete(self._marker(job_id))

    def list(self) -> list[dict[str, Any]]:
        out = []
        for obj in self.storage.list(PREFIX):
            if not _MARKER.fullmatch(obj.name[len(PREFIX) + 1 :]):
                continue
            where = self.storage.location(obj.name)
            try:
                doc = json.loads(self.storage.read(obj.name))
                out.append(
                    {
                        "job_id": str(doc["job_id"]),
                        # the object's mtime is in the clock domain of chunk mtimes
                        "started": min(float(doc["started"]), obj.mtime),
                        "host": doc.get("host", ""),
                        "marker": where,
                    }
                )
            except MissingObjectError:
                continue  # ended meanwhile
            except (RepositoryError, ValueError, KeyError, TypeError):
                # unreadable marker: treat as started at its mtime (conservative for gc)
                out.append({"job_id": "?", "started": obj.mtime, "host": "", "marker": where})
        return out
