"""Which packs gc drops and which it rewrites: the rules local and S3 sweeps share.

Pure policy (pack_gc.py and s3_pack_gc.py do the I/O): a pack is looked at only when
it is not young (sealed before the cutoff; ``young`` says); its live entries (named by
a point or touched since the cutoff) whose id has no copy that stays elsewhere are
kept; a pack with no dead bytes stays, one with some live entries stays while less
than REWRITE_DEAD_SHARE of its bytes are dead, otherwise it is rewritten (its kept
entries copied to new packs) or, with nothing kept, dropped. ``may_change`` can veto a
pack's change (Object Lock): it then stays whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from repository.pack_index_file import Location

REWRITE_DEAD_SHARE = 0.1  # a pack is rewritten when this share of its bytes is dead
Entries = Sequence[tuple[bytes, Location]]


@dataclass
class SweepPlan:
    kept: set[bytes] = field(default_factory=set)  # ids with a copy that stays where it is
    old: dict[bytes, Entries] = field(default_factory=dict)  # packs looked at: their entries
    rewrite: dict[bytes, Entries] = field(default_factory=dict)  # pack -> entries to copy
    drop: list[bytes] = field(default_factory=list)
    chunks_seen: int = 0
    kept_young: int = 0
    chunks_removed: int = 0
    bytes_freed: int = 0

    @property
    def changed(self) -> set[bytes]:
        return set(self.drop) | set(self.rewrite)


def plan_sweep(
    by_pack: Mapping[bytes, Entries],
    live: set[bytes],
    young: Callable[[bytes], bool],
    may_change: Callable[[bytes], bool] = lambda _pack: True,
) -> SweepPlan:
    plan = SweepPlan()
    for pack, entries in by_pack.items():
        plan.chunks_seen += len(entries)
        if young(pack):
            plan.kept_young += len(entries)
            plan.kept.update(c for c, _ in entries)
        else:
            plan.old[pack] = entries
    for pack, entries in sorted(plan.old.items()):
        keep = [(c, loc) for c, loc in entries if c in live and c not in plan.kept]
        plan.kept.update(c for c, _ in keep)
        total = sum(loc.length for _, loc in entries)
        dead = total - sum(loc.length for _, loc in keep)
        if dead == 0 or (keep and dead < REWRITE_DEAD_SHARE * total) or not may_change(pack):
            plan.kept.update(c for c, _ in entries)
            continue
        plan.chunks_removed += len(entries) - len(keep)
        plan.bytes_freed += dead
        if keep:
            plan.rewrite[pack] = keep
        else:
            plan.drop.append(pack)
    return plan


class SweepCounts:
    """What a sweep did, for gc's report (pack_gc.PackSweep, s3_pack_gc.S3PackSweep)."""

    def __init__(self) -> None:
        self.chunks_seen = self.chunks_removed = self.bytes_freed = self.kept_young = 0
        self.packs_rewritten = self.packs_removed = self.temps_removed = 0

    def count(self, plan: SweepPlan) -> None:
        self.chunks_seen += plan.chunks_seen
        self.kept_young += plan.kept_young
        self.chunks_removed += plan.chunks_removed
        self.bytes_freed += plan.bytes_freed
        self.packs_rewritten += len(plan.rewrite)
        self.packs_removed += len(plan.drop)
