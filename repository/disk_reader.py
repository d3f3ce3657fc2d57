"""Random access to one disk of a point: what an NBD export serves (export/).

restore.py streams a disk in order; this reads any range of it on demand. Zero chunks
read as zeros without touching the store; every other chunk is read through the
:class:`PointSource` (so how chunks are stored on disk is not this module's business),
decrypted, decompressed and checked against its id, and kept decoded in a bounded LRU
cache: an NBD client reads a chunk in several requests (nbdcopy: 256 KiB each), and a
filesystem reads its metadata again and again.

Thread-safe: nbdkit calls ``pread`` from several threads. A chunk that several requests
want at once is decoded once (the others wait for it), because parallel sequential
readers always ask for the same chunk together. A chunk that fails its check raises
:class:`ChunkReadError` and is never cached, so a later read tries again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from common.chunk import zero_bytes
from repository.errors import InvalidRequestError, RepositoryError
from repository.fixed_index import ZERO_ID, DiskMap
from repository.interfaces import PointSource

Buf = bytes | memoryview


class ChunkReadError(RepositoryError):
    """A chunk of the disk could not be read or failed its check (the text names it)."""


@dataclass(slots=True)
class ReaderStats:
    reads: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    read_errors: int = 0


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int
    length: int
    zero: bool  # True: an all-zero chunk (never stored), reads as zeros


class _Pending:
    """A chunk being decoded by one thread while others wait for it."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: Buf = b""
        self.error: ChunkReadError | None = None


class DiskReader:
    """Reads of one disk of a point. ``cache_bytes`` bounds the decoded chunks kept (at
    least one chunk); ``on_chunk(hit)`` is told of each chunk lookup (metrics)."""

    def __init__(
        self,
        repo: PointSource,
        point_id: str,
        disk_key: int,
        *,
        cache_bytes: int = 128 << 20,
        on_chunk: Callable[[bool], None] | None = None,
    ) -> None:
        point = repo.get_point(point_id)
        self._repo = repo
        self._map: DiskMap = repo.load_map(point, disk_key)
        self.what = f"point {point.id} disk {disk_key}"
        self.chunk_size = self._map.chunk_size
        self.size = self._map.capacity
        self._slots = max(1, cache_bytes // self.chunk_size)
        self._cache: OrderedDict[bytes, Buf] = OrderedDict()
        self._pending: dict[bytes, _Pending] = {}
        self._lock = threading.Lock()
        self._on_chunk = on_chunk
        self.stats = ReaderStats()

    def pread(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` with the disk's bytes from ``offset``; raises ChunkReadError for a
        chunk that cannot be read, InvalidRequestError for a range outside the disk."""
        out = memoryview(buf).cast("B")
        n = len(out)
        if offset < 0 or offset + n > self.size:
            raise InvalidRequestError(
                f"{self.what}: read of {n} bytes at {offset} is outside the disk (0..{self.size})"
            )
        cs, pos = self.chunk_size, 0
        while pos < n:
            off = offset + pos
            index, within = divmod(off, cs)
            take = min(cs - within, n - pos)
            data = self._chunk(index)
            dst = out[pos : pos + take]
            have = max(0, min(len(data) - within, take)) if data is not None else 0
            if data is not None and have:
                dst[:have] = memoryview(data)[within : within + have]
            if have < take:  # a zero chunk, or past a grown disk's old last chunk
                dst[have:] = zero_bytes(take - have)
            pos += take
        with self._lock:
            self.stats.reads += 1
            self.stats.bytes_read += n

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Runs of data and zero chunks covering ``offset .. offset+length`` (clipped to
        the disk), adjacent chunks of one kind merged."""
        end = min(self.size, offset + length)
        out: list[Extent] = []
        cs = self.chunk_size
        pos = max(0, offset)
        while pos < end:
            index = pos // cs
            stop = min(end, (index + 1) * cs)
            zero = self._map.get(index) == ZERO_ID
            if out and out[-1].zero == zero:
                last = out[-1]
                out[-1] = Extent(last.offset, stop - last.offset, zero)
            else:
                out.append(Extent(pos, stop - pos, zero))
            pos = stop
        return out

    # --- chunks ----------------------------------------------------------------------

    def _chunk(self, index: int) -> Buf | None:
        """The plaintext of chunk ``index``, None for a zero chunk."""
        cid = self._map.get(index)
        if cid == ZERO_ID:
            return None
        with self._lock:
            data = self._cache.get(cid)
            if data is not None:
                self._cache.move_to_end(cid)
                self.stats.cache_hits += 1
            else:
                pending = self._pending.get(cid)
                owner = pending is None
                if owner:
                    pending = self._pending[cid] = _Pending()
                    self.stats.cache_misses += 1
                else:  # another thread decodes it now: a hit once it is there
                    self.stats.cache_hits += 1
        if self._on_chunk is not None:
            self._on_chunk(data is not None or not owner)
        if data is not None:
            return data
        assert pending is not None
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.data
        try:
            # no copy of raw payloads; the id check covers what the CRC would
            data = self._repo.read_chunk_view(cid, check_crc=False)
        except RepositoryError as exc:
            pending.error = ChunkReadError(
                f"{self.what}: chunk #{index} (offset {index * self.chunk_size}): {exc}"
            )
            with self._lock:
                self.stats.read_errors += 1
                del self._pending[cid]
            pending.done.set()
            raise pending.error from None
        except BaseException:
            pending.error = ChunkReadError(f"{self.what}: chunk #{index}: read interrupted")
            with self._lock:
                del self._pending[cid]
            pending.done.set()
            raise
        with self._lock:
            self._cache[cid] = data
            while len(self._cache) > self._slots:
                self._cache.popitem(last=False)
            del self._pending[cid]
        pending.data = data
        pending.done.set()
        return data
