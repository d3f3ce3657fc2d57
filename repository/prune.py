"""prune: apply keep rules (repository/retention.py) to a repository's points, of one
policy or all, and remove the rest (their maps only: gc frees chunks). The running-backup
markers say which jobs run (markers older than gc's stale limit are crashed jobs and
are ignored, as gc ignores them)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from common.progress import Progress, no_progress
from repository.errors import PointNotFoundError
from repository.gc import STALE_MARKER
from repository.interfaces import Pruner
from repository.retention import Decision, KeepPolicy, RunningJob, decide
from repository.s3_object_lock import drain_kept, iso


@dataclass
class PruneResult:
    decisions: list[Decision] = field(default_factory=list)
    dry_run: bool = False
    policy: str | None = None
    stale_markers: list[str] = field(default_factory=list)  # ignored: crashed jobs
    stale_holds: list[str] = field(default_factory=list)  # ignored: killed readers
    # Object Lock: removed points whose objects stay locked (hidden) until retain_until
    locked: list[dict[str, str]] = field(default_factory=list)

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]


def running(markers: list[dict[str, Any]], now: float) -> tuple[list[RunningJob], list[str]]:
    """The jobs the markers say run, and the stale markers left out."""
    jobs, stale = [], []
    for m in markers:
        if m["started"] < now - STALE_MARKER:
            stale.append(f"{m['job_id']} ({m['marker']})")
        else:
            jobs.append(RunningJob(str(m["job_id"]), float(m["started"])))
    return jobs, stale


def prune(
    repo: Pruner,
    keep: KeepPolicy,
    *,
    policy: str | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress = no_progress,
) -> PruneResult:
    """Decide for the points of ``policy`` (None: every point) and, unless ``dry_run``,
    remove those not kept (``progress``: points removed of those to remove). Markers are
    read before the points: a job that starts after that plans on points the rules keep
    anyway (the newest of each disk)."""
    now = time.time() if now is None else now
    jobs, stale = running(repo.running_jobs(), now)
    held, stale_holds = holders(repo, now)
    decisions = decide(repo.points(), keep, now, policy=policy, running=jobs, held=held)
    result = PruneResult(decisions, dry_run, policy, stale, stale_holds)
    if not dry_run:
        gone = len(result.remove)
        n = 0
        for i, d in enumerate(result.decisions):
            if d.keep:
                continue
            # A hold written since we read them (an export starting now) wins: the
            # export checks its point after writing its hold, so one of us sees the other.
            late = holders(repo, now)[0].get(d.point.id)
            if late:
                result.decisions[i] = Decision(d.point, True, (late,))
            else:
                # removed meanwhile (the same request handled twice): what was asked is done
                with contextlib.suppress(PointNotFoundError):
                    repo.delete_point(d.point.id)
                kept = drain_kept(getattr(repo, "storage", None))
                if kept:
                    until = max(k.retain_until for k in kept)
                    result.locked.append({"point": d.point.id, "retain_until": iso(until)})
            n += 1
            progress(n, gone)
    return result


def holders(repo: Pruner, now: float) -> tuple[dict[str, str], list[str]]:
    """Point id -> who holds it, from the live holds; and the stale holds left out."""
    held: dict[str, str] = {}
    stale = []
    for h in repo.point_holds():
        if h.stale(now):
            stale.append(f"{h.describe()} ({h.location})")
        else:
            held[h.point_id] = h.describe()
    return held, stale
