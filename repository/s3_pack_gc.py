"""gc's sweep on a repository on S3: drop packs with nothing live, rewrite mostly-dead ones.

The rules of pack_sweep_plan.py (live = named by a point or touched at or after the
cutoff; only packs whose object is older than the cutoff are looked at; a pack is
rewritten when at least 10 % of its bytes are dead), with objects for files:

- a pack with nothing live: its pack object is deleted, then its index object (a crash
  between leaves an index object naming no pack: the next gc deletes it);
- a pack to rewrite: its live chunks are copied (ranged GETs) into new packs, uploaded
  with their index objects; just before the old pack goes, the touch logs are read
  again and any of its chunks touched since gc began is copied too; then the old pack
  object and its index object are deleted. A reader holding the old location looks its
  chunk up again (s3_pack_store.S3PackStore.read).
- pack objects no index object names (an upload killed between the pack and its
  index), older than the cutoff, are deleted: the writer's cache still has the open
  pack and uploads it again when it next opens; incomplete multipart uploads older
  than the cutoff are aborted.

The touch logs read are the ones in this host's cache directory (touch_log.py): a backup
on another host that dedups against a chunk only a pruned point named is protected by
its commit's check instead (the commit refuses a point naming a missing chunk, and the
job stores it again on its retry). Before each deletion gc checks that it still holds
its lock object (s3_gc_lock.py). With Object Lock (s3_object_lock.py) a pack still
locked is neither dropped nor rewritten, and is listed in ``locked``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from repository import touch_log
from repository.pack_index_file import Location
from repository.pack_sweep_plan import SweepCounts, plan_sweep
from repository.s3_gc_lock import ObjectLock
from repository.s3_object_lock import KeptLocked, locked_until
from repository.s3_pack_store import S3PackStore
from repository.s3_pack_upload import INDEX, PACKS, UploadingPack, index_object, pack_object


class S3PackSweep(SweepCounts):
    def __init__(
        self, store: S3PackStore, cutoff: float, start: float, dry_run: bool, lock: ObjectLock
    ) -> None:
        super().__init__()
        self.store = store
        self.cutoff = cutoff
        self.start = start
        self.dry_run = dry_run
        self.lock = lock
        self._out: UploadingPack | None = None
        self.locked: list[KeptLocked] = []  # packs kept whole: Object Lock holds them

    def run(self, live: set[bytes]) -> None:
        store, storage = self.store, self.store.storage
        if not self.dry_run:
            store.recover()
        store.index.refresh(force=True)
        live = live | touch_log.touched_since(store.root, self.cutoff)
        pack_mtime: dict[bytes, float] = {}
        for obj in storage.list(PACKS):
            h = obj.name.rsplit("/", 1)[-1]
            if len(h) == 32:
                pack_mtime[bytes.fromhex(h)] = obj.mtime
        index_mtime = {
            bytes.fromhex(o.name[len(INDEX) + 1 :]): o.mtime
            for o in storage.list(INDEX)
            if len(o.name) == len(INDEX) + 33
        }
        by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
        quarantined = store.index.quarantined.holds  # dead: never copied into a new pack
        # an entry may be in two cache files at once (a merge racing an upload's copy)
        for cid, loc in dict.fromkeys(e for f in store.index.files() for e in f):
            if not quarantined(cid, loc):
                by_pack[loc.pack].append((cid, loc))
        plan = plan_sweep(
            by_pack,
            live,
            lambda pack: pack_mtime.get(pack, float("inf")) >= self.cutoff,
            self._unlocked,
        )
        self.count(plan)
        kept, old, changed = plan.kept, plan.old, plan.changed
        if not self.dry_run:
            for keep in plan.rewrite.values():
                self._copy(keep)
        # left by crashes: index objects of no pack, packs of no index object
        dangling = [p for p, t in index_mtime.items() if p not in pack_mtime and t < self.cutoff]
        orphans = [p for p, t in pack_mtime.items() if p not in index_mtime and t < self.cutoff]
        self.temps_removed += len(dangling) + len(orphans)
        if self.dry_run:
            return
        self._seal_out()
        if changed:
            # touched after gc began: a backup may have been told "present" just now
            touched = touch_log.touched_since(store.root, self.start)
            self._copy(
                (c, loc)
                for p in sorted(changed)
                for c, loc in old[p]
                if c in touched and c not in kept
            )
            self._seal_out()
        for pack in sorted(changed):
            self.lock.check()
            store.drop_pack(pack)
        for pack in dangling:
            self.lock.check()
            storage.delete(index_object(pack))
        for pack in orphans:
            self.lock.check()
            storage.delete(pack_object(pack))
        self.temps_removed += storage.remove_unfinished(PACKS, self.cutoff)
        store.index.refresh(force=True)
        self.temps_removed += touch_log.remove_old(store.root, self.cutoff)

    def _unlocked(self, pack: bytes) -> bool:
        """Object Lock: a pack still locked is neither dropped nor rewritten (a copy)."""
        until = locked_until(self.store.storage, pack_object(pack))
        if until is not None:
            self.locked.append(KeptLocked(pack_object(pack), until))
        return until is None

    def _copy(self, items: Iterable[tuple[bytes, Location]]) -> None:
        for cid, loc in items:
            data = self.store.read_at(cid, loc)
            if self._out is None:
                self._out = self.store.new_pack()
            self._out.append([(cid, [data])])
            if self._out.size >= self.store.pack_size:
                self._seal_out()

    def _seal_out(self) -> None:
        if self._out is not None:
            self._out.seal()
            self._out = None
