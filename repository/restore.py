"""Restore one disk of a point to a raw file, a block device or a stream.

Streaming (at most ``workers + 1`` batches of BATCH_BYTES of the disk decoded in
memory), sparse-aware (zero chunks of a regular file are skipped with positional
writes and the size is set with ftruncate at the end), and every chunk is checked
against its id before it is written. A regular-file target is written under a
temporary name and renamed when complete, so a failed restore never leaves a
plausible-looking image.

Durability: a regular file or a block device is fsynced before the restore
reports success (``sync=True``, the default): the image is about to be attached
to a VM and must survive a crash of the restoring host. Writeback is started
every WRITEBACK_BYTES with sync_file_range so the final fsync only waits for the
tail. Streams (stdout, pipes, character devices, file-like objects) are never fsynced: the reader
owns durability. ``sync=False`` is for scratch copies (tests, benchmarks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.chunk import zero_bytes
from common.progress import Progress, no_progress
from repository.errors import RepositoryError
from repository.fixed_index import ID_LEN, ZERO_ID, DiskMap
from repository.fsutil import fsync_dir, os_error, tmp_path, unlink_quiet
from repository.interfaces import PointSource

# disk bytes whose chunks one reading thread reads and decodes at once: neighbours in a
# pack are read with one request (read_runs.py); memory is (workers + 1) batches
BATCH_BYTES = 16 << 20
WRITEBACK_BYTES = 8 << 20  # start writeback of each 8 MiB written (regular files)

Buf = bytes | memoryview
# put(offset, data or None for a zero chunk, length): writes one chunk of the disk
Put = Callable[[int, Buf | None, int], None]
# run(what, put): every chunk of the disk being restored to put, in order
Runner = Callable[[str, Put], "RestoreStats"]


@dataclass(frozen=True, slots=True)
class RestoreStats:
    bytes_written: int
    chunks_read: int
    zero_chunks: int
    seconds: float


class ByteSink(Protocol):
    """Where a streamed restore goes: a binary file, a pipe, or an upload body."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...


def restore_disk(
    repo: PointSource,
    point_id: str,
    disk_key: int,
    out: str | Path | ByteSink,
    *,
    workers: int = 2,
    sync: bool = True,
    progress: Progress = no_progress,
) -> RestoreStats:
    """``workers`` threads read, decrypt, decompress and hash ahead of the writing
    thread (zstd and BLAKE3 release the GIL); 0 does everything in the caller.
    ``progress``: bytes of the disk written (zeros included) of its capacity."""
    point = repo.get_point(point_id)
    dmap = repo.load_map(point, disk_key)
    src = f"point {point.id} disk {disk_key}"  # named by every error about a chunk

    def run(what: str, put: Put) -> RestoreStats:
        return _run(repo, dmap, what, workers, put, progress=progress)

    if not isinstance(out, str | Path):
        return _to_stream(run, out, f"{src} to a stream")
    if str(out) == "-":
        stats = _to_stream(run, sys.stdout.buffer, f"{src} to stdout")
        sys.stdout.buffer.flush()
        return stats
    path = Path(out)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        return _to_device(run, path, sync, src)
    if st is not None and not stat.S_ISREG(st.st_mode):  # fifo, tty, /dev/null: a stream
        try:
            with open(path, "wb") as fh:
                return _to_stream(run, fh, f"{src} to {path}")
        except OSError as exc:
            raise os_error(exc, f"restore target {path}") from exc
    return _to_file(run, dmap.capacity, path, sync, src)


