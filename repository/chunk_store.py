"""Content-addressed chunk files in fan-out directories.

``chunks/<first 3 hex digits>/<64 hex digits>``: 4096 directories, all created at
``repo init`` (no mkdir + parent fsync on the write path), ~25k entries each per
100 M chunks. Existence is
a ``stat`` of the file: the index is the file system, nothing is held in RAM.
A chunk's mtime is its "last needed" time: writes set it, and every dedup hit,
commit and gc mark refreshes it (gc sweeps only chunks older than its cutoff).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from repository.errors import InvalidChunkIdError, MissingChunkError, RepositoryError
from repository.fsutil import (
    TMP_PREFIX,
    fsync_dir,
    fsync_dirs,
    makedirs_durable,
    os_error,
    tmp_path,
    unlink_quiet,
    write_files_durable,
)

ID_LEN = 32
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_HEX_DIR = re.compile(r"[0-9a-f]{3}")
FANOUT = 3
# A chunk renamed into place by another process (a writer sharing the shard, or one killed
# between rename and directory fsync) within this window gets its directory fsynced by
# whoever answers "present" for it. Past it, the kernel has long written the entry back.
RENAME_SETTLE_NS = 60 * 1_000_000_000
# atime of a chunk just renamed into place and not touched since (atime is otherwise unused).
UNSETTLED_ATIME_NS = 1


def check_id(chunk_id: bytes) -> bytes:
    if not isinstance(chunk_id, bytes | bytearray) or len(chunk_id) != ID_LEN:
        raise InvalidChunkIdError(f"chunk id must be {ID_LEN} bytes, got {chunk_id!r:.80}")
    return bytes(chunk_id)


def parse_hex_id(text: str) -> bytes:
    """A chunk id given as text: exactly 64 lowercase hex digits (no paths, no tricks)."""
    if not isinstance(text, str) or not _HEX_ID.fullmatch(text):
        raise InvalidChunkIdError(f"not a chunk id (64 lowercase hex digits): {text!r:.80}")
    return bytes.fromhex(text)


def _maybe_unsettled(st: os.stat_result) -> bool:
    """The chunk may sit in a directory entry nobody has fsynced yet.

    write_many stamps a new chunk's atime with UNSETTLED_ATIME_NS before renaming it into
    place; the first touch (which fsyncs the directory first) replaces it with "now". Only
    a recent change counts: past RENAME_SETTLE_NS the kernel has long written the entry
    back. (A read that updates atime first only skips a fsync nobody needed.)
    """
    return (
        st.st_atime_ns == UNSETTLED_ATIME_NS and time.time_ns() - st.st_ctime_ns < RENAME_SETTLE_NS
    )


def _mark_unsettled(path: Path) -> None:
    """Stamp UNSETTLED_ATIME_NS, keeping the mtime the file system gave the write."""
    os.utime(path, ns=(UNSETTLED_ATIME_NS, os.stat(path).st_mtime_ns))


@dataclass(frozen=True, slots=True)
class ChunkFile:
    id: bytes
    path: Path
    size: int
    mtime: float


class ChunkStore:
    def __init__(self, root: Path, size_range: tuple[int, int] | None = None) -> None:
        self.root = root
        # (smallest, largest) size of a well-formed chunk file: one outside it (empty,
        # cut short by a crash of a file system without ordered data, a header only)
        # counts as absent, so the next store replaces it. Only the size is checked,
        # from the stat touch makes anyway: reading every existing chunk back on a
        # dedup hit would cost a read per known chunk of every backup.
        self.size_range = size_range
        # Ids renamed into place whose directory entry is not yet fsynced (see touch).
        self._undurable: set[bytes] = set()
        self._undurable_lock = threading.Lock()

    def path_of(self, chunk_id: bytes) -> Path:
        h = check_id(chunk_id).hex()
        return self.root / h[:FANOUT] / h

    def create_dirs(self) -> None:
        """All fan-out directories, then one fsync of the root (at init)."""
        for i in range(16**FANOUT):
            os.makedirs(self.root / f"{i:0{FANOUT}x}", exist_ok=True)
        fsync_dir(self.root)

    def exists(self, chunk_id: bytes) -> bool:
        try:
            os.stat(self.path_of(chunk_id))
        except FileNotFoundError:
            return False
        return True

    def touch(self, chunk_id: bytes, *, settle: bool = True) -> bool:
        """Refresh the chunk's mtime (protects it from a concurrent gc); False if absent.

        A file whose size no chunk can have counts as absent (see ``size_range``).
        A chunk another thread has renamed into place but whose directory is not fsynced
        yet counts as absent: answering "have it" then could let a point name a chunk
        that a power loss takes back. The caller stores it again (same bytes, atomic
        rename) and so makes it durable itself. ``settle=False`` skips making a recent
        rename by another process durable: for chunks some writer already acknowledged as
        durable (those a commit names), where only existence and the mtime matter.
        """
        with self._undurable_lock:
            if chunk_id in self._undurable:
                return False
        path = self.path_of(chunk_id)
        try:
            st = os.stat(path)
            if self.size_range and not self.size_range[0] <= st.st_size <= self.size_range[1]:
                return False  # clearly not a chunk: "absent", a store writes over it
            if _maybe_unsettled(st):
                if not settle:
                    return True  # renamed moments ago (a fresh mtime); keep the mark
                # Writers share shards (and the volume), so the rename may be another
                # process's whose directory fsync is still to come: make it durable here.
                fsync_dir(path.parent)
            os.utime(path)  # the file system's clock: gc compares against it
        except FileNotFoundError:
            return False
        return True

    def touch_many(self, ids: Sequence[bytes], *, settle: bool = True) -> list[bool]:
        return [self.touch(i, settle=settle) for i in ids]

    def read(self, chunk_id: bytes) -> bytes:
        path = self.path_of(chunk_id)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise MissingChunkError(f"chunk {chunk_id.hex()} is missing ({path})") from None
        except OSError as exc:
            raise RepositoryError(f"cannot read chunk {chunk_id.hex()}: {exc.strerror}") from None

    def write_many(self, items: Sequence[tuple[bytes, Sequence[bytes | bytearray]]]) -> list[bool]:
        """Store each (id, blob parts) not yet present; durable when this returns.

        Returns True per item that was written, False for one already present (its
        mtime is refreshed instead). All temps are written, fsynced together, then
        renamed, then each touched directory is fsynced once (concurrently: the file
        system can group the commits). Only then is anything acknowledged.
        """
        written = [False] * len(items)
        pending: list[tuple[int, Path, Path]] = []
        todo: list[tuple[Path, Sequence[bytes | bytearray], str]] = []
        seen: set[Path] = set()
        try:
            for i, (chunk_id, parts) in enumerate(items):
                final = self.path_of(chunk_id)
                if final in seen or self.touch(chunk_id):
                    continue
                seen.add(final)
                if not final.parent.is_dir():
                    makedirs_durable(final.parent)
                tmp = tmp_path(final)
                pending.append((i, tmp, final))
                todo.append((tmp, parts, f"chunk {chunk_id.hex()}"))
            write_files_durable(todo)
            dirs: set[Path] = set()
            for i, tmp, final in pending:
                try:
                    _mark_unsettled(tmp)
                    os.rename(tmp, final)
                except OSError as exc:
                    raise os_error(exc, f"chunk {final.name}") from exc
                written[i] = True
                dirs.add(final.parent)
                with self._undurable_lock:
                    self._undurable.add(items[i][0])
            fsync_dirs(dirs)
            with self._undurable_lock:
                self._undurable.difference_update(items[i][0] for i, _, _ in pending)
        except BaseException:
            for _, tmp, _ in pending:
                unlink_quiet(tmp)
            raise
        return written

    def remove(self, chunk_id: bytes) -> None:
        unlink_quiet(self.path_of(chunk_id))

    def iter_dirs(self) -> Iterator[Path]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return
        for name in names:
            if _HEX_DIR.fullmatch(name):
                yield self.root / name

    def iter_chunks(self, *, with_stat: bool = True) -> Iterator[ChunkFile]:
        """Every chunk file (temps and stray names are skipped), one directory at a time."""
        for d in self.iter_dirs():
            yield from self.iter_chunks_in(d, with_stat=with_stat)

    def iter_chunks_in(self, d: Path, *, with_stat: bool = True) -> Iterator[ChunkFile]:
        """The chunk files of one fan-out directory (in no particular order)."""
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return
        for e in entries:
            if len(e.name) != 64 or not _HEX_ID.fullmatch(e.name):
                continue
            if with_stat:
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                yield ChunkFile(bytes.fromhex(e.name), Path(e.path), st.st_size, st.st_mtime)
            else:
                yield ChunkFile(bytes.fromhex(e.name), Path(e.path), 0, 0.0)

    def iter_temps(self) -> Iterator[tuple[Path, float]]:
        for d in self.iter_dirs():
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith(TMP_PREFIX):
                    try:
                        yield Path(e.path), e.stat().st_mtime
                    except FileNotFoundError:
                        continue
