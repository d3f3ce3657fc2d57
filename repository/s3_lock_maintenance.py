"""Maintenance of a repository with Object Lock (s3_object_lock.py): extending retention,
purging what it no longer holds, and undoing what someone with the keys hid.

- ``extend_retention`` (gc runs it; also `vmbackup repo extend-retention`): every object
  a current point needs (its meta and maps, the packs and index objects of its chunks,
  the config and key file) whose retain-until is less than half the period away is
  locked again until now + period (kopia's approach). The version extended is the one
  the repository wrote (the oldest since the key was last hidden), so an overwrite by
  someone else does not take the original's protection with it. Objects a point needs
  whose current version is hidden (a delete marker) or differs from the original are
  listed: that is tampering (or damage) to look at, and `repo undelete` repairs it.
- ``purge_expired`` (gc): versions no reader sees (below a delete marker or below the
  current version) older than gc's cutoff are deleted by id; a locked one stays and is
  reported with its retain-until.
- ``undelete`` (`vmbackup repo undelete`): makes the original version current again for
  every pack, index object, config and key file, and for the points named (prune hides
  points the same way an attacker would, so which hidden points come back is the
  operator's choice); lists the hidden points that could come back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from repository import metrics
from repository.points import META
from repository.points import PREFIX as POINTS
from repository.repository import Repository
from repository.s3_object_lock import KeptLocked, LockedS3Storage, Version, iso, locked_name
from repository.s3_pack_store import S3PackStore
from repository.s3_pack_upload import index_object, pack_object

REPORT_MAX = 100  # kept versions listed one by one in a report (the rest are counted)
# A version was written with a lock until (the writer's) now + period, and its
# Last-Modified is the server's time of that write: so it is locked until at least
# Last-Modified + period - the clock skew between them. Versions with more than half
# the period of that left need no HEAD (COMPLIANCE cannot be shortened; GOVERNANCE only
# by who may bypass it, who may as well delete: `--check-all` reads them anyway).
CLOCK_SKEW = 3600.0


@dataclass
class RetentionReport:
    mode: str
    period_seconds: int
    checked: int = 0  # objects current points need
    looked_up: int = 0  # versions whose retain-until was read (a HEAD each)
    extended: int = 0  # locked again (would be, with dry_run)
    hidden: list[str] = field(default_factory=list)  # needed, current version deleted
    overwritten: list[str] = field(default_factory=list)  # needed, current != original
    min_retain_until: str | None = None  # the soonest, after extending (ISO, UTC)
    headroom_seconds: float | None = None  # min_retain_until - now
    dry_run: bool = False


def locked_storage(repo: Repository) -> LockedS3Storage | None:
    return repo.storage if isinstance(repo.storage, LockedS3Storage) else None


def _original(versions: list[Version]) -> list[Version]:
    """The stack since the key was last hidden (newest first, no markers)."""
    live: list[Version] = []
    for v in versions:
        if v.marker:
            if live:
                break
            continue
        live.append(v)
    return live


def needed_objects(repo: Repository, referenced: Iterable[bytes]) -> set[str]:
    """What a restore of every current point reads, as object names."""
    storage = repo.storage
    names = {"config"} | ({"keys/repokey"} if repo.encrypted else set())
    by_point: dict[str, list[str]] = {}
    for obj in storage.list(POINTS):
        prefix, _, part = obj.name.rpartition("/")
        by_point.setdefault(prefix, []).append(part)
    for prefix, parts in by_point.items():
        if META in parts:
            names.update(f"{prefix}/{p}" for p in parts)
    assert isinstance(repo.chunks, S3PackStore)
    packs = {loc.pack for cid in referenced for loc in repo.chunks.index.lookup(cid)}
    for pack in packs:
        names.update((pack_object(pack), index_object(pack)))
    return names


def extend_retention(
    repo: Repository, referenced: Iterable[bytes], *, dry_run: bool = False, check_all: bool = False
) -> RetentionReport:
    """``check_all``: read every needed version's retain-until (a HEAD each); else only
    of versions old enough that their lock from the write may be due (see CLOCK_SKEW)."""
    storage = locked_storage(repo)
    assert storage is not None
    policy = storage.policy
    report = RetentionReport(policy.mode, policy.period, dry_run=dry_run)
    needed = needed_objects(repo, referenced)
    versions = storage.all_versions("")
    now = time.time()
    soonest: float | None = None
    for name in sorted(needed):
        vs = versions.get(name, [])
        report.checked += 1
        if not vs or vs[0].marker:
            report.hidden.append(name)
        live = _original(vs)
        if not live:
            continue
        first = live[-1]
        if not vs[0].marker and vs[0].etag != first.etag:
            report.overwritten.append(name)
        for v in (v for v in live if v.etag == first.etag):
            written = v.mtime + policy.period - CLOCK_SKEW  # locked at least until then
            if not check_all and written - now >= policy.extend_within:
                soonest = written if soonest is None else min(soonest, written)
                continue
            report.looked_up += 1
            until = storage.retain_until(name, v.version_id) or 0.0
            if until < now + policy.extend_within:
                report.extended += 1
                if not dry_run:
                    storage.set_retention(name, v.version_id, policy.until(now))
                    until = now + policy.period
            soonest = until if soonest is None else min(soonest, until)
    if soonest is not None:
        report.min_retain_until = iso(soonest)
        report.headroom_seconds = round(soonest - now, 1)
        if not dry_run:
            metrics.REPO_LOCK_SOONEST.set(soonest)
    if not dry_run:
        metrics.REPO_LOCK_PERIOD.set(policy.period)
        metrics.REPO_LOCK_UNPROTECTED.set(len(report.hidden) + len(report.overwritten))
    return report


@dataclass
class PurgeReport:
    purged: int = 0  # versions deleted (would be, with dry_run)
    kept: list[KeptLocked] = field(default_factory=list)  # the first REPORT_MAX locked
    kept_total: int = 0


def purge_expired(storage: LockedS3Storage, cutoff: float, *, dry_run: bool) -> PurgeReport:
    report = PurgeReport()
    for name, vs in storage.all_versions("").items():
        hidden = vs[0].marker
        remaining = 0 if hidden else 1  # versions left (the current one stays)
        for v in vs if hidden else vs[1:]:  # what no reader sees
            if v.marker:
                continue
            if v.mtime >= cutoff:
                remaining += 1
            elif dry_run or storage.delete_version(name, v.version_id):
                report.purged += 1
            else:
                remaining += 1
                _kept(storage, report, name, v)
        if dry_run or (hidden and remaining):
            continue
        for m in (v for v in vs if v.marker):  # markers that hide nothing any more
            storage.delete_version(name, m.version_id)
    return report


def _kept(storage: LockedS3Storage, report: PurgeReport, name: str, v: Version) -> None:
    report.kept_total += 1
    if len(report.kept) < REPORT_MAX:
        until = storage.retain_until(name, v.version_id) or 0.0
        report.kept.append(KeptLocked(name, until))


@dataclass
class UndeleteReport:
    restored: list[str] = field(default_factory=list)  # objects made current again
    hidden_points: list[str] = field(default_factory=list)  # "vm/point": can come back
    dry_run: bool = False


def undelete(
    storage: LockedS3Storage, points: set[str] | None, *, dry_run: bool = False
) -> UndeleteReport:
    """``points``: point ids to bring back (None: every hidden one)."""
    report = UndeleteReport(dry_run=dry_run)
    for name, vs in sorted(storage.all_versions("").items()):
        if not locked_name(name):
            continue
        originals = [v for v in vs if not v.marker]
        if not originals:
            continue
        orig = originals[-1]
        if not vs[0].marker and vs[0].etag == orig.etag:
            continue  # as written
        parts = name.split("/")
        is_point = parts[0] == POINTS and len(parts) == 4
        if is_point and points is not None and parts[2] not in points:
            if parts[3] == META and vs[0].marker:
                report.hidden_points.append(f"{parts[1]}/{parts[2]}")
            continue
        report.restored.append(name)
        if not dry_run:
            _restore(storage, name, vs, orig)
    return report


def _restore(storage: LockedS3Storage, name: str, vs: list[Version], orig: Version) -> None:
    """Delete what lies on top of ``orig``; copy it on top when a locked one is there."""
    for v in vs:
        if not v.marker and v.etag == orig.etag:
            return
        if not storage.delete_version(name, v.version_id):
            break
    storage.copy_version(name, orig.version_id)
