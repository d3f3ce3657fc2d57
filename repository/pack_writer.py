"""Open packs: chunks appended with one fdatasync per batch, sealed at a size target.

An open pack is ``packs/open/<32 hex>.pack`` beside its log ``<32 hex>.log``; the writing
process holds an exclusive flock() on the log for the pack's life, which is how anyone
else tells an abandoned pack (its writer was killed) from a live one. A batch is written
as records at the pack's end (one pwritev), fdatasync'ed, and only then are its entries
appended to the log (unsynced: the log is a hint for other processes; after a crash the
pack's own records are the truth). Sealing appends the trailer, fdatasyncs, renames the
file to ``packs/<2 hex>/<32 hex>``, writes its index file, then drops the log. A crash at
any step leaves either an open pack that :func:`recover` seals, or a sealed pack that
recover indexes. Sealed packs are written once and never changed: the shape an object
store needs (there the pack would be uploaded whole at seal time).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from repository import pack_format, pack_index_file
from repository.errors import RepositoryError
from repository.fsutil import (
    drop_cached,
    fsync_dir,
    fsync_dirs,
    makedirs_durable,
    os_error,
    tmp_path,
    unlink_quiet,
    write_atomic,
)
from repository.pack_format import Entry
from repository.pack_index import LOG_SUFFIX, PACK_SUFFIX, log_record
from repository.pack_index_file import Location

Blob = tuple[bytes, Sequence[bytes | bytearray]]  # (chunk id, blob parts)


def sealed_path(root: Path, pack: bytes) -> Path:
    h = pack.hex()
    return root / "packs" / h[:2] / h


def index_name(pack: bytes) -> str:
    return pack.hex() + pack_index_file.SUFFIX


def write_index(root: Path, name: str, entries: Sequence[tuple[bytes, Location]]) -> None:
    write_atomic(root / "index" / name, pack_index_file.encode(entries), f"index file {name}")


class OpenPack:
    # Durable batches leave the page cache: a backup stream read back rarely must not
    # grow the cache (evicting what the host needs), and the kernel then writes the next
    # batch into recycled pages (bench/RESULTS.md, "Writers' kernel time").
    drop_written = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.id = secrets.token_bytes(pack_format.PACK_ID_LEN)
        open_dir = root / "packs" / "open"
        makedirs_durable(open_dir)
        self.path = open_dir / (self.id.hex() + PACK_SUFFIX)
        self.log_path = open_dir / (self.id.hex() + LOG_SUFFIX)
        self.entries: list[Entry] = []
        what = f"pack {self.path}"
        # the log is locked before it gets its name: nobody may take it for abandoned
        tmp = tmp_path(self.log_path)
        try:
            self._log = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._log, fcntl.LOCK_EX)
            os.rename(tmp, self.log_path)
        except OSError as exc:
            unlink_quiet(tmp)
            raise os_error(exc, what) from exc
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            self._drop_log()
            raise os_error(exc, what) from exc
        try:
            os.write(self._fd, pack_format.header(self.id))
            os.fdatasync(self._fd)
            fsync_dir(open_dir)  # the file itself survives a crash before the first batch ack
        except OSError as exc:
            self.abandon()
            raise os_error(exc, what) from exc
        self.size = pack_format.HEADER_LEN
        self.last_write = time.monotonic()  # idle sealing (PackStore.seal_idle)
        self.opened = self.last_write  # age sealing (idem)

    def append(self, blobs: Sequence[Blob]) -> list[Location]:
        """Write the blobs, fdatasync, then log them; their locations. On an error the
        pack is cut back to where it was (nothing of the batch counts)."""
        parts: list[bytes | bytearray | memoryview] = []
        entries: list[Entry] = []
        pos = self.size
        for cid, blob_parts in blobs:
            length = sum(len(p) for p in blob_parts)
            parts.append(pack_format.record_header(cid, length))
            parts.extend(blob_parts)
            entries.append(Entry(cid, pos + pack_format.RECORD_LEN, length))
            pos += pack_format.RECORD_LEN + length
        if pos > pack_format.MAX_PACK:
            raise RepositoryError(f"pack {self.path}: would pass {pack_format.MAX_PACK} bytes")
        try:
            _pwritev_all(self._fd, parts, self.size)
            os.fdatasync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise os_error(exc, f"pack {self.path}") from exc
        if self.drop_written:
            drop_cached(self._fd, self.size, pos - self.size)
        self.size = pos
        self.entries.extend(entries)
        self.last_write = time.monotonic()
        # a hint for other processes; lost or torn, the pack's records still say it
        with contextlib.suppress(OSError):
            os.write(self._log, b"".join(log_record(e.id, e.offset, e.length) for e in entries))
        return [Location(self.id, e.offset, e.length) for e in entries]

    def seal(self) -> None:
        """Trailer, fdatasync, rename into place, index file, drop the log."""
        try:
            if not self.entries:
                self.abandon()
                return
            tail = pack_format.trailer(self.entries, self.size)
            _pwritev_all(self._fd, [tail], self.size)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise os_error(exc, f"pack {self.path}") from exc
        os.close(self._fd)
        publish(self.root, self.id, self.path, self.entries)
        self._drop_log()

    def abandon(self) -> None:
        """Remove an empty pack (nothing acknowledged lives in it)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._drop_log()

    def _drop_log(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        with contextlib.suppress(OSError):
            os.close(self._log)


def publish(root: Path, pack: bytes, open_path: Path, entries: Sequence[Entry]) -> None:
    """Rename a sealed pack into place (both directories fsynced) and write its index."""
    final = sealed_path(root, pack)
    makedirs_durable(final.parent)
    try:
        os.rename(open_path, final)
    except OSError as exc:
        raise os_error(exc, f"pack {final}") from exc
    fsync_dirs({open_path.parent, final.parent})
    write_index(
        root, index_name(pack), [(e.id, Location(pack, e.offset, e.length)) for e in entries]
    )


def _pwritev_all(fd: int, parts: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.pwritev(fd, views[:1024], offset)  # IOV_MAX
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def recover(root: Path, size_range: tuple[int, int]) -> int:
    """Seal the open packs whose writer is gone, and index sealed packs whose index file
    a crash kept from being written; how many packs were recovered."""
    done = 0
    for pack, path in abandoned(root / "packs" / "open"):
        if _recover_one(root, pack, path, size_range):
            done += 1
    return done


def abandoned(open_dir: Path) -> Iterator[tuple[bytes, Path]]:
    """(pack id, open pack path) of each open pack in ``open_dir`` whose writer is gone,
    found by its log's lock, which is held while the caller recovers the pack. The log
    is removed when the caller asks for the next one: a caller that raises leaves it,
    so the next recovery tries again."""
    try:
        names = sorted(os.listdir(open_dir))
    except FileNotFoundError:
        return
    for stem in [n[: -len(LOG_SUFFIX)] for n in names if n.endswith(LOG_SUFFIX)]:
        try:
            pack = bytes.fromhex(stem)
        except ValueError:
            continue
        if len(pack) != pack_format.PACK_ID_LEN:
            continue
        log_path = open_dir / (stem + LOG_SUFFIX)
        try:
            fd = os.open(log_path, os.O_WRONLY)
        except FileNotFoundError:
            continue  # recovered by another process meanwhile
        except OSError as exc:
            raise os_error(exc, f"pack log {log_path}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            yield pack, open_dir / (stem + PACK_SUFFIX)
            unlink_quiet(log_path)
        finally:
            os.close(fd)


def _recover_one(root: Path, pack: bytes, path: Path, size_range: tuple[int, int]) -> bool:
    final = sealed_path(root, pack)
    if path.exists():
        data = path.read_bytes()
        name = f"open pack {path}"
        try:
            if pack_format.parse_header(data, name) != pack:
                raise RepositoryError(f"{name}: its header names another pack")
        except RepositoryError:
            path.unlink()  # a header that never became durable: no batch was acked
            return False
        entries = list(pack_format.scan_records(data, size_range))
        if not entries:
            path.unlink()
            fsync_dir(path.parent)
            return False
        end = entries[-1].offset + entries[-1].length
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.seek(end)
            fh.write(pack_format.trailer(entries, end))
            fh.flush()
            os.fdatasync(fh.fileno())
        publish(root, pack, path, entries)
        return True
    if final.exists():  # sealed and renamed; the index file may be missing
        entries = pack_format.parse_trailer(final.read_bytes(), f"pack {final}")
        write_index(
            root, index_name(pack), [(e.id, Location(pack, e.offset, e.length)) for e in entries]
        )
        return True
    return False
