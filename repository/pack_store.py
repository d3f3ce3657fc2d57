"""Chunks in pack files: the chunk store of a version-3 repository.

The same questions as chunk_store.ChunkStore answers for chunk files (is it there,
store these, read that one), for chunks appended to packs (pack_writer.py) and found
through the index (pack_index.py). A batch costs one pwritev and one fdatasync in
whichever open pack its thread takes from the pool (one per concurrent writer thread),
instead of a file, two fsyncs and a rename per chunk. Lookups never read a pack.
Presence answers are recorded in the touch log first (touch_log.py: gc's protection of
chunks a running backup relies on).

While `repo upgrade` converts a version-2 repository (chunk files) into packs, ``legacy``
is the chunk-file store of the chunks not converted yet: a lookup that misses the index
looks there, and one that misses there too looks at the index again (the upgrade writes
a pack's index before it deletes the pack's chunk files, so a chunk is always in one of
the two places: docs/repository-format.md, "Upgrading from version 2"). New chunks go
into packs only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from repository import pack_writer, read_runs
from repository.chunk_store import ChunkStore, check_id
from repository.errors import MissingChunkError, RepositoryError
from repository.fsutil import lock_file
from repository.pack_index import PACK_SUFFIX, PackIndex
from repository.pack_index_file import Location
from repository.pack_writer import Blob, OpenPack, sealed_path
from repository.touch_log import TouchLog

DEFAULT_PACK_SIZE = 128 * 1024 * 1024  # bench/RESULTS.md, "Files in the repository"
MIN_PACK_SIZE = 1024 * 1024
MAX_PACK_SIZE = 1024 * 1024 * 1024
COMPACT_AT = 16  # index files; more are merged into one (under the gc lock)
GC_LOCK = "locks/gc"

_live: weakref.WeakSet[PackStore] = weakref.WeakSet()


class PackStore:
    # read_many reads runs of neighbours at all: S3 (a request each) does; local packs
    # do not (one pread per chunk measured the same: bench/RESULTS.md, #22 part 2)
    coalesce_reads = False

    def __init__(
        self,
        root: Path,
        size_range: tuple[int, int],
        pack_size: int,
        legacy: ChunkStore | None = None,
    ) -> None:
        self.root = root
        self.legacy = legacy  # chunk files of an unfinished upgrade from version 2
        self.size_range = size_range
        self.pack_size = pack_size
        self.index = PackIndex(root)
        self.touches = TouchLog(root)
        self._free: list[OpenPack] = []
        self._lock = threading.Lock()
        self._recovered = False
        self.index.refresh()
        _live.add(self)

    # --- presence --------------------------------------------------------------------

    def touch_many(self, ids: Sequence[bytes], *, settle: bool = True) -> list[bool]:
        """Which ids are stored, recorded in the touch log before the lookup."""
        for cid in ids:
            check_id(cid)
        self.touches.record(ids)
        self.index.refresh()
        found = [bool(self.index.lookup(cid)) for cid in ids]
        if self.legacy is not None and not all(found):
            for i, cid in enumerate(ids):
                # the chunk file's mtime is its gc mark until the upgrade packs it
                if not found[i] and not self.legacy.touch(cid, settle=settle):
                    found[i] = self._converted(cid)
        return found

    def touch(self, chunk_id: bytes, *, settle: bool = True) -> bool:
        return self.touch_many([chunk_id], settle=settle)[0]

    def exists(self, chunk_id: bytes) -> bool:
        check_id(chunk_id)
        if self.index.lookup(chunk_id):
            return True
        self.index.refresh()
        if self.index.lookup(chunk_id):
            return True
        if self.legacy is not None:
            return self.legacy.exists(chunk_id) or self._converted(chunk_id)
        return False

    def _converted(self, chunk_id: bytes) -> bool:
        """Packed (and its chunk file deleted) by the upgrade since the first lookup."""
        self.index.refresh()
        return bool(self.index.lookup(chunk_id))

    # --- reading ---------------------------------------------------------------------

    def locations(self, chunk_id: bytes) -> list[Location]:
        check_id(chunk_id)
        locs = self.index.lookup(chunk_id)
        if not locs:
            self.index.refresh()
            locs = self.index.lookup(chunk_id)
        return locs

    def read(self, chunk_id: bytes) -> bytes:
        """The blob of a chunk (the first copy the index names)."""
        locs = self.locations(chunk_id)
        if not locs and self.legacy is not None:
            with contextlib.suppress(MissingChunkError):
                return self.legacy.read(chunk_id)
            locs = self.locations(chunk_id)  # packed by the upgrade meanwhile
        if not locs:
            raise MissingChunkError(f"chunk {chunk_id.hex()} is missing (in no pack's index)")
        return self.read_at(chunk_id, locs[0])

    def read_at(self, chunk_id: bytes, loc: Location) -> bytes:
        path = self.pack_path(loc.pack)
        try:
            with open(path, "rb") as fh:
                data = os.pread(fh.fileno(), loc.length, loc.offset)
        except FileNotFoundError:
            raise MissingChunkError(
                f"chunk {chunk_id.hex()} is missing (pack {loc.pack.hex()} is gone)"
            ) from None
        except OSError as exc:
            raise RepositoryError(f"cannot read chunk {chunk_id.hex()} from {path}: {exc}") from exc
        if len(data) != loc.length:
            raise RepositoryError(
                f"chunk {chunk_id.hex()}: pack {path} ends at {loc.offset + len(data)}, "
                f"its index says {loc.offset + loc.length}"
            )
        return data

    def read_many(self, chunk_ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """The blobs of those of ``chunk_ids`` that lie close to another of them in one
        pack, each run of such neighbours read with one request (read_runs.py). Left out
        (for ``read``, one by one, with its lookups, retries and errors): a chunk alone
        in its run, one the index does not name, one in a pack gone or shorter than its
        index (``read`` looks it up again, or names the chunk in its error). Other read
        errors (the endpoint down) are raised. Unchecked, as ``read``'s: the caller
        checks each blob against its id."""
        if not self.coalesce_reads:
            return {}
        wanted: list[tuple[bytes, Location]] = []
        for cid in dict.fromkeys(chunk_ids):
            locs = self.index.lookup(check_id(cid))
            if locs:
                wanted.append((cid, locs[0]))
        out: dict[bytes, bytes] = {}
        for run in read_runs.plan(wanted):
            if len(run.members) > 1 and (data := self._read_run(run)) is not None:
                out.update(read_runs.cut(run, data))
        return out

    def _read_run(self, run: read_runs.Run) -> bytes | None:
        """The bytes of ``run`` in its pack; None to leave its chunks to ``read``."""
        path = self.pack_path(run.pack)
        try:
            with open(path, "rb") as fh:
                data = os.pread(fh.fileno(), run.length, run.offset)
        except OSError:
            return None
        return data if len(data) == run.length else None

    def read_pack(self, pack: bytes) -> bytes:
        """A sealed pack's whole bytes (verify)."""
        return self.pack_path(pack).read_bytes()

    def pack_where(self, pack: bytes) -> str:
        """Where the pack is, for messages."""
        return str(self.pack_path(pack))

    def pack_path(self, pack: bytes) -> Path:
        """A sealed pack's file, or its open file while it is still being written."""
        final = sealed_path(self.root, pack)
        if final.exists():
            return final
        opened = self.root / "packs" / "open" / (pack.hex() + PACK_SUFFIX)
        return opened if opened.exists() else final

    # --- writing ---------------------------------------------------------------------

    def write_many(self, items: Sequence[Blob]) -> list[bool]:
        """Append the blobs (each id once) durably to an open pack; which were written."""
        self._recover_once()
        first: dict[bytes, Blob] = {}
        written: list[bool] = []
        for cid, parts in items:
            written.append(cid not in first)
            first.setdefault(cid, (cid, parts))
        if not first:
            return written
        with self._lock:
            pack = self._free.pop() if self._free else None
        if pack is None:
            pack = self._open_pack()
        try:
            locs = pack.append(list(first.values()))
        except BaseException:
            with self._lock:
                self._free.append(pack)
            raise
        for cid, loc in zip(first, locs, strict=True):
            self.index.add_own(cid, loc)
        if pack.size >= self.pack_size:
            self._seal_full(pack)
        else:
            with self._lock:
                self._free.append(pack)
        return written

    def _open_pack(self) -> OpenPack:
        """A new open pack (s3_pack_store.py makes ones that upload when sealed)."""
        return OpenPack(self.root)

    def _seal_full(self, pack: OpenPack) -> None:
        """A pack that reached the pack size (s3_pack_store.py uploads it meanwhile)."""
        self._seal(pack)

    def _seal(self, pack: OpenPack) -> None:
        pack.seal()
        self.index.forget_own(pack.id)
        if len(self.index.files()) > COMPACT_AT:
            self.compact()

    def seal_idle(self, idle_s: float, max_age_s: float = 0.0) -> int:
        """Seal the open packs of this process that received nothing for ``idle_s``
        seconds (the last chunks of a backup window would otherwise wait in open packs
        for the next window, or the writer's exit), or were opened ``max_age_s`` ago
        (> 0; on S3 other writers' commits wait for them); how many were sealed. Packs a
        thread is writing to are not in the free list, so never sealed here mid-batch."""
        now = time.monotonic()

        def due(p: OpenPack) -> bool:
            return now - p.last_write >= idle_s or 0 < max_age_s <= now - p.opened

        with self._lock:
            idle = [p for p in self._free if due(p)]
            self._free = [p for p in self._free if p not in idle]
        for pack in idle:
            self._seal(pack)
        return len(idle)

    def flush(self) -> None:
        """Seal every open pack of this process (idle, or shutting down)."""
        with self._lock:
            packs, self._free = self._free, []
        for pack in packs:
            self._seal(pack)

    def compact(self) -> bool:
        """Merge the index files into one, unless gc holds its lock (then gc does)."""
        from repository.pack_compact import merge_index_files

        with lock_file(self.root / GC_LOCK, wait=False) as got:
            if not got:
                return False
            self.index.refresh()
            merge_index_files(self.root, self.index.files())
            self.index.refresh()
        return True

    def _recover_once(self) -> None:
        if not self._recovered:
            self._recovered = True
            self.recover()

    def recover(self) -> int:
        n = pack_writer.recover(self.root, self.size_range)
        if n:
            self.index.refresh()
        return n

    def close(self) -> None:
        self.flush()
        self.touches.close()

    # --- for gc, verify, stats -------------------------------------------------------

    def iter_ids(self) -> Iterable[tuple[bytes, Location]]:
        """Every indexed (id, location), index file by index file (duplicates possible)."""
        self.index.refresh()
        for f in self.index.files():
            yield from f


@atexit.register
def _flush_all() -> None:
    """A process that stores chunks and exits seals its packs (a kill leaves them to
    recovery, which reads their records)."""
    for store in list(_live):
        with contextlib.suppress(Exception):
            store.close()
