"""Garbage collection: mark (touch every chunk a map names) and sweep (old, unmarked).

Marking sets each referenced chunk's mtime to now, so the mark set lives in the
file system, not in RAM. The sweep removes chunks whose mtime is older than the
cutoff = min(gc start - grace, start of the oldest backup still running). Writers
touch chunks they dedup against (have-queries, duplicate stores, commits), so a
running backup never loses a chunk it relies on. The quarantine (damaged chunks verify
moved aside) is never swept: it is evidence until ``repo repair`` finds its chunks healed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from repository.errors import LockedError, RepositoryError
from repository.repository import Repository

DEFAULT_GRACE = 300.0  # clock skew between writer hosts + timestamp granularity
STALE_MARKER = 3 * 86400.0  # a "running" marker older than this is a crashed job
LOCK = "locks/gc"


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
    cutoff: float = 0.0
    missing: list[str] = field(default_factory=list)
    stale_markers: list[str] = field(default_factory=list)
    dry_run: bool = False


@contextmanager
def gc_lock(repo: Repository) -> Iterator[None]:
    path = repo.storage.path(LOCK)  # flock(): a local file (not on the storage interface)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another gc is running on {repo.path}") from None
        yield
    finally:
        os.close(fd)


def gc(
    repo: Repository,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
) -> GcReport:
    if grace < 0:
        raise ValueError("grace must not be negative")
    report = GcReport(dry_run=dry_run)
    with gc_lock(repo):
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
        _mark(repo, report)
        _sweep(repo, report, cutoff, start, dry_run)
    return report


def _fs_now(repo: Repository) -> float:
    """The storage's clock: the mtime of the lock file gc_lock created, touched now."""
    repo.storage.touch(LOCK)
    return repo.storage.stat(LOCK).mtime


def _mark(repo: Repository, report: GcReport) -> None:
    ps = repo.point_store
    for pdir in ps.point_dirs():
        try:
            point = ps.load(pdir)
        except RepositoryError as exc:
            # an unreadable point cannot be marked: refuse to sweep rather than guess
            raise RepositoryError(f"gc stopped, nothing removed: {exc}") from None
        report.points += 1
        for disk in point.disks:
            try:
                dmap = ps.load_map(pdir, disk)
            except RepositoryError as exc:
                raise RepositoryError(f"gc stopped, nothing removed: {exc}") from None
            prev = b""
            for index, cid in dmap.iter_ids():
                if cid == prev:
                    continue
                prev = cid
                report.referenced += 1
                if not repo.chunks.touch(cid):
                    q = " (quarantined)" if repo.quarantine.get(cid) else ""
                    report.missing.append(f"{point.id} disk {disk.key} #{index} {cid.hex()}{q}")


def _sweep(repo: Repository, report: GcReport, cutoff: float, start: float, dry_run: bool) -> None:
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
    for path, mtime in repo.point_store.leftovers():
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
