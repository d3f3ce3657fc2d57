"""Garbage collection: mark (touch every chunk a map names) and sweep (old, unmarked).

Marking sets each referenced chunk's mtime to now, so the mark set lives in the
file system, not in RAM. The sweep removes chunks whose mtime is older than the
cutoff = min(gc start - grace, start of the oldest backup still running). Writers
touch chunks they dedup against (have-queries, duplicate stores, commits), so a
running backup never loses a chunk it relies on. The quarantine (damaged chunks verify
moved aside) is never swept: it is evidence until ``repo repair`` finds its chunks healed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from repository.chunk_store import ChunkStore
from repository.errors import InvalidRequestError, LockedError, RepositoryError
from repository.fsutil import lock_file
from repository.local_storage import LocalDirectoryStorage
from repository.pack_gc import PackSweep
from repository.pack_store import GC_LOCK, PackStore
from repository.points import PREFIX as POINTS
from repository.points import legacy_leftovers
from repository.repository import Repository
from repository.s3_gc_lock import ObjectLock, object_lock
from repository.s3_object_lock import KeptLocked, LockedS3Storage
from repository.s3_pack_gc import S3PackSweep
from repository.s3_pack_store import S3PackStore

DEFAULT_GRACE = 300.0  # clock skew between writer hosts + timestamp granularity
STALE_MARKER = 3 * 86400.0  # a "running" marker older than this is a crashed job
LOCK = GC_LOCK


@dataclass
class GcReport:
    points: int = 0
    referenced: int = 0
    chunks_seen: int = 0
    chunks_removed: int = 0
    bytes_freed: int = 0
    chunks_kept_young: int = 0
    temps_removed: int = 0
    staged_removed: int = 0  # commit parts of requests never committed (abandoned)
    packs_rewritten: int = 0  # version 3: packs whose live chunks were copied to new ones
    packs_removed: int = 0  # version 3: packs with nothing live, dropped from the index
    # local packs: of bytes_freed, what stays on disk in unindexed pack files until a gc
    # after pending_until deletes them (a reader that looked a chunk up may still read
    # them); and what this run deleted of an earlier run's
    bytes_pending: int = 0
    pending_until: float = 0.0
    bytes_deleted: int = 0
    cutoff: float = 0.0
    missing: list[str] = field(default_factory=list)
    stale_markers: list[str] = field(default_factory=list)
    stale_holds_removed: list[str] = field(default_factory=list)  # of killed exports
    dry_run: bool = False
    # Object Lock (s3_lock_maintenance.py): what stays locked (object, retain_until),
    # the first 100 of locked_kept_total; versions deleted; the retention extension
    locked_kept: list[dict[str, str]] = field(default_factory=list)
    locked_kept_total: int = 0
    versions_purged: int = 0
    retention: dict[str, object] | None = None


@contextmanager
def gc_lock(repo: Repository) -> Iterator[ObjectLock | None]:
    """On S3 a lock object (s3_gc_lock.py); locally flock() on a file (not on the storage
    interface)."""
    if isinstance(repo.chunks, S3PackStore):
        with object_lock(repo.storage) as held:
            yield held
        return
    assert isinstance(repo.storage, LocalDirectoryStorage)
    with lock_file(repo.storage.path(LOCK), wait=False) as got:
        if not got:
            raise LockedError(f"another gc is running on {repo.path}")
        yield None


def _lock_maintenance(
    repo: Repository,
    report: GcReport,
    referenced: set[bytes],
    kept: list[KeptLocked],
    dry_run: bool,
) -> None:
    """Object Lock: extend what kept points need, purge versions no reader sees."""
    from repository.s3_lock_maintenance import REPORT_MAX, extend_retention, purge_expired

    assert isinstance(repo.storage, LockedS3Storage)
    kept = kept + repo.storage.drain_kept()
    ext = extend_retention(repo, referenced, dry_run=dry_run)
    purge = purge_expired(repo.storage, report.cutoff, dry_run=dry_run)
    report.versions_purged = purge.purged
    report.locked_kept_total = len(kept) + purge.kept_total
    report.locked_kept = [k.as_dict() for k in (kept + purge.kept)[:REPORT_MAX]]
    report.retention = dataclasses.asdict(ext)


def check_grace(repo: Repository, grace: float) -> None:
    """The lock period must be longer than gc's grace (else gc could wait on nothing)."""
    if isinstance(repo.storage, LockedS3Storage) and grace >= repo.storage.policy.period:
        raise InvalidRequestError(
            f"grace {grace:g} s is not shorter than the Object Lock period"
            f" {repo.storage.policy.period} s"
        )


