"""gc's sweep on packs: drop packs with nothing live, rewrite those with dead chunks.

Live = named by a point (gc's mark) or recorded in a touch log at or after the cutoff
(a running backup relied on it; touch_log.py). Only sealed packs older than the cutoff
are looked at, so whatever a running backup stored stays (which packs change:
pack_sweep_plan.py). For each such pack with dead entries: its live blobs are copied
into new packs (sealed and indexed first), then the index is rewritten without the old
pack's entries, then the touch logs are read again and any of its dropped chunks
touched since gc began is copied back (a have-query that answered "present" just
before the index changed). The old pack file stays on disk,
unindexed, with its mtime set to now: readers that looked it up before keep reading it,
and a later gc deletes it once it is older than that run's cutoff (rescuing first any
live id only it still holds).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable

from repository import pack_format, touch_log
from repository.pack_compact import merge_index_files
from repository.pack_index_file import Location
from repository.pack_store import PackStore
from repository.pack_sweep_plan import SweepCounts, plan_sweep
from repository.pack_writer import OpenPack


class PackSweep(SweepCounts):
    def __init__(self, store: PackStore, cutoff: float, start: float, dry_run: bool) -> None:
        super().__init__()
        self.store = store
        self.cutoff = cutoff
        self.start = start
        self.dry_run = dry_run
        # bytes_freed counts what left the index; the files go later (module docstring)
        self.bytes_pending = 0  # pack files this run unindexed: on disk until a later gc
        self.bytes_deleted = 0  # pack files this run deleted (unindexed by an earlier one)
        self._out: OpenPack | None = None

    def run(self, live: set[bytes]) -> None:
        store = self.store
        if not self.dry_run:
            store.recover()
        store.index.refresh()
        files = store.index.files()
        live = live | touch_log.touched_since(store.root, self.cutoff)
        by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
        for cid, loc in dict.fromkeys(e for f in files for e in f):
            by_pack[loc.pack].append((cid, loc))
        open_packs = store.index.open_packs()
        plan = plan_sweep(
            by_pack, live, lambda pack: pack in open_packs or self._mtime(pack) >= self.cutoff
        )
        self.count(plan)
        changed, old = plan.changed, plan.old
        if self.dry_run:
            return
        for keep in plan.rewrite.values():
            self._copy(keep)
        self._seal_out()
        if changed:
            merge_index_files(store.root, files, keep=lambda _c, loc: loc.pack not in changed)
            for pack in changed:  # unindexed from now on: deleted by a later gc
                path = store.pack_path(pack)
                os.utime(path)
                self.bytes_pending += path.stat().st_size
            store.index.refresh()
            # touched after gc began: a backup may have been told "present" just before
            self._rescue(
                (c, loc)
                for p in changed
                for c, loc in old[p]
                if c in touch_log.touched_since(store.root, self.start) and not store.exists(c)
            )
        self._delete_unindexed(live)
        self.temps_removed += touch_log.remove_old(store.root, self.cutoff)

    def _mtime(self, pack: bytes) -> float:
        try:
            return self.store.pack_path(pack).stat().st_mtime
        except FileNotFoundError:
            return float("inf")  # being renamed into place: young

    def _copy(self, items: Iterable[tuple[bytes, Location]]) -> None:
        for cid, loc in items:
            data = self.store.read_at(cid, loc)
            if self._out is None:
                self._out = OpenPack(self.store.root)
            self._out.append([(cid, [data])])
            if self._out.size >= self.store.pack_size:
                self._seal_out()

    def _seal_out(self) -> None:
        if self._out is not None:
            self._out.seal()
            self._out = None

    def _rescue(self, items: Iterable[tuple[bytes, Location]]) -> None:
        self._copy(items)
        self._seal_out()
        self.store.index.refresh()

    def _delete_unindexed(self, live: set[bytes]) -> None:
        """Pack files no index names (superseded by an earlier gc, or a copy a crashed
        gc made), older than the cutoff; live ids only they hold are copied first."""
        store = self.store
        indexed = {p for f in store.index.files() for p in f.packs} | store.index.open_packs()
        for path in sorted((store.root / "packs").glob("??/*")):
            if path.name.startswith(".") or len(path.name) != 32:
                if path.name.startswith(".") and path.stat().st_mtime < self.cutoff:
                    path.unlink(missing_ok=True)
                    self.temps_removed += 1
                continue
            pack = bytes.fromhex(path.name)
            if pack in indexed or path.stat().st_mtime >= self.cutoff:
                continue
            try:
                entries = pack_format.parse_trailer(path.read_bytes(), f"pack {path}")
            except Exception:
                entries = []  # unreadable: nothing in it can be rescued
            need = [
                (e.id, Location(pack, e.offset, e.length))
                for e in entries
                if e.id in live and not store.exists(e.id)
            ]
            if need:
                self._rescue(need)
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self.bytes_deleted += size
