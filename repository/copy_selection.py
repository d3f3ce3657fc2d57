"""Which restore points `repo copy` copies from one repository to another. Pure: the
source's points, the ids the target already holds, the filter and the time in; the plan
out (what to copy, what the target has already, oldest first per VM).

The filters narrow in this order: the policy (``--policy``: the points of its jobs, whose
ids name it), the VMs (``--vm``, a uuid or a name), the age window
(``--newer-than`` / ``--older-than``, by snapshot time), then the newest ``--latest`` N
of each VM among what is left. A point the target holds already (same id: a point's id
is derived from its job, VM and snapshot time, so a copy keeps it) is never copied again:
a rerun, after a kill or the next night, continues where the last one stopped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from common.job_ids import policy_of_job
from repository.errors import InvalidRequestError
from repository.points import Point

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds of an age such as "36h", "7d", "2w", "90m" or "3600" (seconds)."""
    m = _AGE.fullmatch(text.strip().lower())
    if not m:
        raise InvalidRequestError(
            f"not an age: {text!r} (a number with s, m, h, d or w, e.g. 36h, 7d, 2w)"
        )
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True, slots=True)
class CopyFilter:
    vms: tuple[str, ...] = ()  # uuids or names; () = every VM
    newer_than: float | None = None  # seconds: only points younger than this
    older_than: float | None = None  # seconds: only points older than this
    latest: int | None = None  # per VM, the N newest of what the other filters left
    policy: str = ""  # only points of this policy's jobs; "" = of any

    def __post_init__(self) -> None:
        if self.latest is not None and self.latest <= 0:
            raise InvalidRequestError(f"--latest {self.latest}: must be at least 1")
        for name in ("newer_than", "older_than"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidRequestError(f"--{name.replace('_', '-')}: must not be negative")
        if (
            self.newer_than is not None
            and self.older_than is not None
            and self.older_than >= self.newer_than
        ):
            raise InvalidRequestError(
                "--older-than must be less than --newer-than: no point is both"
            )

    def describe(self) -> str:
        parts = []
        if self.policy:
            parts.append(f"policy {self.policy}")
        if self.vms:
            parts.append("VMs " + ", ".join(self.vms))
        if self.newer_than is not None:
            parts.append(f"newer than {self.newer_than:g} s")
        if self.older_than is not None:
            parts.append(f"older than {self.older_than:g} s")
        if self.latest is not None:
            parts.append(f"latest {self.latest} per VM")
        return "; ".join(parts) or "every point"

    def select(self, points: Iterable[Point], now: float) -> list[Point]:
        """The points the filter names, by VM then oldest first."""
        wanted = set(self.vms)
        chosen: dict[str, list[Point]] = {}
        for p in points:
            if self.policy and policy_of_job(p.job_id) != self.policy:
                continue
            if wanted and p.vm_uuid not in wanted and p.vm_name not in wanted:
                continue
            age = now - p.snapshot_time
            if self.newer_than is not None and age >= self.newer_than:
                continue
            if self.older_than is not None and age <= self.older_than:
                continue
            chosen.setdefault(p.vm_uuid, []).append(p)
        out: list[Point] = []
        for vm in sorted(chosen):
            pts = sorted(chosen[vm], key=lambda p: (p.snapshot_time, p.id))
            out += pts[-self.latest :] if self.latest is not None else pts
        return out

    def unmatched_vms(self, points: Iterable[Point]) -> list[str]:
        """The --vm values that name no VM of the source (most likely a typo)."""
        known: set[str] = set()
        for p in points:
            known.update((p.vm_uuid, p.vm_name))
        return [v for v in self.vms if v not in known]


@dataclass(frozen=True, slots=True)
class CopyPlan:
    to_copy: list[Point]  # by VM, oldest first: a point's base is copied before it
    present: list[Point]  # selected, and already in the target


def plan_copy(
    points: Iterable[Point], target_ids: Collection[str], selection: CopyFilter, now: float
) -> CopyPlan:
    selected = selection.select(points, now)
    return CopyPlan(
        to_copy=[p for p in selected if p.id not in target_ids],
        present=[p for p in selected if p.id in target_ids],
    )
