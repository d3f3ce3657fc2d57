"""Restore one disk of a point to a raw file, a block device or a stream.

Streaming (one chunk in memory at a time), sparse-aware (zero chunks become holes
in a regular file), and every chunk is checked against its id before it is
written. A regular-file target is written under a temporary name and renamed
when complete, so a failed restore never leaves a plausible-looking image.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.chunk import zero_bytes
from repository_writer.errors import RepositoryError
from repository_writer.fixed_index import ID_LEN, ZERO_ID
from repository_writer.fsutil import _unlink_quiet, fsync_dir, os_error, tmp_path
from repository_writer.repository import Repository

READ_AHEAD = 8  # chunks decoded ahead of the writer: bounds memory to 8 x chunk size


@dataclass(frozen=True, slots=True)
class RestoreStats:
    bytes_written: int
    chunks_read: int
    zero_chunks: int
    seconds: float


def restore_disk(
    repo: Repository,
    point_id: str,
    disk_key: int,
    out: str | Path | BinaryIO,
    *,
    workers: int = 2,
) -> RestoreStats:
    """``workers`` threads read, decrypt, decompress and hash ahead of the writing
    thread (zstd and BLAKE3 release the GIL); 0 does everything in the caller."""
    point = repo.get_point(point_id)
    dmap = repo.load_map(point, disk_key)
    if not isinstance(out, str | Path):
        return _stream(repo, dmap, out, sparse=False, what="stream", workers=workers)
    if str(out) == "-":
        return _stream(repo, dmap, sys.stdout.buffer, sparse=False, what="stdout", workers=workers)
    path = Path(out)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        with open(path, "r+b", buffering=0) as fh:  # a device: overwrite, zeros included
            stats = _stream(repo, dmap, fh, sparse=False, what=str(path), workers=workers)
            os.fsync(fh.fileno())
        return stats
    tmp = tmp_path(path.absolute())
    try:
        with open(tmp, "wb") as fh:
            stats = _stream(repo, dmap, fh, sparse=True, what=str(path), workers=workers)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.absolute().parent)
    except OSError as exc:
        _unlink_quiet(tmp)
        raise os_error(exc, f"restore target {path}") from exc
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return stats


def _stream(  # type: ignore[no-untyped-def]
    repo: Repository, dmap, fh: BinaryIO, *, sparse: bool, what: str, workers: int
) -> RestoreStats:
    t0 = time.perf_counter()
    cs = dmap.chunk_size
    capacity = dmap.capacity
    written = chunks = zeros = 0
    for i, data in _decoded(repo, dmap, what, workers):
        want = min(cs, capacity - i * cs)
        if data is None:
            zeros += 1
            if sparse:
                fh.seek(want, os.SEEK_CUR)
            else:
                fh.write(zero_bytes(want))
            written += want
            continue
        chunks += 1
        if len(data) >= want:
            fh.write(data if len(data) == want else data[:want])
        else:  # the disk grew after this chunk was stored: the rest reads as zeros
            fh.write(data)
            fh.write(zero_bytes(want - len(data)))
        written += want
    if sparse:
        fh.truncate(capacity)
    fh.flush()
    return RestoreStats(written, chunks, zeros, time.perf_counter() - t0)


def _read(repo: Repository, cid: bytes, index: int, cs: int, what: str) -> bytes:
    try:
        return repo.read_chunk(cid, check_crc=False)  # the id check covers what a CRC would
    except RepositoryError as exc:
        raise RepositoryError(
            f"restore to {what} failed at chunk #{index} (offset {index * cs}): {exc}"
        ) from None


def _decoded(  # type: ignore[no-untyped-def]
    repo: Repository, dmap, what: str, workers: int
) -> Iterator[tuple[int, bytes | None]]:
    """(index, plaintext or None for zero), in order, decoded up to READ_AHEAD ahead."""
    cs = dmap.chunk_size
    entries = memoryview(dmap.entries)
    ids = (bytes(entries[i * ID_LEN : (i + 1) * ID_LEN]) for i in range(len(dmap)))
    if workers <= 0:
        last_id, last = b"", b""
        for i, cid in enumerate(ids):
            if cid == ZERO_ID:
                yield i, None
                continue
            if cid != last_id:  # runs of one chunk are decoded once
                last_id, last = cid, _read(repo, cid, i, cs, what)
            yield i, last
        return
    pending: deque[tuple[int, Future[bytes] | None]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as ex:
        try:
            for i, cid in enumerate(ids):
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
