"""Holds on restore points: ``holds/<32 hex>`` while something reads a point outside a
backup (an export, a file-level restore, an instant recovery), so that prune keeps the
point and gc, which only frees what no point names, keeps its chunks.

A hold is one object of the repository's storage (storage.py), JSON: the point id, what
holds it, host, pid and start. Its holder refreshes it (``touch``) every REFRESH seconds;
a hold whose object was not refreshed for STALE seconds belongs to a process that was
killed and is ignored (prune reports it; gc removes it). The point is checked after the hold is
written: a prune that read the holds before ours was written may have removed the point
meanwhile, which the caller then sees as a missing point rather than a map whose chunks
gc is about to free.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

from repository.errors import MissingObjectError, RepositoryError
from repository.storage import Storage

PREFIX = "holds"
REFRESH = 60.0  # seconds between refreshes of a live hold
STALE = 15 * 60.0  # a hold not refreshed for this long: its holder is gone
RELEASE_WAIT = 10.0  # seconds release waits for a refresh in flight (a slow storage)


@dataclass(frozen=True)
class HoldInfo:
    name: str  # the object's name
    point_id: str
    purpose: str  # e.g. "export of disk 2000"
    host: str
    pid: int
    started: float
    refreshed: float  # the object's mtime, the storage's clock
    location: str

    def stale(self, now: float) -> bool:
        return self.refreshed < now - STALE

    def describe(self) -> str:
        return f"held by {self.purpose} (pid {self.pid} on {self.host or '?'})"


class Hold:
    """A live hold: refreshed by a daemon thread from :meth:`start_refresh` (start it in
    the process that lives as long as the hold, e.g. after a fork), removed by
    :meth:`release`."""

    def __init__(self, storage: Storage, name: str, point_id: str, doc: bytes) -> None:
        self.storage = storage
        self.name = name
        self.point_id = point_id
        self._doc = doc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_refresh(self, every: float = REFRESH) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._refresh, args=(every,), name="point-hold", daemon=True
            )
            self._thread.start()

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self.storage.touch(self.name):  # removed under us (gc of a stale one)
                    self.storage.write(self.name, [self._doc])
            except RepositoryError:
                # Rewriting needs the doc; a refresh that fails leaves the hold to go stale,
                # which only gives prune back its say over the point: never a loss.
                continue

    def release(self) -> None:
        self._stop.set()
        # a refresh half-way (its touch found nothing, its write not yet done) would
        # bring the hold back after the delete: let it finish first
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=RELEASE_WAIT)
        self.storage.delete(self.name)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PointHolds:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def hold(self, point_id: str, purpose: str) -> Hold:
        """Write a hold on ``point_id`` (durable when this returns)."""
        name = f"{PREFIX}/{secrets.token_hex(16)}"
        doc = {
            "point_id": point_id,
            "purpose": purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
        data = json.dumps(doc).encode()
        self.storage.write(name, [data])
        return Hold(self.storage, name, point_id, data)

    def all(self) -> list[HoldInfo]:
        """Every hold, stale ones included (``HoldInfo.stale``); an unreadable one is
        reported as holding nothing ("?")."""
        out = []
        for obj in self.storage.list(PREFIX):
            where = self.storage.location(obj.name)
            try:
                doc = json.loads(self.storage.read(obj.name))
                out.append(
                    HoldInfo(
                        obj.name,
                        str(doc["point_id"]),
                        str(doc.get("purpose", "?")),
                        str(doc.get("host", "")),
                        int(doc.get("pid", 0)),
                        float(doc.get("started", obj.mtime)),
                        obj.mtime,
                        where,
                    )
                )
            except MissingObjectError:
                continue  # released meanwhile
            except (RepositoryError, ValueError, KeyError, TypeError):
                out.append(
                    HoldInfo(obj.name, "?", "unreadable hold", "", 0, obj.mtime, obj.mtime, where)
                )
        return out

    def remove_stale(self, now: float, *, dry_run: bool = False) -> list[str]:
        """Remove the holds stale at ``now``; what they held, for the report."""
        gone = []
        for h in self.all():
            if h.stale(now):
                gone.append(f"{h.point_id} {h.describe()} ({h.location})")
                if not dry_run:
                    self.storage.delete(h.name)
        return gone
