"""One sorted index file, ``index/<32 hex>.idx``: chunk id -> (pack, offset, length).

Existence checks never read packs: they search these files, memory-mapped, so a
process holds in RAM only the pages its searches touch (git's pack .idx, in the manner
of restic's and kopia's index blobs). A file covers any number of packs; sealing a pack
writes one for it and compaction merges several into one. Layout, little endian
(docs/repository-format.md, "Index files"):

    0   8  magic b"VMBIDX01"
    8   4  pack count P
   12   4  entry count N
   16   8  reserved, 0
   24  16P pack ids
    .  1024 fan-out: 256 x u32, entries whose id's first byte is <= i
    .  44N  entries sorted by id: id 32, pack number u32 (into the pack ids), blob offset
            u32, blob length u32
    .  32  BLAKE3-256 of every byte before it
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from blake3 import blake3

from repository.errors import CorruptObjectError
from repository.pack_format import PACK_ID_LEN

MAGIC = b"VMBIDX01"
HEAD = struct.Struct("<8sII8x")
HEAD_LEN = HEAD.size  # 24
FANOUT = struct.Struct("<256I")
ENTRY = struct.Struct("<32sIII")
ENTRY_LEN = ENTRY.size  # 44
SUM_LEN = 32
SUFFIX = ".idx"


class Location(NamedTuple):
    pack: bytes  # pack id (16 bytes)
    offset: int
    length: int


def encode(entries: Iterable[tuple[bytes, Location]]) -> list[bytes]:
    """The file's bytes (parts to write) for ``(chunk id, location)`` pairs, any order;
    duplicates of one (id, location) are written once."""
    ordered = sorted(set(entries))
    packs = sorted({loc.pack for _, loc in ordered})
    number = {p: i for i, p in enumerate(packs)}
    fan = [0] * 256
    for cid, _ in ordered:
        fan[cid[0]] += 1
    total = 0
    for i in range(256):
        total += fan[i]
        fan[i] = total
    body = bytearray(HEAD.pack(MAGIC, len(packs), len(ordered)))
    body += b"".join(packs)
    body += FANOUT.pack(*fan)
    for cid, loc in ordered:
        body += ENTRY.pack(cid, number[loc.pack], loc.offset, loc.length)
    return [bytes(body), blake3(body).digest()]


class _Ids:
    """The sorted ids of a mapped file as a sequence, for bisect (no copy of the file)."""

    __slots__ = ("base", "mm")

    def __init__(self, mm: mmap.mmap, base: int) -> None:
        self.mm = mm
        self.base = base

    def __getitem__(self, i: int) -> bytes:
        p = self.base + i * ENTRY_LEN
        return self.mm[p : p + 32]


class IndexFile:
    """A checked, memory-mapped index file; :meth:`lookup` costs about log2(N/256)
    page-cache reads and never the whole file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEAD_LEN + FANOUT.size + SUM_LEN:
                raise CorruptObjectError(f"index file {path}", f"truncated: {size} bytes")
            self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        what = f"index file {path}"
        mm = self._mm
        magic, n_packs, n = HEAD.unpack_from(mm, 0)
        if magic != MAGIC:
            self.close()
            raise CorruptObjectError(what, f"bad magic {bytes(magic)!r}")
        self._packs_at = HEAD_LEN
        self._fan_at = HEAD_LEN + n_packs * PACK_ID_LEN
        self._entries_at = self._fan_at + FANOUT.size
        if size != self._entries_at + n * ENTRY_LEN + SUM_LEN:
            self.close()
            raise CorruptObjectError(what, f"{size} bytes do not fit {n_packs} packs, {n} entries")
        if blake3(memoryview(mm)[: size - SUM_LEN]).digest() != mm[size - SUM_LEN :]:
            self.close()
            raise CorruptObjectError(what, "checksum mismatch")
        self.count = n
        self.packs = [
            bytes(mm[self._packs_at + i * PACK_ID_LEN : self._packs_at + (i + 1) * PACK_ID_LEN])
            for i in range(n_packs)
        ]
        self._fan = FANOUT.unpack_from(mm, self._fan_at)
        self._ids = _Ids(mm, self._entries_at)

    def close(self) -> None:
        self._mm.close()

    def _range(self, chunk_id: bytes) -> tuple[int, int]:
        b = chunk_id[0]
        return (self._fan[b - 1] if b else 0), self._fan[b]

    def lookup(self, chunk_id: bytes) -> list[Location]:
        """Every location of ``chunk_id`` in this file (usually none or one)."""
        lo, hi = self._range(chunk_id)
        i = bisect.bisect_left(self._ids, chunk_id, lo, hi)
        out: list[Location] = []
        while i < hi and self._ids[i] == chunk_id:
            out.append(self._entry(i)[1])
            i += 1
        return out

    def _entry(self, i: int) -> tuple[bytes, Location]:
        cid, pack_no, offset, length = ENTRY.unpack_from(self._mm, self._entries_at + i * ENTRY_LEN)
        return bytes(cid), Location(self.packs[pack_no], offset, length)

    def __iter__(self) -> Iterator[tuple[bytes, Location]]:
        for i in range(self.count):
            yield self._entry(i)
