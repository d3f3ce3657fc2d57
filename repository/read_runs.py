"""Chunks of one pack that lie close together, grouped to be read with one request.

A restore asks for the chunks of a disk in disk order; a backup wrote them in about that
order into a few packs, so most of them are neighbours in their pack. ``plan`` groups
``(id, location)`` pairs into runs: one pack each, sorted by offset, the gaps between
neighbours (bytes of other chunks, read and thrown away) at most ``gap``, the whole run
at most ``span`` bytes (a chunk longer than that is a run by itself). ``cut`` hands each
chunk its bytes out of the run's buffer. Nothing here checks a chunk: the caller
decodes each one and checks it against its id, as it would after a read of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from repository.pack_index_file import Location

SPAN = 16 << 20  # the longest read of one run (bytes): bounds a reader's buffer
GAP = 256 << 10  # bytes between two chunks read through rather than a second request


@dataclass(slots=True)
class Run:
    pack: bytes
    offset: int
    end: int
    members: list[tuple[bytes, Location]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.offset


def plan(
    wanted: Iterable[tuple[bytes, Location]], *, span: int = SPAN, gap: int = GAP
) -> list[Run]:
    """Runs covering every (id, location) of ``wanted`` (duplicates read once), in
    (pack, offset) order."""
    if span <= 0 or gap < 0:
        raise ValueError(f"read runs: span {span} must be > 0 and gap {gap} >= 0")
    runs: list[Run] = []
    for cid, loc in sorted(set(wanted), key=lambda w: (w[1].pack, w[1].offset, w[1].length)):
        last = runs[-1] if runs else None
        end = loc.offset + loc.length
        if (
            last is not None
            and last.pack == loc.pack
            and loc.offset - last.end <= gap
            and max(last.end, end) - last.offset <= span
        ):
            last.end = max(last.end, end)
        else:
            last = Run(loc.pack, loc.offset, end)
            runs.append(last)
        last.members.append((cid, loc))
    return runs


def cut(run: Run, data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(id, blob) of each member of ``run`` from ``data``, the run's bytes (a buffer
    shorter than the run is the caller's error: raised before anything is handed out)."""
    if len(data) != run.length:
        raise ValueError(f"read run of {run.length} bytes got {len(data)}")
    view = memoryview(data)
    for cid, loc in run.members:
        start = loc.offset - run.offset
        yield cid, bytes(view[start : start + loc.length])
