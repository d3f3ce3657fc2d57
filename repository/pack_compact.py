"""Index files merged into one: fewer files for every lookup to search.

Sealing a pack writes one small index file; lookups search every file, so once there
are many they are merged (under the gc lock, which gc's own index rewrite takes too:
a merge never resurrects entries gc has just removed). The merged file is written
durably before its inputs are deleted, so a crash leaves duplicates (harmless: every
lookup takes any copy), never a gap.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from repository.fsutil import fsync_dir, unlink_quiet
from repository.pack_index_file import SUFFIX, IndexFile, Location
from repository.pack_writer import write_index


def merge_index_files(
    root: Path,
    files: Sequence[IndexFile],
    *,
    keep: Callable[[bytes, Location], bool] | None = None,
    extra: Iterable[tuple[bytes, Location]] = (),
) -> str | None:
    """Write one index file holding the entries of ``files`` (those ``keep`` accepts)
    and ``extra``, then delete ``files``; the new file's name (None if nothing to do)."""
    if len(files) < 2 and keep is None and not extra:
        return None
    entries = [e for f in files for e in f if keep is None or keep(*e)]
    entries.extend(extra)
    name = None
    if entries:
        name = secrets.token_hex(16) + SUFFIX
        write_index(root, name, entries)
    for f in files:
        if f.name != name:
            unlink_quiet(f.path)
    fsync_dir(root / "index")
    return name
