"""Which restore points a retention policy keeps, and why. Pure: points, the keep rules,
the running jobs and the time in; one decision per point out, with its reasons.

The rules (GFS, in the manner of restic's ``forget``): keep the ``last`` N points, and the
newest point of each of the N newest hours, days, ISO weeks, months and years (UTC) that
have points at all. Periods without a point do not count, so a policy whose backups
stopped keeps what it had instead of ageing everything out.

They apply per VM and disk: a point stays when, for one of its disks, it is among what
the rules keep of that VM's points holding that disk. A partial point (some disks failed)
therefore never pushes out the last point of the disk it lacks, and the newest point of
every disk is always kept: a new incremental can always be based on it.

Never removed whatever the rules say:
- points of a running job (repository running markers);
- points held by a reader outside a backup (an export: repository/holds.py);
- points a running job may use as its base: per VM and disk, the newest point that
  existed when the job started, and every point committed since (a commit that names a
  base point which is gone is refused: repository/point_committer.py).

A point that only a removed point's incremental was based on needs no protection: every
point's maps are synthetic fulls (point_committer.py lays the new entries over the base
map and writes the whole map), so each point restores on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from common.job_ids import policy_of_job
from repository.errors import InvalidRequestError
from repository.points import Point

# How the periods are named in reasons: "daily 2026-12-01", "weekly 2026-W48".
BUCKETS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}
RULES = ("last", *BUCKETS)
_PERIOD = {"hourly": "hours", "daily": "days", "weekly": "weeks", "monthly": "months"}
# Marker start times and point creation times come from different writer hosts' clocks.
CLOCK_SKEW = 300.0


@dataclass(frozen=True)
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for name in RULES:
            if getattr(self, name) < 0:
                raise InvalidRequestError(f"keep {name} (--keep-{name}) must not be negative")
        if not any(getattr(self, n) for n in RULES):
            raise InvalidRequestError(
                "no keep rule given (--keep-* or the policy's retention): refusing to remove"
                " every point"
            )

    def describe(self) -> str:
        """E.g. "last 3, daily 7, monthly 12"."""
        return ", ".join(f"{n} {getattr(self, n)}" for n in RULES if getattr(self, n))

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in RULES}


@dataclass(frozen=True)
class RunningJob:
    """A backup in progress, from its repository marker ("?" when the marker is
    unreadable: its start time still protects the points it may base on)."""

    job_id: str
    started: float


@dataclass(frozen=True)
class Decision:
    point: Point
    keep: bool
    reasons: tuple[str, ...]

    @property
    def verb(self) -> str:
        return "keep" if self.keep else "remove"

    def text(self) -> str:
        """E.g. "keep (daily 2026-12-01, weekly 2026-W48)"."""
        return f"{self.verb} ({'; '.join(self.reasons)})"


@dataclass
class _Why:
    """Reasons for one point, each with the disks it holds for (a reason true for only
    some of a point's disks names them)."""

    keep: dict[str, set[int | None]] = field(default_factory=dict)
    not_kept: dict[str, None] = field(default_factory=dict)  # ordered set
    protected: dict[str, None] = field(default_factory=dict)

    def add_keep(self, reason: str, disk: int | None) -> None:
        self.keep.setdefault(reason, set()).add(disk)


def decide(
    points: Iterable[Point],
    keep: KeepPolicy,
    now: float,
    *,
    policy: str | None = None,
    running: Sequence[RunningJob] = (),
    held: Mapping[str, str] = {},
) -> list[Decision]:
    """One decision per point of ``policy`` (its job id names it; None: every point),
    grouped by VM (by name), newest first; ``held``: point id -> who holds it. Points of
    other policies get no decision: nothing here can remove them, and they still count
    when deciding what a running job may base on."""
    every = list(points)
    mine = [p for p in every if policy is None or policy_of_job(p.job_id) == policy]
    why = {p.id: _Why() for p in mine}
    for disk, series in _series(mine).items():
        _apply_rules(series, keep, why, disk)
    _protect_running(every, why, running)
    for pid, holder in held.items():
        if pid in why:
            why[pid].protected[holder] = None
    out = []
    for p in sorted(mine, key=lambda p: (p.vm_name, p.vm_uuid, -p.snapshot_time, p.id)):
        w = why[p.id]
        disks: set[int | None] = {d.key for d in p.disks} or {None}
        kept = [r if ds >= disks else f"{r} (disk {_keys(ds)})" for r, ds in w.keep.items()]
        if w.protected or kept:
            out.append(Decision(p, True, (*w.protected, *kept)))
        else:
            age = f"{_age(now - p.snapshot_time)} old"
            out.append(Decision(p, False, (*w.not_kept, age)))
    return out


def _series(points: list[Point]) -> dict[tuple[str, int | None], list[Point]]:
    """Per VM and disk key, the points holding that disk, newest first (a point with no
    disk at all is in its VM's series of such points, key None)."""
    out: dict[tuple[str, int | None], list[Point]] = {}
    for p in points:
        keys: list[int | None] = [d.key for d in p.disks]
        for key in keys or [None]:
            out.setdefault((p.vm_uuid, key), []).append(p)
    for pts in out.values():
        pts.sort(key=lambda p: (p.snapshot_time, p.id), reverse=True)
    return out


def _apply_rules(
    series: list[Point], keep: KeepPolicy, why: dict[str, _Why], disk: tuple[str, int | None]
) -> None:
    key = disk[1]
    if keep.last:
        for i, p in enumerate(series):
            if i < keep.last:
                why[p.id].add_keep(f"last #{i + 1}", key)
            else:
                why[p.id].not_kept[f"not among the last {keep.last}"] = None
    for kind, bucket_of in BUCKETS.items():
        want = getattr(keep, kind)
        if not want:
            continue
        seen: set[str] = set()
        for p in series:
            b = bucket_of(datetime.fromtimestamp(p.snapshot_time, UTC))
            if b in seen:
                why[p.id].not_kept[f"{kind} {b} is kept by a newer point"] = None
            elif len(seen) < want:
                seen.add(b)
                why[p.id].add_keep(f"{kind} {b}", key)
            else:
                period = _PERIOD.get(kind, "years")
                newest = f"{want} newest {period}" if want > 1 else f"newest {period[:-1]}"
                why[p.id].not_kept[f"{kind} {b} is past the {newest}"] = None


def _protect_running(
    every: list[Point], why: dict[str, _Why], running: Sequence[RunningJob]
) -> None:
    if not running:
        return
    for p in every:
        for r in running:
            if p.id in why and p.job_id == r.job_id:
                why[p.id].protected[f"running job {r.job_id}"] = None
    for series in _series(every).values():
        for r in running:
            since = r.started - CLOCK_SKEW
            newest_before = next((p for p in series if p.created < since), None)
            for p in series:
                if p.id not in why or p.job_id == r.job_id:
                    continue
                if p.created >= since or p is newest_before:
                    why[p.id].protected[f"running job {r.job_id} may base on it"] = None


def _keys(disks: set[int | None]) -> str:
    return ", ".join(str(d) for d in sorted(d for d in disks if d is not None))


def _age(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{max(0, int(seconds // 60))} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"
