"""The chunk store of a version-3 repository on S3: packs uploaded, index cached locally.

Writing is PackStore's (open packs in the cache directory, one fdatasync per batch);
an open pack's durable bytes go up as multipart parts while it fills
(s3_pack_stream.py) and sealing uploads the rest (s3_pack_upload.py). ``flush`` (which
every point commit calls first) seals and uploads this process's open packs, waiting for
one another thread is appending to, so a committed point never names a chunk that is
only in the cache: a commit costs at most one upload per open pack (its last part and
the completion, or one PUT of a pack smaller than a part).

Finding chunks: the index cache is the cache directory's ``index/`` (the same mmap'd
files as a local repository's index, merged as they accumulate: s3_pack_index.py).
``refresh`` lists the bucket's ``index/`` (never ``packs/``) and downloads what the
cache lacks and drops what the bucket no longer has, when ``refresh_interval`` has
passed or a lookup that must not miss (a read, a commit's check) missed; other
processes' open packs are never looked at (their chunks are not uploaded yet: storing a
chunk twice is harmless, relying on one only in someone's cache is not). An empty or
missing cache is rebuilt from the bucket on open. Reading a chunk is one ranged GET of
its bytes in its pack object; ``read_many`` (a restore's next chunks) reads neighbours in
one pack with one GET.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repository import read_runs
from repository.errors import MissingChunkError, MissingObjectError, RepositoryError
from repository.fsutil import makedirs_durable, unlink_quiet
from repository.pack_index import PACK_SUFFIX
from repository.pack_index_file import Location
from repository.pack_store import PackStore
from repository.s3_pack_index import S3PackIndex
from repository.s3_pack_upload import (
    INDEX,
    PACKS,
    UploadingPack,
    cached_index,
    index_object,
    pack_object,
    recover,
)
from repository.s3_repo_storage import S3RepoStorage, ShortObjectError

REFRESH_S = 60.0  # seconds between listings of index/ while lookups hit
UPLOADS_AT_ONCE = 2  # full packs uploading in the background per process; more wait
FLUSH_WAIT_S = 600.0  # longest wait for another thread's append before a commit


class S3PackStore(PackStore):
    index: S3PackIndex
    coalesce_reads = True  # a GET costs a request: neighbours read with one (read_many)

    def __init__(
        self,
        storage: S3RepoStorage,
        cache_dir: Path,
        size_range: tuple[int, int],
        pack_size: int,
        *,
        refresh_interval: float = REFRESH_S,
    ) -> None:
        for sub in (INDEX, f"{PACKS}/open", "touched"):
            makedirs_durable(cache_dir / sub)
        self.storage = storage
        self._unsent: list[UploadingPack] = []  # sealed, their upload failed: retried
        self._uploads = ThreadPoolExecutor(UPLOADS_AT_ONCE, thread_name_prefix="pack-upload")
        self._upload_slots = threading.BoundedSemaphore(UPLOADS_AT_ONCE)
        super().__init__(cache_dir, size_range, pack_size)
        self.index = S3PackIndex(storage, cache_dir, refresh_interval)
        self.index.refresh(force=True)

    # --- writing ---------------------------------------------------------------------

    def _open_pack(self) -> UploadingPack:
        pack = UploadingPack(self.root)
        pack.storage = self.storage
        if self.storage.loc.stream_part_size:
            pack.stream_to(self.storage, self.storage.loc.stream_part_size)
        return pack

    def _seal(self, pack: object) -> None:
        assert isinstance(pack, UploadingPack)
        try:
            pack.seal()
        except BaseException:
            with self._lock:
                self._unsent.append(pack)
            raise
        self.index.forget_own(pack.id)

    def _seal_full(self, pack: object) -> None:
        """Upload a full pack in the background: a batch's ack needs only the cache's
        fdatasync, a commit waits for the upload (``flush``: the pack is among the open
        ones until it is uploaded). At most UPLOADS_AT_ONCE at once: beyond, the writing
        thread waits for a slot, so sealed packs never pile up in the cache."""
        assert isinstance(pack, UploadingPack)
        self._upload_slots.acquire()

        def upload() -> None:
            try:
                self._seal(pack)
            except Exception:  # kept in _unsent: flush and seal_idle retry it
                pass
            finally:
                self._upload_slots.release()

        self._uploads.submit(upload)

    def flush(self) -> None:
        """Seal and upload every open pack of this process, the ones in use by another
        thread included (waited for), and retry failed uploads; raises if one fails."""
        pending = self.index.open_packs()
        deadline = time.monotonic() + FLUSH_WAIT_S
        while True:
            with self._lock:
                packs = self._unsent + self._free
                self._unsent, self._free = [], []
            failed: BaseException | None = None
            for pack in packs:  # each tried: a failed one is kept in _unsent for the next
                try:
                    self._seal(pack)
                except Exception as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
            if not pending & self.index.open_packs():
                return
            if time.monotonic() > deadline:
                raise RepositoryError(
                    f"an open pack stayed in use for {FLUSH_WAIT_S:.0f} s: not committing"
                )
            time.sleep(0.01)

    def seal_idle(self, idle_s: float, max_age_s: float = 0.0) -> int:
        """PackStore's, after retrying the uploads that failed (other writers' commits
        wait for their chunks, so they are not left for this writer's next commit)."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
        for i, pack in enumerate(unsent):
            try:
                self._seal(pack)  # a failure puts it back in _unsent
            except BaseException:
                with self._lock:
                    self._unsent.extend(unsent[i + 1 :])
                raise  # the sealer logs it and tries again at its next look
        return len(unsent) + super().seal_idle(idle_s, max_age_s)

    def compact(self) -> bool:
        """The cache's index files merged (the bucket's index objects stay one per pack:
        gc rewrites them with their packs)."""
        self.index.compact()
        return True

    def recover(self) -> int:
        n = recover(self.storage, self.root, self.size_range)
        if n:
            self.index.refresh()
        return n

    # --- reading ---------------------------------------------------------------------

    def locations(self, chunk_id: bytes) -> list[Location]:
        locs = super().locations(chunk_id)
        if not locs:
            self.index.refresh(force=True)
            locs = self.index.lookup(chunk_id)
        return locs

    def exists(self, chunk_id: bytes) -> bool:
        return bool(self.locations(chunk_id))

    def read(self, chunk_id: bytes) -> bytes:
        """The blob; a pack gone under a stale index (gc moved it) is looked up again."""
        for attempt in (0, 1):
            locs = self.locations(chunk_id)
            if not locs:
                break
            try:
                return self.read_at(chunk_id, locs[0])
            except MissingChunkError:
                if attempt:
                    raise
                self.index.refresh(force=True)
        raise MissingChunkError(f"chunk {chunk_id.hex()} is missing (in no pack's index)")

    def read_at(self, chunk_id: bytes, loc: Location) -> bytes:
        if (self.root / PACKS / "open" / (loc.pack.hex() + PACK_SUFFIX)).exists():
            return super().read_at(chunk_id, loc)  # still being written here
        try:
            return self.storage.read_range(pack_object(loc.pack), loc.offset, loc.length)
        except MissingObjectError:
            where = self.storage.location(pack_object(loc.pack))
            raise MissingChunkError(
                f"chunk {chunk_id.hex()} is missing (pack {where} is gone)"
            ) from None

    def _read_run(self, run: read_runs.Run) -> bytes | None:
        """One ranged GET of the run (a pack still open here: left to ``read``)."""
        if (self.root / PACKS / "open" / (run.pack.hex() + PACK_SUFFIX)).exists():
            return None
        try:
            return self.storage.read_range(pack_object(run.pack), run.offset, run.length)
        except MissingObjectError:
            return None  # gc moved the pack: read looks each chunk up again
        except ShortObjectError:
            return None  # read names the chunk that is not there

    def iter_ids(self) -> Iterable[tuple[bytes, Location]]:
        """Every indexed (id, location) but the quarantined places."""
        held = self.index.quarantined.holds
        return ((cid, loc) for cid, loc in super().iter_ids() if not held(cid, loc))

    def read_pack(self, pack: bytes) -> bytes:
        return self.storage.read(pack_object(pack))

    def pack_where(self, pack: bytes) -> str:
        return self.storage.location(pack_object(pack))

    # --- for gc ----------------------------------------------------------------------

    def drop_pack(self, pack: bytes) -> None:
        """Delete a pack object, then its index object, then the cached index file (a
        merged cache file loses the pack's entries at the next sync: gc's refresh)."""
        self.storage.delete(pack_object(pack))
        self.storage.delete(index_object(pack))
        unlink_quiet(cached_index(self.root, pack))

    def new_pack(self) -> UploadingPack:
        return self._open_pack()

    def sealed(self, packs: Sequence[bytes]) -> None:
        for p in packs:
            self.index.forget_own(p)