def restore_disk_positional(
    repo: PointSource,
    point_id: str,
    disk_key: int,
    put: Put,
    what: str,
    *,
    workers: int = 2,
    start: int = 0,
) -> RestoreStats:
    """Hand every chunk of the disk from byte ``start`` on (rounded down to its chunk) to
    ``put(offset, data or None for zeros, length)`` in disk order, each checked against
    its id first: for a target written by offset (an NBD export) that skips zero chunks
    itself and can resume. ``data`` may be shorter than ``length`` (the disk grew after
    that chunk was stored: the rest reads as zeros) or longer (the last chunk of a disk
    whose size is not a multiple of the chunk size)."""
    point = repo.get_point(point_id)
    dmap = repo.load_map(point, disk_key)
    src = f"point {point.id} disk {disk_key} to {what}"
    return _run(repo, dmap, src, workers, put, start // dmap.chunk_size)


def _to_stream(run: Runner, fh: ByteSink, what: str) -> RestoreStats:
    def put(_off: int, data: Buf | None, n: int) -> None:
        if data is None:
            fh.write(zero_bytes(n))
        elif len(data) >= n:
            fh.write(data if len(data) == n else data[:n])
        else:  # the disk grew after this chunk was stored: the rest reads as zeros
            fh.write(data)
            fh.write(zero_bytes(n - len(data)))

    return run(what, put)


def _pwrite_all(fd: int, data: Buf, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _file_put(fd: int, *, zeros: bool, sync: bool) -> Put:
    """Positional writes; zero chunks are written only when ``zeros`` (devices)."""
    started = [0, 0]  # bytes written since the last writeback kick, start of that window

    def put(off: int, data: Buf | None, n: int) -> None:
        if data is None:
            if not zeros:
                return
            data = zero_bytes(n)
        _pwrite_all(fd, data[:n] if len(data) > n else data, off)
        if zeros and len(data) < n:  # grown disk: the tail of the chunk reads as zeros
            _pwrite_all(fd, zero_bytes(n - len(data)), off + len(data))
        if sync:
            if not started[0]:
                started[1] = off
            started[0] += n
            if started[0] >= WRITEBACK_BYTES:
                _start_writeback(fd, started[1], off + n - started[1])
                started[0] = 0

    return put


def _to_file(run: Runner, capacity: int, path: Path, sync: bool, src: str) -> RestoreStats:
    tmp = tmp_path(path.absolute())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise os_error(exc, f"restore target {path}") from exc
    try:
        try:
            put = _file_put(fd, zeros=False, sync=sync)
            stats = run(f"{src} to {path}", put)
            os.ftruncate(fd, capacity)  # trailing zero chunks become a hole
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync:
            fsync_dir(path.absolute().parent)
    except OSError as exc:
        unlink_quiet(tmp)
        raise os_error(exc, f"restore target {path}") from exc
    except BaseException:
        unlink_quiet(tmp)
        raise
    return stats


def _to_device(run: Runner, path: Path, sync: bool, src: str) -> RestoreStats:
    """A block device holds old data: overwrite every byte, zeros included."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            put = _file_put(fd, zeros=True, sync=sync)
            stats = run(f"{src} to {path}", put)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, f"restore target {path}") from exc
    return stats


def _run(
    repo: PointSource,
    dmap: DiskMap,
    what: str,
    workers: int,
    put: Put,
    first: int = 0,
    progress: Progress = no_progress,
) -> RestoreStats:
    t0 = time.perf_counter()
    cs, capacity = dmap.chunk_size, dmap.capacity
    chunks = zeros = 0
    progress(min(first * cs, capacity), capacity)
    for i, data in _decoded(repo, dmap, what, workers, first):
        if data is None:
            zeros += 1
        else:
            chunks += 1
        n = min(cs, capacity - i * cs)
        put(i * cs, data, n)
        progress(i * cs + n, capacity)
    return RestoreStats(capacity, chunks, zeros, time.perf_counter() - t0)


def _failed(exc: RepositoryError, index: int, cs: int, what: str) -> RepositoryError:
    return RepositoryError(
        f"restore of {what} failed at chunk #{index} (offset {index * cs}): {exc}"
    )


def _read(repo: PointSource, cid: bytes, index: int, cs: int, what: str) -> Buf:
    try:
        # no copy of raw payloads; the id check covers what the CRC would
        return repo.read_chunk_view(cid, check_crc=False)
    except RepositoryError as exc:
        raise _failed(exc, index, cs, what) from None


Batch = list[tuple[int, bytes]]  # (index, id) of consecutive chunks of the disk
Decoded = Buf | RepositoryError | None  # None: a zero chunk


def _read_batch(repo: PointSource, batch: Batch, cs: int, what: str) -> list[Decoded]:
    """Each chunk of ``batch`` decoded (or the error naming it), its distinct ids read
    with one call (neighbours in a pack: one request)."""
    ids = list(dict.fromkeys(cid for _, cid in batch if cid != ZERO_ID))
    got = dict(zip(ids, repo.read_chunk_views(ids, check_crc=False), strict=True))
    out: list[Decoded] = []
    for i, cid in batch:
        r = None if cid == ZERO_ID else got[cid]
        out.append(_failed(r, i, cs, what) if isinstance(r, RepositoryError) else r)
    return out


def _batches(dmap: DiskMap, first: int) -> Iterator[Batch]:
    """The disk's chunks from ``first`` in groups spanning BATCH_BYTES of the disk."""
    per = max(1, BATCH_BYTES // dmap.chunk_size)
    entries = memoryview(dmap.entries)
    for start in range(first, len(dmap), per):
        stop = min(len(dmap), start + per)
        yield [(i, bytes(entries[i * ID_LEN : (i + 1) * ID_LEN])) for i in range(start, stop)]


def _decoded(
    repo: PointSource, dmap: DiskMap, what: str, workers: int, first: int = 0
) -> Iterator[tuple[int, Buf | None]]:
    """(index, plaintext or None for zero), in order from chunk ``first``: ``workers``
    threads each decode a batch (BATCH_BYTES of the disk) ahead of the caller, at most
    ``workers + 1`` batches in memory; a chunk's error is raised at its turn."""
    cs = dmap.chunk_size
    if workers <= 0:
        entries = memoryview(dmap.entries)
        last_id: bytes = b""
        last: Buf = b""
        for i in range(first, len(dmap)):
            cid = bytes(entries[i * ID_LEN : (i + 1) * ID_LEN])
            if cid == ZERO_ID:
                yield i, None
                continue
            if cid != last_id:  # runs of one chunk are decoded once
                last_id, last = cid, _read(repo, cid, i, cs, what)
            yield i, last
        return
    pending: deque[tuple[Batch, Future[list[Decoded]]]] = deque()

    def drain() -> Iterator[tuple[int, Buf | None]]:
        batch, fut = pending.popleft()
        for (i, _), r in zip(batch, fut.result(), strict=True):
            if isinstance(r, RepositoryError):
                raise r
            yield i, r

    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as ex:
        try:
            for batch in _batches(dmap, first):
                pending.append((batch, ex.submit(_read_batch, repo, batch, cs, what)))
                if len(pending) > workers:
                    yield from drain()
            while pending:
                yield from drain()
        finally:
            for _, f in pending:
                f.cancel()


def _load_sync_file_range() -> Any:
    name = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(name, use_errno=True), "sync_file_range", None)
    except OSError:
        return None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, off: int, n: int) -> None:
    """Ask the kernel to start writing this range now (does not wait): the disk works
    while we decode, and the final fsync waits only for the tail. Linux only; a
    no-op elsewhere or on a file system that refuses (fsync still runs)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, off, n, _SYNC_FILE_RANGE_WRITE)
