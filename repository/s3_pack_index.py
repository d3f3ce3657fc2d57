"""Where each chunk of a repository on S3 is: the local cache of the bucket's index.

The bucket holds one index object per pack (``index/<pack>``, written at upload). The
cache directory's ``index/`` holds the same entries as mmap'd index files: a pack's
index as uploaded or downloaded (``<pack>.idx``), and files merged from many of them.
``sync`` makes the cache the bucket's with one listing of ``index/`` (never
``packs/``): what the bucket has and the cache covers nowhere is downloaded; a pack the
bucket no longer has (gc dropped it) leaves the cache, its file unlinked or a merged
file rewritten without it. Once the cache holds more than COMPACT_AT files they are
merged into one: a lookup bisects every file, so a cache of a file per pack would cost
milliseconds a chunk at a few thousand packs (bench/pack_index_lookup.py). Which packs
the cache covers is read from the files' own pack tables, never from their names.

Several processes may share a cache directory (commands run by hand beside a writer):
changes to it are made under ``index-cache.lock`` (flock), and every file is written
whole before it gets its name (a reader maps only complete, checked files).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from repository import pack_index_file
from repository.errors import MissingObjectError, RepositoryError
from repository.fsutil import lock_file, unlink_quiet, write_atomic
from repository.pack_compact import merge_index_files
from repository.pack_index import PackIndex
from repository.pack_index_file import IndexFile, Location
from repository.pack_store import COMPACT_AT
from repository.s3_pack_upload import INDEX
from repository.s3_quarantine import QuarantinedPlaces
from repository.s3_repo_storage import S3RepoStorage

CACHE_LOCK = "index-cache.lock"


class S3PackIndex(PackIndex):
    def __init__(self, storage: S3RepoStorage, root: Path, interval: float) -> None:
        super().__init__(root)
        self.root = root
        self.storage = storage
        self.interval = interval
        self._synced = -float("inf")
        self._sync_lock = threading.Lock()
        self.downloads = 0  # index objects fetched into the cache, for tests and stats
        self.quarantined = QuarantinedPlaces(storage)  # places left out (s3_quarantine.py)

    def refresh(self, *, force: bool = False) -> None:
        if force or time.monotonic() - self._synced >= self.interval:
            self.sync()
        super().refresh()

    def _read_logs(self) -> None:
        """Other processes' open packs are not uploaded: never counted as present."""

    def lookup(self, chunk_id: bytes) -> list[Location]:
        return [
            loc for loc in super().lookup(chunk_id) if not self.quarantined.holds(chunk_id, loc)
        ]

    def sync(self) -> None:
        """The cache made the bucket's (one listing of ``index/``), then compacted."""
        with self._sync_lock, lock_file(self.root / CACHE_LOCK, wait=True):
            started = time.monotonic()
            # the cache first: a file written after this look was uploaded before it
            PackIndex.refresh(self)
            covered = {p.hex() for f in self.files() for p in f.packs}
            remote: set[str] = set()
            for obj in self.storage.list(INDEX):
                h = obj.name[len(INDEX) + 1 :]
                if len(h) == 32 and "/" not in h:
                    remote.add(h)
            for h in sorted(remote - covered):
                self._download(h)
            self._forget({bytes.fromhex(h) for h in covered - remote})
            self._compact()
            self.quarantined.sync()
            self._synced = started

    def compact(self) -> None:
        """Merge the cache's files into one once there are more than COMPACT_AT."""
        with self._sync_lock, lock_file(self.root / CACHE_LOCK, wait=True):
            self._compact()

    def _compact(self) -> None:
        PackIndex.refresh(self)
        if len(self.files()) > COMPACT_AT:
            merge_index_files(self.root, self.files())
            PackIndex.refresh(self)

    def _download(self, h: str) -> None:
        try:
            data = self.storage.read(f"{INDEX}/{h}")
        except MissingObjectError:
            return  # removed by gc meanwhile
        path = self.index_dir / (h + pack_index_file.SUFFIX)
        write_atomic(path, [data], f"index file {h}", sync_dir=False)
        try:
            IndexFile(path).close()  # checked before anyone uses it
        except RepositoryError:
            unlink_quiet(path)
            raise
        self.downloads += 1

    def _forget(self, gone: set[bytes]) -> None:
        """Packs the bucket no longer has (gc removed or compacted them) out of the cache."""
        if not gone:
            return
        for f in self.files():
            if gone.isdisjoint(f.packs):
                continue
            if gone.issuperset(f.packs):
                unlink_quiet(f.path)
            else:  # a merged file: the rest of its entries stay
                merge_index_files(self.root, [f], keep=lambda _cid, loc: loc.pack not in gone)
