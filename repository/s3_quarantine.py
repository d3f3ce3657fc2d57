"""A damaged blob of a pack on S3, quarantined: copied aside and no longer found.

pack_quarantine.py's rule, with S3's objects: verify copies the bad blob to the
quarantine with a record naming its place (``quarantine/<3 hex>/<64 hex>.json``, with
``pack``, ``offset``, ``length``), and the place stops counting as the chunk. Index
objects are not rewritten for it: they are one per pack, written once (and, under
Object Lock, an overwrite would be tampering: s3_lock_maintenance.py). Instead every
process's index leaves out the places that quarantine records name
(:class:`QuarantinedPlaces`, listed with each sync of the index): lookups, have-queries,
verify's pass and gc's sweep skip them, so the next backup of the same data stores a
good copy, a restore says "quarantined" rather than reading bad bytes, and gc counts the
damaged blob as dead space of its pack. ``put_back`` (repair: the quarantined copy
checks good, so it was a read error, not rot) drops the record: the place counts again.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING

from repository.errors import MissingObjectError
from repository.pack_index_file import Location
from repository.quarantine import PREFIX, RECORD_SUFFIX, Quarantine
from repository.storage import Storage

if TYPE_CHECKING:
    from repository.s3_pack_store import S3PackStore

_RECORD = re.compile(rf"{PREFIX}/[0-9a-f]{{3}}/([0-9a-f]{{64}}){re.escape(RECORD_SUFFIX)}")

Place = tuple[bytes, Location]  # (chunk id, where its bad blob is)


class QuarantinedPlaces:
    """The (chunk id, location) pairs the bucket's quarantine records name."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._by_record: dict[str, tuple[tuple[int, float], Place | None]] = {}
        self._listed: frozenset[Place] = frozenset()
        # this process's own changes, until a listing shows them (one may be running)
        self._added: set[Place] = set()
        self._removed: set[Place] = set()
        self._places: frozenset[Place] = frozenset()
        self._lock = threading.Lock()

    def holds(self, chunk_id: bytes, loc: Location) -> bool:
        return (chunk_id, loc) in self._places

    def sync(self) -> None:
        """One listing of ``quarantine/``; a record read when new or changed."""
        seen: dict[str, tuple[tuple[int, float], Place | None]] = {}
        for obj in self.storage.list(PREFIX):
            m = _RECORD.fullmatch(obj.name)
            if m is None:
                continue  # the blobs beside the records
            stamp = (obj.size, obj.mtime)
            known = self._by_record.get(obj.name)
            if known is not None and known[0] == stamp:
                seen[obj.name] = known
                continue
            try:
                seen[obj.name] = (
                    stamp,
                    _place(bytes.fromhex(m.group(1)), self.storage.read(obj.name)),
                )
            except MissingObjectError:
                continue  # dropped by repair meanwhile
        listed = frozenset(p for _, p in seen.values() if p is not None)
        with self._lock:
            self._by_record = seen
            self._added -= listed
            self._removed &= listed
            self._listed = listed
            self._update()

    def add(self, place: Place) -> None:
        """This process quarantined it: left out now, before the next listing."""
        with self._lock:
            self._added.add(place)
            self._removed.discard(place)
            self._update()

    def remove(self, place: Place) -> None:
        """This process put it back: counted now, before the next listing."""
        with self._lock:
            self._removed.add(place)
            self._added.discard(place)
            self._update()

    def _update(self) -> None:
        self._places = (self._listed | self._added) - self._removed


def _place(chunk_id: bytes, data: bytes) -> Place | None:
    """The place a record names; None for a record of no pack (a chunk file's, or
    unreadable: such a record hides nothing)."""
    try:
        rec = json.loads(data)
        return chunk_id, Location(
            bytes.fromhex(rec["pack"]), int(rec["offset"]), int(rec["length"])
        )
    except (ValueError, KeyError, TypeError):
        return None


def quarantine_blob(
    store: S3PackStore, q: Quarantine, chunk_id: bytes, loc: Location, data: bytes, reason: str
) -> None:
    where = {"pack": loc.pack.hex(), "offset": loc.offset, "length": loc.length}
    q.put_copy(chunk_id, data, reason, where)  # the blob, then the record
    store.index.quarantined.add((chunk_id, loc))


def put_back(store: S3PackStore, q: Quarantine, chunk_id: bytes, loc: Location) -> None:
    """The place counts again (every process at its next sync); the copy is dropped."""
    q.drop(chunk_id)
    store.index.quarantined.remove((chunk_id, loc))
