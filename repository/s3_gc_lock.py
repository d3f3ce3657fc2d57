"""gc's lock on a storage without flock(): an object made with ``create`` (If-None-Match).

``locks/gc`` holds JSON {owner, host, pid, time}; whoever creates it holds the lock. A
thread rewrites it every ``REFRESH_S`` while gc runs (its mtime is the heartbeat); one
whose mtime is older than ``STALE_S`` (the holder was killed: no refresh for 10
minutes) is deleted and the create tried once more. Two gcs that find the same stale
lock at the same moment may both delete it; each then re-reads the object before it
sweeps and gives up unless it still names its own ``owner`` (``check``), so the narrow
window is the delete-and-create race itself (S3 has no conditional delete on RGW 16).
A local repository keeps its flock()ed lock file (gc.py).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from repository.errors import LockedError, MissingObjectError
from repository.storage import Storage

LOCK = "locks/gc"
REFRESH_S = 60.0
STALE_S = 600.0


def _body(owner: str) -> bytes:
    doc = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    return json.dumps(doc, sort_keys=True).encode()


def _holder(storage: Storage) -> dict[str, object] | None:
    try:
        doc = json.loads(storage.read(LOCK))
    except MissingObjectError:
        return None
    except ValueError:
        return {}  # unreadable (not ours): judged by its mtime only
    return doc if isinstance(doc, dict) else {}


class ObjectLock:
    def __init__(self, storage: Storage, *, stale: float = STALE_S) -> None:
        self.storage = storage
        self.stale = stale
        self.owner = uuid.uuid4().hex

    def acquire(self) -> None:
        """Create the lock object (taking over a stale one once); LockedError if held."""
        if self.storage.create(LOCK, [_body(self.owner)]):
            return
        try:
            st = self.storage.stat(LOCK)
        except MissingObjectError:
            st = None  # released meanwhile
        if st is not None:
            # the storage's clock: this object's mtime against one we touch now
            now = self._storage_now(st.mtime)
            if now - st.mtime < self.stale:
                held = _holder(self.storage) or {}
                raise LockedError(
                    f"another gc is running on {self.storage.location(LOCK)}: held by"
                    f" {held.get('host', '?')} pid {held.get('pid', '?')}, refreshed"
                    f" {now - st.mtime:.0f} s ago (stale after {self.stale:.0f} s)"
                )
            self.storage.delete(LOCK)
        if not self.storage.create(LOCK, [_body(self.owner)]):
            raise LockedError(f"another gc took {self.storage.location(LOCK)} just now")

    def _storage_now(self, fallback: float) -> float:
        # the lock object itself cannot be touched (that would refresh someone's lock):
        # the storage's now is the mtime of a fresh write of our own probe
        probe = f"locks/gc-probe-{self.owner}"
        self.storage.write(probe, [b""])
        try:
            return self.storage.stat(probe).mtime
        except MissingObjectError:
            return fallback
        finally:
            self.storage.delete(probe)

    def check(self) -> None:
        """LockedError unless the lock object still names this owner."""
        held = _holder(self.storage)
        if held is None or held.get("owner") != self.owner:
            raise LockedError(
                f"gc lost its lock {self.storage.location(LOCK)} (taken over as stale);"
                " stopped before removing anything more"
            )

    def refresh(self) -> None:
        self.check()
        self.storage.write(LOCK, [_body(self.owner)])

    def release(self) -> None:
        held = _holder(self.storage)
        if held is not None and held.get("owner") == self.owner:
            self.storage.delete(LOCK)


@contextmanager
def object_lock(storage: Storage, *, refresh: float = REFRESH_S) -> Iterator[ObjectLock]:
    """Hold gc's lock object for the block, refreshed by a thread every ``refresh``."""
    lock = ObjectLock(storage)
    lock.acquire()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(refresh):
            try:
                lock.refresh()
            except Exception:  # lost or unreachable: check() before each removal says so
                return

    t = threading.Thread(target=beat, name="gc-lock-refresh", daemon=True)
    t.start()
    try:
        yield lock
    finally:
        stop.set()
        t.join()
        lock.release()
