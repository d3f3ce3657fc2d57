"""`repo copy`: restore points of one repository (the source, read only) copied into
another (the target), sending only the chunks the target lacks.

Through the Repository API alone (maps, has-queries, blobs, the committer), so the two
may differ in format (chunk files or packs, or a storage yet to come) and in encryption:

* Chunk ids are keyed per repository. When both use the same id key (both
  unencrypted), an id means the same chunk in both: the target is asked for the ids as
  they are, and the source is read only for those it lacks. A blob the target decodes as
  its own (same cipher, or none) is written as stored, without decompressing and
  compressing again. Otherwise each chunk is decoded from the source, hashed with the
  target's id key and stored under that id (compressed with the target's level,
  encrypted with its key). What the target already holds for a point it has (same point
  in both) translates ids without reading the source again.
* Every chunk is durable in the target before the point that names it is committed,
  last, through the target's own committer (maps and meta at once, atomically): a kill
  at any moment leaves the target without the point or with the whole point, and a
  rerun skips the points already there (a copied point keeps its id, which is derived
  from its job, VM and snapshot time) and sends no chunk the target already has.
* The copy holds a running-backup marker in the target for its whole run, as a backup
  does, so a gc of the target keeps every chunk it sent or found present.
* A chunk of the target that verify quarantined (found damaged) is absent to a
  has-query, so it is sent again from the source for every selected point naming it,
  including points copied earlier; `vmbackup repo repair` then drops the quarantine
  record. A chunk damaged in the target but not yet quarantined is trusted by its name
  and size, as every backup trusts it: verify of the target is what finds it.
* A chunk that fails its check in the source (damaged, missing) fails that point, named,
  and the copy goes on with the next; nothing damaged is stored into the target.

* Either side may be on S3 (``s3://BUCKET/PREFIX``): the target's chunks go into open
  packs in its cache directory and its commit uploads them before the point
  (S3PackStore.flush), so "durable before committed" holds there too; the open packs a
  killed copy left are uploaded by the next open of the target from the same cache (from
  another cache they are sent again). A source whose storage fails (an endpoint down,
  access denied) ends the copy, unlike damage, which fails only its point.

The selection policy is repository/copy_selection.py; the result, repository/copy_result.py.

Scale: per VM the copy keeps a dict of source id -> target id for every chunk it saw
(about 150 bytes each: 150 MB for a VM of a million distinct chunks), and each disk's
entries for the target's commit (those that differ from its base point there, every
non-zero chunk of a disk without one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from common.progress import Progress, no_progress
from repository.copy_result import CopiedPoint, CopyResult, CopyStats, FailedPoint
from repository.copy_selection import CopyFilter, plan_copy
from repository.errors import (
    ChunkIdMismatchError,
    CorruptObjectError,
    InvalidRequestError,
    MissingChunkError,
    MissingObjectError,
    RepositoryError,
    RepositoryFormatError,
)
from repository.fixed_index import ZERO_ID, DiskMap
from repository.point_commit import DiskChanges, PointCommit
from repository.points import Point, PointDisk, make_point_id
from repository.repository import Repository

QUERY = 1024  # ids per has-query of the target
BATCH_BYTES = 32 << 20  # plaintext held for one durable write batch into the target
READERS = 8  # source chunks read at once from S3 (one ranged GET each)
SOURCE_REPOSITORY = "copied_from_repository"  # disk info keys a copied point carries
SOURCE_POINT = "copied_from_point"
Blob = tuple[bytes, Sequence[bytes | bytearray]]


# What the source's damage raises (a chunk or map that fails its check, or is gone);
# any other error of the source (its storage failing) ends the copy.
DAMAGE = (
    CorruptObjectError,
    MissingChunkError,
    ChunkIdMismatchError,
    MissingObjectError,
    RepositoryFormatError,
)


class SourceError(RepositoryError):
    """Something of the source failed its check (a chunk, a map, a point's id): that
    point is not copied; the copy goes on with the next."""


def source_failed(src: Repository, exc: RepositoryError) -> RepositoryError:
    """The error for a failure of the source ``src``: SourceError (that point only) for
    damage, else one that ends the copy; both name the source."""
    if isinstance(exc, DAMAGE):
        return SourceError(f"source {src.location}: {exc}")
    return RepositoryError(f"source {src.location}: {exc}")


def check_compatible(src: Repository, dst: Repository) -> None:
    """Refuse a pair no copy can join (before anything is read or written)."""
    if src.config["id"] == dst.config["id"]:
        raise InvalidRequestError(
            f"source {src.location} and target {dst.location} are the same repository"
            f" (id {src.config['id']}): nothing to copy"
        )
    if src.chunk_size != dst.chunk_size:
        raise InvalidRequestError(
            f"chunk sizes differ: source {src.location} has {src.chunk_size}, target {dst.location}"
            f" has {dst.chunk_size}; a point's map is per chunk, so the target must have the"
            " source's chunk size (create it with `vmbackup repo init --chunk-size`)"
        )


def copy_job_id(src: Repository) -> str:
    """The target's running-marker name for copies from ``src``: the same for every run,
    so a rerun after a kill replaces the marker the killed run left."""
    return f"copy-from-{src.config['id']}"


def copy_points(
    src: Repository,
    dst: Repository,
    selection: CopyFilter,
    *,
    dry_run: bool = False,
    recompress: bool = False,
    now: float | None = None,
    progress: Progress = no_progress,
    note: Callable[[str], None] = lambda _line: None,
) -> CopyResult:
    """Copy the points ``selection`` names that the target lacks (``progress``: points
    done of those to copy; ``note``: a line per point). ``recompress``: never write a
    source blob as stored, compress every chunk sent with the target's level."""
    check_compatible(src, dst)
    now = time.time() if now is None else now
    plan = plan_copy(src.points(), {p.id for p in dst.points()}, selection, now)
    result = CopyResult(
        src.config["id"],
        dst.config["id"],
        selection.describe(),
        dry_run,
        plan.to_copy,
        plan.present,
    )
    if dry_run:
        return result
    marker = copy_job_id(src)
    dst.end_job(marker)  # a killed run's: its start would soon count as stale for gc
    dst.begin_job(marker)
    copier: _Copier | None = None
    try:
        copier = _Copier(src, dst, result.stats, as_stored=not recompress)
        copier.heal(result.present)
        for n, p in enumerate(result.to_copy, 1):
            sent, nbytes = result.stats.chunks_sent, result.stats.bytes_sent
            try:
                copier.copy(p)
            except SourceError as exc:  # the target's errors end the copy (full, gone)
                result.failed.append(FailedPoint(p.id, p.vm_uuid, str(exc)))
                note(f"point {p.id} of {p.vm_name or p.vm_uuid} NOT copied: {exc}")
            else:
                done = CopiedPoint(
                    p.id,
                    p.vm_uuid,
                    p.vm_name,
                    p.snapshot_time,
                    result.stats.chunks_sent - sent,
                    result.stats.bytes_sent - nbytes,
                )
                result.copied.append(done)
                note(
                    f"point {p.id} of {p.vm_name or p.vm_uuid}: {done.chunks_sent} chunks"
                    f" ({done.bytes_sent} bytes) sent"
                )
            progress(n, len(result.to_copy))
    finally:
        if copier is not None:
            copier.close()
        dst.end_job(marker)
    return result


class _Copier:
    """The copy of one point after another; per VM, what it learnt about the target's ids
    (points of one VM share most chunks; different VMs rarely do)."""

    def __init__(
        self, src: Repository, dst: Repository, stats: CopyStats, *, as_stored: bool = True
    ) -> None:
        self.src, self.dst, self.stats = src, dst, stats
        self.as_stored = as_stored
        self._pool: ThreadPoolExecutor | None = None  # source reads from S3
        self.same_ids = src.id_key == dst.id_key
        self.quarantined = dst.quarantined_ids()
        self.batch = max(1, BATCH_BYTES // dst.chunk_size)
        self.vm = ""
        self.done: dict[bytes, bytes] = {}  # source id -> target id, present in the target
        self.known: dict[bytes, bytes] = {}  # source id -> target id, from the target's maps
        self.target_points: dict[str, Point] = {}

    def _enter_vm(self, vm_uuid: str) -> None:
        if vm_uuid == self.vm:
            return
        self.vm, self.done, self.known = vm_uuid, {}, {}
        self.target_points = {p.id: p for p in self.dst.points(vm_uuid)}
        if self.same_ids:
            return
        # The newest point both hold: its maps translate most ids of the VM's next points.
        for p in reversed(self.src.points(vm_uuid)):
            tp = self.target_points.get(p.id)
            if tp is not None:
                for d in p.disks:
                    if any(t.key == d.key for t in tp.disks):
                        self._learn(self._src_map(p, d.key), self.dst.load_map(tp, d.key))
                break

    def _src_map(self, p: Point, key: int) -> DiskMap:
        try:
            return self.src.load_map(p, key)
        except RepositoryError as exc:
            raise source_failed(self.src, exc) from exc

    def _learn(self, src_map: DiskMap, dst_map: DiskMap) -> None:
        if len(src_map) != len(dst_map):
            return  # not the same disk after all: learn nothing from it
        for index, cid in src_map.iter_ids():
            self.known[cid] = dst_map.get(index)

    # --- the points ----------------------------------------------------------------

    def copy(self, p: Point) -> None:
        if make_point_id(p.job_id, p.vm_uuid, p.snapshot_time) != p.id:
            raise SourceError(
                f"point {p.id} of the source: its id is not the one its job, VM and"
                " snapshot time give, so a copy could not keep it"
            )
        self._enter_vm(p.vm_uuid)
        disks = [self._disk(p, d) for d in p.disks]
        got = self.dst.commit_point(
            PointCommit(
                job_id=p.job_id,
                vm_uuid=p.vm_uuid,
                status=p.status,
                snapshot_time=p.snapshot_time,
                disks=disks,
                vcenter=p.vcenter,
                vm_moref=p.vm_moref,
                vm_name=p.vm_name,
                vm_config=p.vm_config,
                failed_disks=list(p.failed_disks),
            )
        )
        self.target_points[got] = self.dst.get_point(got)

    def _disk(self, p: Point, d: PointDisk) -> DiskChanges:
        """The disk's map in target ids, as entries over its base point in the target
        when the target has that point (a synthetic full either way)."""
        src_map = self._src_map(p, d.key)
        base_id = d.base_point_id
        base = self.target_points.get(base_id) if base_id else None
        base_map = None
        if base is not None and any(t.key == d.key for t in base.disks):
            base_map = self.dst.load_map(base, d.key).resized(d.capacity)
        else:
            base_id = ""
        entries: list[tuple[int, bytes]] = []
        ids = list(src_map.iter_ids())
        for i in range(0, len(ids), QUERY):
            group = ids[i : i + QUERY]
            for (index, _), cid in zip(group, self._target_ids([c for _, c in group]), strict=True):
                if base_map is None or base_map.get(index) != cid:
                    entries.append((index, cid))
        if base_map is not None:  # zero now, not zero in the base
            entries += [(i, b"") for i, _ in base_map.iter_ids() if src_map.get(i) == ZERO_ID]
            entries.sort()
        info = {**d.info, SOURCE_REPOSITORY: self.src.config["id"], SOURCE_POINT: p.id}
        return DiskChanges(
            key=d.key,
            capacity=d.capacity,
            change_id=d.change_id,
            base_point_id=base_id,
            entries=entries,
            info=info,
        )

    def heal(self, present: list[Point]) -> None:
        """Send again the chunks of points the target has whose ids it quarantined."""
        if not self.quarantined:
            return
        for p in present:
            self._enter_vm(p.vm_uuid)
            tp = self.target_points.get(p.id)
            if tp is None:
                continue
            for d in p.disks:
                if not any(t.key == d.key for t in tp.disks):
                    continue
                src_map, dst_map = self._src_map(p, d.key), self.dst.load_map(tp, d.key)
                if len(src_map) != len(dst_map):
                    continue
                want = [c for i, c in src_map.iter_ids() if dst_map.get(i) in self.quarantined]
                self._target_ids(want)

    # --- the chunks ----------------------------------------------------------------

    def _target_ids(self, src_ids: list[bytes]) -> list[bytes]:
        """The target's ids of these source chunks, each one durable in the target when
        this returns (sent when it lacked them)."""
        todo = [c for c in dict.fromkeys(src_ids) if c not in self.done]
        guess = [
            (c, c if self.same_ids else self.known[c])
            for c in todo
            if self.same_ids or c in self.known
        ]
        if guess:
            for (c, t), ok in zip(guess, self.dst.has_chunks([t for _, t in guess]), strict=True):
                if ok:
                    self.done[c] = t
                    self.stats.chunks_present += 1
        self._send([c for c in todo if c not in self.done])
        return [self.done[c] for c in src_ids]

    def _send(self, src_ids: list[bytes]) -> None:
        for i in range(0, len(src_ids), self.batch):
            blobs: list[Blob] = []
            as_stored: set[bytes] = set()
            ids: dict[bytes, bytes] = {}
            group = src_ids[i : i + self.batch]
            for c, stored in zip(group, self._read_blobs(group), strict=True):
                tid, parts, raw = self._prepare(c, stored)
                ids[c] = tid
                blobs.append((tid, parts))
                if raw:
                    as_stored.add(tid)
            wrote = self.dst.write_prepared(blobs)
            # done once durable: a chunk failing its check above leaves the ones read
            # before it unwritten, for the next point naming them to send
            self.done.update(ids)
            self.stats.chunks_sent += wrote.stored
            self.stats.chunks_present += wrote.known
            self.stats.bytes_sent += wrote.bytes_stored
            self.stats.raw_bytes_sent += wrote.raw_stored
            # a chunk named twice in the batch is written once: count each id once
            self.stats.blobs_as_stored += len(as_stored)
            self.stats.chunks_healed += len({t for t, p in blobs if p} & self.quarantined)

    def _read_blob(self, src_id: bytes) -> bytes:
        try:
            return self.src.read_chunk_blob(src_id)
        except RepositoryError as exc:
            raise source_failed(self.src, exc) from exc

    def _read_blobs(self, src_ids: list[bytes]) -> Iterator[bytes]:
        """The source's blobs of ``src_ids`` in order, each error where its blob would be;
        from S3 (a ranged GET each, a round trip of waiting) READERS at once."""
        if not self.src.on_s3:
            return map(self._read_blob, src_ids)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="copy-read")
        return self._pool.map(self._read_blob, src_ids)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _prepare(
        self, src_id: bytes, stored: bytes
    ) -> tuple[bytes, Sequence[bytes | bytearray], bool]:
        """(target id, blob parts, written as stored) of the source's blob ``stored``."""
        self.stats.chunks_read += 1
        if self.same_ids and self.as_stored:
            try:
                self.dst.decode_chunk(src_id, stored)  # the target reads it as its own
            except CorruptObjectError:
                pass  # another cipher, or damaged: decoded with the source's below
            else:
                return src_id, [stored], True
        try:
            plain = bytes(self.src.decode_chunk(src_id, stored))
        except RepositoryError as exc:  # damaged in the source: never stored anywhere
            raise source_failed(self.src, exc) from exc
        tid, parts = self.dst.prepare_raw_chunk(self.dst.chunk_id(plain), plain)
        return tid, parts, False