def gc(
    repo: Repository,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
) -> GcReport:
    if grace < 0:
        raise ValueError("grace must not be negative")
    check_grace(repo, grace)
    report = GcReport(dry_run=dry_run)
    with gc_lock(repo) as held:
        # The cutoff must never pass the mark time as the file system records it: the
        # kernel stamps mtimes from a coarse clock that may lag time.time() by ms.
        start = min(time.time(), _fs_now(repo))
        cutoff = start - grace
        for job in repo.running_jobs():
            if job["started"] < start - STALE_MARKER:
                report.stale_markers.append(f"{job['job_id']} ({job['marker']})")
                continue
            cutoff = min(cutoff, job["started"] - grace)
        report.cutoff = cutoff
        report.stale_holds_removed = repo.holds.remove_stale(start, dry_run=dry_run)
        referenced = _mark(repo, report)
        if isinstance(repo.chunks, S3PackStore):
            assert held is not None
            sweep = S3PackSweep(repo.chunks, cutoff, start, dry_run, held)
            _sweep_packs(sweep, report, referenced)
            _sweep_points_and_staging(repo, report, cutoff, dry_run)
            if isinstance(repo.storage, LockedS3Storage):
                _lock_maintenance(repo, report, referenced, sweep.locked, dry_run)
        elif isinstance(repo.chunks, PackStore):
            _sweep_packs(PackSweep(repo.chunks, cutoff, start, dry_run), report, referenced)
            _sweep_points_and_staging(repo, report, cutoff, dry_run)
            if report.bytes_pending:  # their mtime is now: a gc starting after this deletes
                report.pending_until = time.time() + grace
        else:
            _sweep(repo, report, cutoff, start, dry_run)
    return report


def _fs_now(repo: Repository) -> float:
    """The storage's clock: the mtime of the lock file gc_lock created, touched now."""
    repo.storage.touch(LOCK)
    return repo.storage.stat(LOCK).mtime


def referenced_chunks(repo: Repository) -> set[bytes]:
    """The chunk ids points name (a pack repository's mark, nothing changed)."""
    return _mark(repo, GcReport())


def _mark(repo: Repository, report: GcReport) -> set[bytes]:
    """Chunk files: touch every referenced chunk (the mark lives in their mtimes); packs:
    the referenced ids (what the sweep keeps)."""
    referenced: set[bytes] = set()
    packed = isinstance(repo.chunks, PackStore)
    ps = repo.point_store
    for ref in ps.point_refs():
        try:
            point = ps.load(ref)
        except RepositoryError as exc:
            # an unreadable point cannot be marked: refuse to sweep rather than guess
            raise RepositoryError(f"gc stopped, nothing removed: {exc}") from None
        report.points += 1
        for disk in point.disks:
            try:
                dmap = ps.load_map(ref, disk)
            except RepositoryError as exc:
                raise RepositoryError(f"gc stopped, nothing removed: {exc}") from None
            prev = b""
            for index, cid in dmap.iter_ids():
                if cid == prev:
                    continue
                prev = cid
                report.referenced += 1
                if packed:
                    referenced.add(cid)
                if not (repo.chunks.exists(cid) if packed else repo.chunks.touch(cid)):
                    q = " (quarantined)" if repo.quarantine.get(cid) else ""
                    report.missing.append(f"{point.id} disk {disk.key} #{index} {cid.hex()}{q}")
    return referenced


def _sweep_packs(sweep: PackSweep | S3PackSweep, report: GcReport, referenced: set[bytes]) -> None:
    sweep.run(referenced)
    report.chunks_seen += sweep.chunks_seen
    report.chunks_removed += sweep.chunks_removed
    report.bytes_freed += sweep.bytes_freed
    report.chunks_kept_young += sweep.kept_young
    report.packs_rewritten += sweep.packs_rewritten
    report.packs_removed += sweep.packs_removed
    report.temps_removed += sweep.temps_removed
    if isinstance(sweep, PackSweep):
        report.bytes_pending += sweep.bytes_pending
        report.bytes_deleted += sweep.bytes_deleted


def _sweep(repo: Repository, report: GcReport, cutoff: float, start: float, dry_run: bool) -> None:
    assert isinstance(repo.chunks, ChunkStore)
    for cf in repo.chunks.iter_chunks():
        report.chunks_seen += 1
        if cf.mtime >= cutoff:
            if cf.mtime < start:  # not marked, but maybe used by a running backup
                report.chunks_kept_young += 1
            continue
        try:  # re-check right before removing: a writer may have just touched it
            if os.stat(cf.path).st_mtime >= cutoff:
                continue
            if not dry_run:
                os.unlink(cf.path)
        except FileNotFoundError:
            continue
        report.chunks_removed += 1
        report.bytes_freed += cf.size
    for path, mtime in repo.chunks.iter_temps():
        if mtime < cutoff:
            report.temps_removed += 1
            if not dry_run:
                _remove(path)
    _sweep_points_and_staging(repo, report, cutoff, dry_run)


def _sweep_points_and_staging(
    repo: Repository, report: GcReport, cutoff: float, dry_run: bool
) -> None:
    # Maps without meta: a commit or a removal that crashed (a commit in progress is
    # newer than its job's running marker, hence than the cutoff).
    for ref, mtime in repo.point_store.incomplete():
        if mtime < cutoff:
            report.temps_removed += 1
            if not dry_run:
                repo.point_store.remove_incomplete(ref)
    report.temps_removed += repo.storage.remove_unfinished(POINTS, cutoff, dry_run=dry_run)
    local = repo.storage if isinstance(repo.storage, LocalDirectoryStorage) else None
    for path, mtime in legacy_leftovers(local.path(POINTS)) if local else ():
        if mtime < cutoff:
            report.temps_removed += 1
            if not dry_run:
                _remove(path)
    # Staged commit parts of a running job are newer than its marker, hence than the
    # cutoff; older ones belong to a commit that will never come.
    for group, mtime in repo.staging.leftovers():
        if mtime < cutoff:
            report.staged_removed += 1
            if not dry_run:
                repo.staging.remove_group(group)
    report.temps_removed += repo.staging.remove_unfinished(cutoff, dry_run=dry_run)


def _remove(path: os.PathLike[str]) -> None:
    try:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
