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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.chunk import zero_bytes
from repository_writer.errors import RepositoryError
from repository_writer.fixed_index import ID_LEN, ZERO_ID
from repository_writer.fsutil import _unlink_quiet, fsync_dir, os_error, tmp_path
from repository_writer.repository import Repository


@dataclass(frozen=True, slots=True)
class RestoreStats:
    bytes_written: int
    chunks_read: int
    zero_chunks: int
    seconds: float


def restore_disk(
    repo: Repository, point_id: str, disk_key: int, out: str | Path | BinaryIO
) -> RestoreStats:
    point = repo.get_point(point_id)
    dmap = repo.load_map(point, disk_key)
    if not isinstance(out, str | Path):
        return _stream(repo, dmap, out, sparse=False, what="stream")
    if str(out) == "-":
        return _stream(repo, dmap, sys.stdout.buffer, sparse=False, what="stdout")
    path = Path(out)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        with open(path, "r+b", buffering=0) as fh:  # a device: overwrite, zeros included
            stats = _stream(repo, dmap, fh, sparse=False, what=str(path))
            os.fsync(fh.fileno())
        return stats
    tmp = tmp_path(path.absolute())
    try:
        with open(tmp, "wb") as fh:
            stats = _stream(repo, dmap, fh, sparse=True, what=str(path))
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


def _stream(repo: Repository, dmap, fh: BinaryIO, *, sparse: bool, what: str) -> RestoreStats:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    cs = dmap.chunk_size
    capacity = dmap.capacity
    entries = memoryview(dmap.entries)
    written = chunks = zeros = 0
    last_id, last_data = b"", b""
    for i in range(len(dmap)):
        want = min(cs, capacity - i * cs)
        cid = bytes(entries[i * ID_LEN : (i + 1) * ID_LEN])
        if cid == ZERO_ID:
            zeros += 1
            if sparse:
                fh.seek(want, os.SEEK_CUR)
            else:
                fh.write(zero_bytes(want))
            written += want
            continue
        if cid != last_id:  # runs of one chunk are decoded once
            try:
                last_data = repo.read_chunk(cid, check_crc=False)
            except RepositoryError as exc:
                raise RepositoryError(
                    f"restore to {what} failed at chunk #{i} (offset {i * cs}): {exc}"
                ) from None
            last_id = cid
            chunks += 1
        data = last_data
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
