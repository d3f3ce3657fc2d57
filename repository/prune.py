"""prune: keep the last N points and the newest point of the last N hours, days,
weeks, months and years, per VM; remove the rest (their maps only: gc frees chunks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from repository.errors import InvalidRequestError
from repository.points import Point
from repository.repository import Repository

_BUCKETS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for name in ("last", *_BUCKETS):
            if getattr(self, name) < 0:
                raise InvalidRequestError(f"--keep-{name} must not be negative")
        if not any(getattr(self, n) for n in ("last", *_BUCKETS)):
            raise InvalidRequestError("no --keep-* option given: refusing to remove every point")


@dataclass
class PruneResult:
    keep: list[tuple[Point, list[str]]] = field(default_factory=list)  # point, reasons
    remove: list[Point] = field(default_factory=list)
    dry_run: bool = False


def plan(points: list[Point], policy: KeepPolicy) -> PruneResult:
    """Decide per VM; ``points`` may mix VMs. Pure: no repository access."""
    result = PruneResult()
    by_vm: dict[str, list[Point]] = {}
    for p in points:
        by_vm.setdefault(p.vm_uuid, []).append(p)
    for pts in by_vm.values():
        pts = sorted(pts, key=lambda p: (p.snapshot_time, p.id), reverse=True)  # newest first
        reasons: dict[str, list[str]] = {p.id: [] for p in pts}
        for p in pts[: policy.last]:
            reasons[p.id].append("last")
        for kind, bucket_of in _BUCKETS.items():
            want = getattr(policy, kind)
            seen: set[str] = set()
            for p in pts:
                if len(seen) >= want:
                    break
                b = bucket_of(datetime.fromtimestamp(p.snapshot_time, UTC))
                if b not in seen:
                    seen.add(b)
                    reasons[p.id].append(kind)
        for p in pts:
            if reasons[p.id]:
                result.keep.append((p, reasons[p.id]))
            else:
                result.remove.append(p)
    return result


def prune(repo: Repository, policy: KeepPolicy, *, dry_run: bool = False) -> PruneResult:
    result = plan(repo.points(), policy)
    result.dry_run = dry_run
    if not dry_run:
        for p in result.remove:
            repo.delete_point(p.id)
    return result
