"""verify on packs: every sealed pack read once, every blob it indexes checked.

Reads each pack whole (one sequential read per pack, not one per chunk) and decodes
each indexed blob against its id; a bad one is quarantined (pack_quarantine.py) and
the rest of its pack stays in use. Open packs (a live writer's) are checked once
sealed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from common.progress import Progress, no_progress
from repository.errors import RepositoryError
from repository.pack_index_file import Location
from repository.pack_quarantine import quarantine_blob
from repository.pack_store import PackStore
from repository.repository import Repository

BadChunk = Callable[[bytes, str, str, bool], None]  # (id, where, why, quarantined)


def check_packs(
    repo: Repository,
    sample: int | None,
    rng: random.Random,
    bad: BadChunk,
    progress: Progress = no_progress,
) -> tuple[int, int, int]:
    """(chunks checked, chunks indexed, plaintext bytes checked); ``bad`` is told of
    each damaged blob after it was quarantined (or why it could not be);
    ``progress`` in blob bytes read."""
    store = repo.chunks
    assert isinstance(store, PackStore)
    entries = list(dict.fromkeys(store.iter_ids()))  # one per (id, place)
    total = len(entries)
    if sample is not None and sample < total:
        entries = rng.sample(entries, sample)
    by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
    for cid, loc in entries:
        by_pack[loc.pack].append((cid, loc))
    checked = nbytes = done = 0
    todo = sum(loc.length for _, loc in entries)
    progress(0, todo)
    for pack, items in sorted(by_pack.items()):
        path = store.pack_where(pack)
        try:
            data: bytes | None = store.read_pack(pack)
        except (OSError, RepositoryError) as exc:
            data, why = None, f"pack {path} unreadable: {getattr(exc, 'strerror', None) or exc}"
        for cid, loc in sorted(items, key=lambda e: e[1].offset):
            checked += 1
            done += loc.length
            progress(done, todo)
            blob = data[loc.offset : loc.offset + loc.length] if data is not None else b""
            if data is not None:
                try:
                    nbytes += len(repo.decode_chunk(cid, blob))
                    continue
                except RepositoryError as exc:
                    why = str(exc)
                except Exception as exc:  # never crash on corrupt data
                    why = f"unexpected: {exc!r}"
            where = f"{path} offset {loc.offset}"
            try:
                quarantine_blob(store, repo.quarantine, cid, loc, blob, why)
                moved = True
            except (OSError, RepositoryError) as exc:  # reported all the same
                moved, why = False, f"{why}; not quarantined: {exc}"
            bad(cid, where, why, moved)
    return checked, total, nbytes
