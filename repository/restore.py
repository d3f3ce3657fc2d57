"""Restore one disk of a point to a raw file, a block device or a stream.

Streaming (at most READ_AHEAD decoded chunks in memory), sparse-aware (zero chunks
of a regular file are skipped with positional writes and the size is set with
ftruncate at the end), and every chunk is checked against its id before it is
written. A regular-file target is written under a temporary name and renamed
when complete, so a failed restore never leaves a plausible-looking image.

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

READ_AHEAD = 8  # chunks decoded ahead of the writer: bounds memory to 8 x chunk size
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


def _read(repo: PointSource, cid: bytes, index: int, cs: int, what: str) -> Buf:
    try:
        # no copy of raw payloads; the id check covers what the CRC would
        return repo.read_chunk_view(cid, check_crc=False)
    except RepositoryError as exc:
        raise RepositoryError(
            f"restore of {what} failed at chunk #{index} (offset {index * cs}): {exc}"
        ) from None


def _decoded(
    repo: PointSource, dmap: DiskMap, what: str, workers: int, first: int = 0
) -> Iterator[tuple[int, Buf | None]]:
    """(index, plaintext or None for zero), in order from chunk ``first``, decoded up to
    READ_AHEAD ahead."""
    cs = dmap.chunk_size
    entries = memoryview(dmap.entries)
    ids = (bytes(entries[i * ID_LEN : (i + 1) * ID_LEN]) for i in range(first, len(dmap)))
    if workers <= 0:
        last_id: bytes = b""
        last: Buf = b""
        for i, cid in enumerate(ids, first):
            if cid == ZERO_ID:
                yield i, None
                continue
            if cid != last_id:  # runs of one chunk are decoded once
                last_id, last = cid, _read(repo, cid, i, cs, what)
            yield i, last
        return
    pending: deque[tuple[int, Future[Buf] | None]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as ex:
        try:
            for i, cid in enumerate(ids, first):
                fut = None if cid == ZERO_ID else ex.submit(_read, repo, cid, i, cs, what)
                pending.append((i, fut))
                if len(pending) >= READ_AHEAD:
                    j, f = pending.popleft()
                    yield j, None if f is None else f.result()
            while pending:
                j, f = pending.popleft()
                yield j, None if f is None else f.result()
        finally:
            for _, f in pending:
                if f is not None:
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
