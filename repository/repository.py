"""The repository object that the writer service, the CLI and other roles use.

Layout under the repository directory (see docs/repository-format.md):
``config`` (JSON), ``keys/repokey`` (encrypted repositories), ``chunks/`` (chunk
blobs), ``points/`` (restore points), ``running/`` (markers of backups in
progress, which gc honours), ``locks/``, ``quarantine/`` (damaged chunks),
``staging/`` (map entries before their commit), ``jobs/`` (finished jobs' reports).
One storage (storage.py, today local_storage.LocalDirectoryStorage) holds the objects of
the stores that are on that interface (staging, markers, quarantine, job history); the
others work on files under ``path``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.chunk import chunk_id as _chunk_id
from common.chunk import compress
from repository import blob, keyfile, repo_config
from repository.chunk_store import ChunkStore, check_id
from repository.errors import (
    ChunkIdMismatchError,
    CorruptObjectError,
    InvalidRequestError,
    MissingChunkError,
    RepositoryError,
    RepositoryFormatError,
)
from repository.fixed_index import DiskMap
from repository.holds import Hold, HoldInfo, PointHolds
from repository.job_history import JobHistory
from repository.local_repo_open import local_init, local_open, unconverted_chunks
from repository.local_storage import LocalDirectoryStorage
from repository.meta_auth import MetaAuth, derive_meta_key
from repository.pack_store import DEFAULT_PACK_SIZE, PackStore
from repository.point_commit import PointCommit
from repository.point_committer import PointCommitter
from repository.points import (
    Point,
    PointRef,
    PointStore,
    check_vm_uuid,
)
from repository.quarantine import Quarantine
from repository.repo_location import RepoLocation, parse_location
from repository.running import RunningMarkers
from repository.staging import CommitStaging
from repository.storage import Storage

if TYPE_CHECKING:  # S3 modules load botocore: imported where a repository is on S3
    from repository.s3_object_lock import LockPolicy
    from repository.s3_pack_store import S3PackStore
    from repository.s3_repo_storage import S3RepoStorage

DEFAULT_CHUNK = repo_config.MiB
DEFAULT_LEVEL = 3
COMMIT_POLL_S = 0.25  # seconds between listings of index/ while a commit on S3 waits


@dataclass(frozen=True, slots=True)
class StoreResult:
    stored: int  # chunks written now
    known: int  # chunks that were already there
    bytes_stored: int  # blob bytes written
    raw_stored: int = 0  # plaintext bytes of the chunks written


class Repository:
    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        keys: keyfile.RepoKeys | None,
        *,
        s3: S3RepoStorage | None = None,
        location: str | None = None,
    ) -> None:
        """``path``: the repository directory, or for one on S3 (``s3``) its cache
        directory (open packs, the index cache, touch logs: repo_location.py)."""
        self.path = path
        # On S3: seconds a commit waits for chunks other writers have not uploaded yet
        # (0: it fails at once, for one process that uploads its own before committing).
        self.commit_wait = 0.0
        self.location = location or str(path)  # what an operator calls it (s3://... or path)
        self.config = config
        self.chunk_size: int = config["chunk_size"]
        self.compression_level: int = config["compression_level"]
        self.encrypted = keys is not None
        self.id_key: bytes | None = keys.id_key if keys else None
        self._cipher = AESGCM(keys.enc_key) if keys else None
        self.auth = MetaAuth(config["id"], derive_meta_key(keys) if keys else None)
        self.storage: Storage = s3 if s3 is not None else LocalDirectoryStorage(path)
        # version 3 keeps chunks in pack files, version 2 one file per chunk
        self.packed = config["version"] == repo_config.PACKS_VERSION
        sizes = blob.chunk_file_sizes(self.chunk_size)
        self.chunks: ChunkStore | PackStore
        self._s3_chunks: S3PackStore | None = None
        if s3 is not None:
            if not self.packed:
                raise RepositoryFormatError(
                    f"{self.location}: chunk files (format version {config['version']}) are"
                    f" not supported on S3: only pack repositories (version"
                    f" {repo_config.PACKS_VERSION}, `repo init` without --chunk-files)"
                )
            from repository.s3_pack_store import S3PackStore

            self.chunks = self._s3_chunks = S3PackStore(s3, path, sizes, config["pack_size"])
        elif self.packed:
            self.chunks = PackStore(
                path, sizes, config["pack_size"], unconverted_chunks(path, sizes)
            )
        else:
            self.chunks = ChunkStore(path / "chunks", sizes)
        self.quarantine = Quarantine(self.storage)  # damaged chunks (verify)
        self.point_store = PointStore(
            self.storage, self._seal_meta, self._unseal_meta, self.auth, self.chunk_size
        )
        self.staging = CommitStaging(self.storage, self.auth)
        self.markers = RunningMarkers(self.storage)
        self.holds = PointHolds(self.storage)
        self.jobs = JobHistory(self.storage, self._seal_meta, self._unseal_meta)
        self.committer = PointCommitter(
            self.chunk_size,
            self.point_store,
            self.staging,
            self.chunks,
            self.get_point,
            self.load_map,
        )

    def __repr__(self) -> str:  # never key material
        return f"Repository({self.location!r}, encrypted={self.encrypted})"

    @property
    def on_s3(self) -> bool:
        return self._s3_chunks is not None

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | Path | RepoLocation,
        chunk_size: int = DEFAULT_CHUNK,
        compression_level: int = DEFAULT_LEVEL,
        passphrase: str | bytes | None = None,
        *,
        kdf_n: int = keyfile.SCRYPT_N,
        packs: bool = True,
        pack_size: int = DEFAULT_PACK_SIZE,
        s3_config: str | Path | None = None,
        cache_dir: Path | None = None,
        object_lock: LockPolicy | None = None,
    ) -> Repository:
        """``kdf_n`` is the scrypt cost of the key file (lower only where opening
        quickly matters more than resisting a guessed passphrase: tests). ``packs`` (the
        default) makes a version-3 repository (chunks in pack files of about
        ``pack_size``); ``packs=False`` a version-2 one (a file per chunk). ``path`` may
        be ``s3://BUCKET/PREFIX`` with ``s3_config`` (repo_location.py), there with
        ``object_lock`` for a bucket with Object Lock (s3_object_lock.py)."""
        loc = parse_location(path, s3_config)
        if loc.s3 is not None:
            from repository.s3_repo_open import s3_init

            return s3_init(
                cls, loc, chunk_size, compression_level, passphrase, kdf_n, pack_size,
                packs=packs, cache_dir=cache_dir, object_lock=object_lock,
            )  # fmt: skip
        if object_lock is not None:
            raise InvalidRequestError(
                f"{loc.text}: Object Lock is for a repository on S3 (s3://BUCKET/PREFIX)"
            )
        assert loc.local is not None
        return local_init(
            cls, loc.local, chunk_size, compression_level, passphrase, kdf_n, pack_size,
            packs=packs,
        )  # fmt: skip

    @classmethod
    def open(
        cls,
        path: str | Path | RepoLocation,
        passphrase: str | bytes | None = None,
        *,
        read_only: bool = False,
        s3_config: str | Path | None = None,
        cache_dir: Path | None = None,
        cache_name: str = "",
    ) -> Repository:
        """``read_only``: change nothing while opening (no recovery of abandoned packs),
        for a caller that only reads (the source of `repo copy`). ``path`` may be
        ``s3://BUCKET/PREFIX`` with ``s3_config``; ``cache_dir`` is then where its open
        packs and index cache are (default: repo_location.default_cache_dir), in its
        subdirectory ``cache_name`` when given (a service's own, beside others on a host)."""
        loc = parse_location(path, s3_config)
        if loc.s3 is not None:
            from repository.s3_repo_open import s3_open

            return s3_open(
                cls, loc, passphrase, read_only=read_only, cache_dir=cache_dir,
                cache_name=cache_name,
            )  # fmt: skip
        assert loc.local is not None
        return local_open(cls, loc.local, passphrase, read_only=read_only)

    def close(self) -> None:
        """Seal this process's open packs (a version-3 repository; nothing otherwise)."""
        if isinstance(self.chunks, PackStore):
            self.chunks.close()

    # --- chunks ----------------------------------------------------------------------

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        return _chunk_id(data, self.id_key)

    def has_chunks(self, ids: Iterable[bytes]) -> list[bool]:
        """Which ids are stored; present ones are touched so a running gc keeps them."""
        return self.chunks.touch_many(list(ids))

    def store_chunk(self, chunk_id: bytes, raw_len: int, compressed: bool, payload: bytes) -> bool:
        """Store one chunk as sent by a proxy; True if new. Verifies the id first."""
        return self.store_chunks([(chunk_id, raw_len, compressed, payload)]).stored == 1

    def store_chunks(
        self, items: Sequence[tuple[bytes, int, bool, bytes | bytearray]]
    ) -> StoreResult:
        """Verify (decompress + hash) and durably store chunks; duplicates store nothing."""
        blobs: list[tuple[bytes, Sequence[bytes | bytearray]]] = []
        for cid, raw_len, _, _ in items:
            check_id(cid)
            if not 0 < raw_len <= self.chunk_size:
                raise InvalidRequestError(
                    f"chunk {cid.hex()}: raw length {raw_len} outside 1..{self.chunk_size}"
                )
        present = self.chunks.touch_many([c[0] for c in items])
        for (cid, raw_len, compressed, payload), known in zip(items, present, strict=True):
            if known:
                blobs.append((cid, ()))  # placeholder: counted as known below
                continue
            plain = _decompress(payload, raw_len, cid) if compressed else payload
            if len(plain) != raw_len:
                raise InvalidRequestError(
                    f"chunk {cid.hex()}: {len(plain)} bytes, raw_len {raw_len}"
                )
            if self.chunk_id(plain) != cid:
                raise ChunkIdMismatchError(f"chunk {cid.hex()}: data does not hash to its id")
            blobs.append(
                (
                    cid,
                    blob.encode(payload, raw_len, compressed, blob.MAGIC_CHUNK, self._cipher),
                )
            )
        return self._write(blobs)

    def store_raw_chunks(self, items: Sequence[tuple[bytes, bytes]]) -> StoreResult:
        """Store (id, plaintext) pairs hashed by the caller (local import): compress here."""
        return self.write_prepared([self.prepare_raw_chunk(cid, data) for cid, data in items])

    def prepare_raw_chunk(
        self, cid: bytes, data: bytes
    ) -> tuple[bytes, Sequence[bytes | bytearray]]:
        """(id, blob parts) of a plaintext chunk hashed by the caller, or (id, ()) when it
        is already stored (then touched for gc). Thread-safe: import-disk compresses in a
        pool; zstd and AES release the GIL."""
        if self.chunks.touch(cid):
            return cid, ()
        payload, compressed = compress(data, self.compression_level)
        return cid, blob.encode(payload, len(data), compressed, blob.MAGIC_CHUNK, self._cipher)

    def write_prepared(self, blobs: list[tuple[bytes, Sequence[bytes | bytearray]]]) -> StoreResult:
        """Durably write what :meth:`prepare_raw_chunk` made; () entries count as known."""
        return self._write(blobs)

    def _write(self, blobs: list[tuple[bytes, Sequence[bytes | bytearray]]]) -> StoreResult:
        todo = [b for b in blobs if b[1]]
        written = self.chunks.write_many(todo)
        stored = sum(written)
        nbytes = raw = 0
        for (_, parts), w in zip(todo, written, strict=True):
            if w:
                nbytes += sum(len(p) for p in parts)
                raw += int.from_bytes(parts[0][8:12], "little")  # raw_len from the header
        return StoreResult(stored, len(blobs) - stored, nbytes, raw)

    def read_chunk(self, chunk_id: bytes, *, check_crc: bool = True) -> bytes:
        """The plaintext of a chunk, checked against its id."""
        plain = self.read_chunk_view(chunk_id, check_crc=check_crc)
        return plain if isinstance(plain, bytes) else bytes(plain)

    def read_chunk_view(self, chunk_id: bytes, *, check_crc: bool = True) -> bytes | memoryview:
        """:meth:`read_chunk` without copying a stored-raw payload (restore path)."""
        return self.decode_chunk(chunk_id, self.read_chunk_blob(chunk_id), check_crc=check_crc)

    def read_chunk_views(
        self, chunk_ids: Sequence[bytes], *, check_crc: bool = True
    ) -> list[bytes | memoryview | RepositoryError]:
        """:meth:`read_chunk_view` of each of ``chunk_ids`` (a restore's next chunks),
        neighbours in one pack read with one request (PackStore.read_many): for each,
        its checked plaintext or the error reading it alone would have raised."""
        try:
            blobs = self.chunks.read_many(chunk_ids) if isinstance(self.chunks, PackStore) else {}
        except RepositoryError as exc:
            return [exc] * len(chunk_ids)
        out: list[bytes | memoryview | RepositoryError] = []
        for cid in chunk_ids:
            try:
                data = blobs.get(cid)
                if data is None:
                    data = self.read_chunk_blob(cid)
                out.append(self.decode_chunk(cid, data, check_crc=check_crc))
            except RepositoryError as exc:
                out.append(exc)
        return out

    def read_chunk_blob(self, chunk_id: bytes) -> bytes:
        """A chunk's blob as stored (compressed, encrypted), unchecked: for a copy that
        writes it as is into a repository that decodes it (`decode_chunk` checks it)."""
        try:
            return self.chunks.read(chunk_id)
        except MissingChunkError:
            self.quarantine.raise_if_quarantined(chunk_id)
            raise

    def decode_chunk(
        self, chunk_id: bytes, data: bytes, *, check_crc: bool = True
    ) -> bytes | memoryview:
        """The plaintext of a chunk blob read from anywhere, checked against its id."""
        name = f"chunk {chunk_id.hex()}"
        plain = blob.decode_view(data, blob.MAGIC_CHUNK, self._cipher, name, check_crc=check_crc)
        if self.chunk_id(plain) != chunk_id:
            raise CorruptObjectError(name, "content does not hash to its id")
        return plain

    # --- points ----------------------------------------------------------------------

    def _seal_meta(self, data: bytes) -> tuple[bytes, bytes | bytearray]:
        payload, compressed = compress(data, 3, probe=False)  # id lists: random in places
        return blob.encode(payload, len(data), compressed, blob.MAGIC_META, self._cipher)

    def _unseal_meta(self, data: bytes, name: str) -> bytes:
        return blob.decode(data, blob.MAGIC_META, self._cipher, name)

    def points(self, vm_uuid: str | None = None) -> list[Point]:
        """Every point (of one VM), oldest first. Unreadable points raise."""
        pts = [self.point_store.load(r) for r in self.point_store.point_refs(vm_uuid)]
        pts.sort(key=lambda p: (p.snapshot_time, p.id))
        return pts

    def latest_point(self, vm_uuid: str, status: str | None = "complete") -> Point | None:
        pts = [p for p in self.points(vm_uuid) if status is None or p.status == status]
        return pts[-1] if pts else None

    def get_point(self, point_id: str) -> Point:
        return self.point_store.load(self.point_store.find(point_id))

    def load_map(self, point: Point | str, disk_key: int) -> DiskMap:
        if isinstance(point, str):
            point = self.get_point(point)
        ref = PointRef(point.vm_uuid, point.id)
        return self.point_store.load_map(ref, point.disk(disk_key))

    def quarantined_ids(self) -> set[bytes]:
        return {q.id for q in self.quarantine}

    def delete_point(self, point_id: str) -> None:
        self.point_store.delete(self.point_store.find(point_id))

    def commit_point(self, commit: PointCommit) -> str:
        """Commit a restore point (point_committer.py): each disk's map is its base
        point's map (resized to the new capacity) with the new entries applied, a
        synthetic full; every chunk the maps name must exist (checked, and touched against
        gc) before the point becomes visible, atomically. A repeated commit (a
        redelivery) returns the point it already made; staged entries it named are
        removed once it is committed."""
        s3 = self._s3_chunks
        if s3 is None:
            return self.committer.commit(commit)
        # every chunk the maps name uploaded with its index before the point exists
        s3.flush()
        deadline = time.monotonic() + self.commit_wait
        while True:
            s3.index.sync()  # other writers' packs of this backup
            try:
                return self.committer.commit(commit)
            except MissingChunkError:
                # Chunks another writer acknowledged (durable in its cache) reach the
                # bucket when it seals that pack (idle or age: the writer's sealer).
                if time.monotonic() >= deadline:
                    raise
            time.sleep(COMMIT_POLL_S)

    def stage_task_entries(
        self, job_id: str, vm_uuid: str, disk_key: int, task_id: str, packed: bytes
    ) -> int:
        """Durably stage a task's packed map entries for a later commit; return how many."""
        check_vm_uuid(vm_uuid)
        return self.staging.stage_task(job_id, vm_uuid, disk_key, task_id, packed)

    def stage_commit_part(self, request_id: str, disk_key: int, part: int, packed: bytes) -> None:
        """Durably stage one CommitPart (packed entries) for a later commit_point."""
        self.staging.stage(request_id, disk_key, part, packed)

    # --- running-backup markers (gc protection, see running.py) ----------------------

    def begin_job(self, job_id: str) -> None:
        self.markers.begin(job_id)

    def end_job(self, job_id: str) -> None:
        self.markers.end(job_id)

    def running_jobs(self) -> list[dict[str, Any]]:
        return self.markers.list()

    # --- holds on points read outside a backup (prune keeps them, see holds.py) ------

    def hold_point(self, point_id: str, purpose: str) -> Hold:
        """Hold ``point_id`` while reading it (an export); the point, checked after the
        hold is written (PointNotFoundError, the hold released, when it is gone)."""
        hold = self.holds.hold(point_id, purpose)
        try:
            self.get_point(point_id)
        except BaseException:
            hold.release()
            raise
        return hold

    def point_holds(self) -> list[HoldInfo]:
        return self.holds.all()

    # --- the job history (job_history.py) --------------------------------------------

    def record_job(self, job_id: str, report: bytes) -> None:
        self.jobs.record(job_id, report)

    def job_ids(self, policy: str | None = None) -> list[str]:
        return self.jobs.job_ids(policy)

    def job_report(self, job_id: str) -> dict[str, Any]:
        return self.jobs.load(job_id)


def _decompress(payload: bytes | bytearray, raw_len: int, cid: bytes) -> bytes:
    import zstandard

    from common.chunk import decompress

    try:
        out = decompress(payload, raw_len)
    except (zstandard.ZstdError, ValueError) as exc:
        raise InvalidRequestError(
            f"chunk {cid.hex()}: payload does not decompress: {exc}"
        ) from None
    return out
