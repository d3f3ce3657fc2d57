"""Running-backup markers: ``running/<32 hex of BLAKE3(job id)>`` while a backup is in
progress; gc keeps every chunk newer than the oldest marker's start (gc.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import blake3

from repository.fsutil import write_atomic


class RunningMarkers:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _marker(self, job_id: str) -> Path:
        return self.root / blake3.blake3(job_id.encode()).hexdigest()[:32]

    def begin(self, job_id: str) -> None:
        """Declare a backup in progress: gc keeps every chunk newer than its start."""
        path = self._marker(job_id)
        if path.exists():
            return
        doc = {
            "job_id": job_id,
            "started": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        write_atomic(path, [json.dumps(doc).encode()], f"running-backup marker of {job_id}")

    def end(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker(job_id))

    def list(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.root.glob("[0-9a-f]*")):
            try:
                doc = json.loads(p.read_bytes())
                out.append(
                    {
                        "job_id": str(doc["job_id"]),
                        # the file's mtime is in the clock domain of chunk mtimes
                        "started": min(float(doc["started"]), p.stat().st_mtime),
                        "host": doc.get("host", ""),
                        "marker": str(p),
                    }
                )
            except (OSError, ValueError, KeyError, TypeError):
                # unreadable marker: treat as started at its mtime (conservative for gc)
                try:
                    out.append(
                        {"job_id": "?", "started": p.stat().st_mtime, "host": "", "marker": str(p)}
                    )
                except FileNotFoundError:
                    continue
        return out
