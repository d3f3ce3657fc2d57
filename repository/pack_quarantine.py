"""A damaged chunk of a pack taken out of the index (the rest of the pack stays usable).

verify found the blob at (pack, offset) bad: its bytes are copied to the quarantine
with a record naming the place, then every index file listing that place is rewritten
without it (under the gc lock, which index rewrites share), so no lookup finds it any
more: a have-query answers "absent", the next backup of the same data stores a good
copy in a new pack, and gc counts the damaged bytes as dead space of the old pack.
``put_back`` (repair, the copy checks good again) lists the place in a new index file.
On S3 the index objects stay as written and the quarantine's records say what to leave
out (s3_quarantine.py).
"""

from __future__ import annotations

from repository import s3_quarantine
from repository.fsutil import lock_file
from repository.pack_compact import merge_index_files
from repository.pack_index_file import Location
from repository.pack_store import GC_LOCK, PackStore
from repository.pack_writer import write_index
from repository.quarantine import Quarantine
from repository.s3_pack_store import S3PackStore
from repository.s3_pack_upload import index_object, pack_object


def quarantine_blob(
    store: PackStore, q: Quarantine, chunk_id: bytes, loc: Location, data: bytes, reason: str
) -> None:
    if isinstance(store, S3PackStore):
        s3_quarantine.quarantine_blob(store, q, chunk_id, loc, data, reason)
        return
    where = {"pack": loc.pack.hex(), "offset": loc.offset, "length": loc.length}
    q.put_copy(chunk_id, data, reason, where)
    with lock_file(store.root / GC_LOCK, wait=True):
        store.index.refresh()
        bad = (chunk_id, loc)
        holding = [f for f in store.index.files() if loc in f.lookup(chunk_id)]
        for f in holding:
            merge_index_files(store.root, [f], keep=lambda cid, at: (cid, at) != bad)
        store.index.refresh()


def put_back(store: PackStore, q: Quarantine, chunk_id: bytes) -> bool:
    """List the quarantined place in the index again and drop the quarantine's copy;
    False when the record names no place in a pack."""
    rec = q.record(chunk_id) or {}
    try:
        loc = Location(bytes.fromhex(rec["pack"]), int(rec["offset"]), int(rec["length"]))
    except (KeyError, TypeError, ValueError):
        return False
    if isinstance(store, S3PackStore):
        s = store.storage  # gc may have dropped the pack since: then nothing to put back
        if not (s.exists(pack_object(loc.pack)) and s.exists(index_object(loc.pack))):
            return False
        s3_quarantine.put_back(store, q, chunk_id, loc)
        return True
    write_index(store.root, f"{loc.pack.hex()}-{chunk_id.hex()[:16]}.idx", [(chunk_id, loc)])
    store.index.refresh()
    q.drop(chunk_id)
    return True
