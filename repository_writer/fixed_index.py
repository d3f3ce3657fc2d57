"""Disk maps: one 32-byte chunk id (or the all-zero marker) per chunk of a disk.

 0  4  magic b"VMBI"
 4  1  format version (1)
 5  3  reserved, 0
 8  4  chunk size (bytes)
12  4  reserved, 0
16  8  capacity (bytes)
24  8  chunk count = ceil(capacity / chunk size)
32 32  BLAKE3-256 of bytes 0..31 and of all entries
64  .. entries, 32 bytes each; 32 zero bytes = an all-zero chunk (never stored)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import blake3

from repository_writer.errors import CorruptObjectError, InvalidRequestError

MAGIC = b"VMBI"
VERSION = 1
ID_LEN = 32
ZERO_ID = bytes(ID_LEN)
HEADER = struct.Struct("<4sB3sIIQQ")  # 32 bytes, then the checksum
HEADER_LEN = HEADER.size + 32


def chunk_count(capacity: int, chunk_size: int) -> int:
    return -(-capacity // chunk_size)


class DiskMap:
    """A disk's full chunk map, held as one bytearray (32 bytes per chunk)."""

    __slots__ = ("capacity", "chunk_size", "entries")

    def __init__(self, chunk_size: int, capacity: int, entries: bytearray | None = None) -> None:
        if chunk_size <= 0 or capacity < 0:
            raise InvalidRequestError(
                f"bad map geometry: chunk size {chunk_size}, capacity {capacity}"
            )
        self.chunk_size = chunk_size
        self.capacity = capacity
        n = chunk_count(capacity, chunk_size)
        if entries is None:
            entries = bytearray(n * ID_LEN)
        elif len(entries) != n * ID_LEN:
            raise InvalidRequestError("map entries do not match the capacity")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries) // ID_LEN

    def get(self, index: int) -> bytes:
        """The id at ``index``; ZERO_ID for a zero chunk."""
        return bytes(self.entries[index * ID_LEN : (index + 1) * ID_LEN])

    def set(self, index: int, chunk_id: bytes) -> None:
        if not 0 <= index < len(self):
            raise InvalidRequestError(f"chunk index {index} outside 0..{len(self) - 1}")
        if len(chunk_id) == 0:
            chunk_id = ZERO_ID
        elif len(chunk_id) != ID_LEN:
            raise InvalidRequestError(f"chunk id at index {index} is {len(chunk_id)} bytes, not 32")
        self.entries[index * ID_LEN : (index + 1) * ID_LEN] = chunk_id

    def resized(self, capacity: int) -> DiskMap:
        """A copy for a disk of ``capacity``: a grown disk keeps its chunks and extends."""
        n = chunk_count(capacity, self.chunk_size)
        entries = bytearray(self.entries[: n * ID_LEN])
        entries.extend(bytes(n * ID_LEN - len(entries)))
        return DiskMap(self.chunk_size, capacity, entries)

    def iter_ids(self) -> Iterator[tuple[int, bytes]]:
        """(index, id) of every non-zero chunk."""
        view = memoryview(self.entries)
        for i in range(len(self)):
            cid = bytes(view[i * ID_LEN : (i + 1) * ID_LEN])
            if cid != ZERO_ID:
                yield i, cid

    def zero_count(self) -> int:
        view = memoryview(self.entries)
        return sum(1 for i in range(len(self)) if view[i * ID_LEN : (i + 1) * ID_LEN] == ZERO_ID)

    def _header(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, bytes(3), self.chunk_size, 0, self.capacity, len(self))

    def encode(self) -> tuple[bytes, bytes]:
        head = self._header()
        h = blake3.blake3(head, max_threads=1)
        h.update(self.entries)
        return head + h.digest(), bytes(self.entries)

    @classmethod
    def decode(cls, data: bytes, name: str) -> DiskMap:
        if len(data) < HEADER_LEN:
            raise CorruptObjectError(name, f"truncated map: {len(data)} bytes")
        magic, version, reserved, chunk_size, reserved2, capacity, count = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptObjectError(name, f"bad magic {magic!r}")
        if version != VERSION:
            raise CorruptObjectError(name, f"unsupported map version {version}")
        if reserved != bytes(3) or reserved2 or chunk_size <= 0:
            raise CorruptObjectError(name, "bad header fields")
        if count != chunk_count(capacity, chunk_size):
            raise CorruptObjectError(name, "chunk count does not match capacity")
        if len(data) != HEADER_LEN + count * ID_LEN:
            raise CorruptObjectError(
                name, f"{len(data)} bytes, expected {HEADER_LEN + count * ID_LEN} (truncated?)"
            )
        h = blake3.blake3(data[: HEADER.size], max_threads=1)
        h.update(memoryview(data)[HEADER_LEN:])
        if h.digest() != data[HEADER.size : HEADER_LEN]:
            raise CorruptObjectError(name, "checksum mismatch")
        return cls(chunk_size, capacity, bytearray(memoryview(data)[HEADER_LEN:]))
