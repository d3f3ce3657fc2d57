"""Guest-like change sets for the end-to-end benchmark, applied and reverted exactly.

Every tool must see the same images before its full and the same changes before its
incremental, so a change set remembers the bytes it overwrote and can put them back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from lab.guest import DiskWriter

KiB = 1 << 10
MiB = 1 << 20
RUN_LENGTHS = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB)  # logs, DB pages, files
ALIGN = 4 * KiB


@dataclass(frozen=True)
class Disk:
    """One flat file of the lab and how much of it holds data."""

    path: Path
    capacity: int
    allocated: int


@dataclass(frozen=True)
class Write:
    disk: int  # index into the disk list
    offset: int
    length: int
    seed: int  # the bytes are random.Random(seed).randbytes(length)


@dataclass
class ChangeSet:
    """Writes to apply in order; ``undo`` holds the bytes they replaced, newest last."""

    name: str
    writes: list[Write]
    undo: list[tuple[Write, bytes]] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        return sum(w.length for w in self.writes)

    def changed_bytes(self) -> int:
        """Distinct bytes touched (overlapping writes counted once)."""
        by_disk: dict[int, list[tuple[int, int]]] = {}
        for w in self.writes:
            by_disk.setdefault(w.disk, []).append((w.offset, w.offset + w.length))
        total = 0
        for spans in by_disk.values():
            end = -1
            for lo, hi in sorted(spans):
                lo = max(lo, end)
                if hi > lo:
                    total += hi - lo
                    end = hi
        return total

    def disks_touched(self) -> set[int]:
        return {w.disk for w in self.writes}

    def apply(self, disks: list[Disk]) -> None:
        if self.undo:
            raise RuntimeError(f"change set {self.name} is already applied")
        for w in self.writes:
            d = disks[w.disk]
            with DiskWriter(d.path) as disk:  # the guest's I/O path (lab.guest)
                old = disk.pread(w.length, w.offset)
                # Past the end of a short read the file is a hole: zeros to restore.
                old += bytes(w.length - len(old))
                disk.pwrite(random.Random(w.seed).randbytes(w.length), w.offset)
            self.undo.append((w, old))

    def revert(self, disks: list[Disk]) -> None:
        """Put back the old bytes, newest write first (overlapping writes undo correctly)."""
        while self.undo:
            w, old = self.undo.pop()
            with DiskWriter(disks[w.disk].path) as disk:
                disk.pwrite(old, w.offset)


def _pick_disk(rng: random.Random, disks: list[Disk], total: int) -> int:
    """A disk chosen in proportion to its allocated bytes (busy disks change more)."""
    x = rng.randrange(total)
    for i, d in enumerate(disks):
        x -= d.allocated
        if x < 0:
            return i
    return len(disks) - 1


def guest_runs(disks: list[Disk], fraction: float, seed: int) -> ChangeSet:
    """``fraction`` of the allocated bytes rewritten in runs of 64 KiB to 8 MiB."""
    rng = random.Random(f"runs:{seed}")
    total = sum(d.allocated for d in disks)
    budget = int(total * fraction)
    writes: list[Write] = []
    while budget > 0:
        i = _pick_disk(rng, disks, total)
        cap = disks[i].capacity
        length = min(rng.choice(RUN_LENGTHS), budget, cap // ALIGN * ALIGN)
        length = max(ALIGN, length // ALIGN * ALIGN)
        offset = rng.randrange(0, (cap - length) // ALIGN + 1) * ALIGN
        writes.append(Write(i, offset, length, rng.getrandbits(64)))
        budget -= length
    return ChangeSet("runs 64 KiB-8 MiB", writes)


def isolated_writes(
    disks: list[Disk], fraction: float, seed: int, chunk: int = MiB, length: int = 64 * KiB
) -> ChangeSet:
    """The same share as isolated ``length`` writes, each in a chunk of its own (worst case)."""
    rng = random.Random(f"isolated:{seed}")
    total = sum(d.allocated for d in disks)
    count = int(total * fraction) // length
    slots = [(i, c) for i, d in enumerate(disks) for c in range(d.capacity // chunk)]
    if count > len(slots):
        raise ValueError(f"{count} isolated writes do not fit in {len(slots)} chunks")
    writes = []
    for i, c in sorted(rng.sample(slots, count)):
        within = rng.randrange(0, (chunk - length) // ALIGN + 1) * ALIGN
        writes.append(Write(i, c * chunk + within, length, rng.getrandbits(64)))
    return ChangeSet("isolated 64 KiB", writes)
