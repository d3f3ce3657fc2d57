"""Disk maps: one 32-byte chunk id (or the all-zero marker) per chunk of a disk.

 0  4  magic b"VMBI"
 4  1  format version (2; 1 is read only by `repo upgrade`)
 5  3  reserved, 0
 8  4  chunk size (bytes)
12  4  reserved, 0
16  8  capacity (bytes)
24  8  chunk count = ceil(capacity / chunk size)
32 32  version 2: the map's tag (meta_auth.MetaAuth.map_tag: keyed BLAKE3 in an
       encrypted repository, bound to repository, VM, point and disk);
       version 1: BLAKE3-256 of bytes 0..31 and of all entries
64  .. entries, 32 bytes each; 32 zero bytes = an all-zero chunk (never stored)
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterator

import blake3

from repository.errors import CorruptObjectError, InvalidRequestError

MAGIC = b"VMBI"
VERSION = 2
V1 = 1  # before tags: an unkeyed checksum; read only to upgrade it
ID_LEN = 32
ZERO_ID = bytes(ID_LEN)
HEADER = struct.Struct("<4sB3sIIQQ")  # 32 bytes, then the checksum
HEADER_LEN = HEADER.size + 32
# (header bytes 0..31, entries) -> 32-byte tag; the caller binds it to the map's place
Tagger = Callable[[bytes, bytes | bytearray | memoryview], bytes]


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

    def encode(self, tag: Tagger) -> tuple[bytes, bytes]:
        head = self._header()
        return head + tag(head, self.entries), bytes(self.entries)

    @classmethod
    def decode(cls, data: bytes, name: str, tag: Tagger, *, keyed: bool) -> DiskMap:
        """Check a version-2 map against its tag; a version-1 map is refused (a v2
        repository holds only v2 maps, so an old unkeyed map cannot be slipped in)."""
        m = cls._parse(data, name, VERSION)
        if not hmac.compare_digest(
            tag(data[: HEADER.size], memoryview(data)[HEADER_LEN:]),
            data[HEADER.size : HEADER_LEN],
        ):
            raise CorruptObjectError(
                name,
                "fails its authentication: tampered, moved from another point or disk, "
                "or written with another key"
                if keyed
                else "checksum mismatch: damaged, or moved from another point or disk",
            )
        return m

    @classmethod
    def decode_v1(cls, data: bytes, name: str) -> DiskMap:
        m = cls._parse(data, name, V1)
        if _v1_checksum(data[: HEADER.size], memoryview(data)[HEADER_LEN:]) != bytes(
            data[HEADER.size : HEADER_LEN]
        ):
            raise CorruptObjectError(name, "checksum mismatch (version-1 map)")
        return m

    @staticmethod
    def version_of(data: bytes) -> int | None:
        """The version byte of something that starts like a map, else None."""
        return data[4] if len(data) >= HEADER_LEN and data[:4] == MAGIC else None

    @classmethod
    def _parse(cls, data: bytes, name: str, want: int) -> DiskMap:
        if len(data) < HEADER_LEN:
            raise CorruptObjectError(name, f"truncated map: {len(data)} bytes")
        magic, version, reserved, chunk_size, reserved2, capacity, count = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptObjectError(name, f"bad magic {magic!r}")
        if version != want:  # never a fallback: that would let an unkeyed v1 map in
            raise CorruptObjectError(name, f"map version {version}, expected {want}")
        if reserved != bytes(3) or reserved2 or chunk_size <= 0:
            raise CorruptObjectError(name, "bad header fields")
        if count != chunk_count(capacity, chunk_size):
            raise CorruptObjectError(name, "chunk count does not match capacity")
        if len(data) != HEADER_LEN + count * ID_LEN:
            raise CorruptObjectError(
                name, f"{len(data)} bytes, expected {HEADER_LEN + count * ID_LEN} (truncated?)"
            )
        return cls(chunk_size, capacity, bytearray(memoryview(data)[HEADER_LEN:]))


def _v1_checksum(head: bytes, entries: bytes | bytearray | memoryview) -> bytes:
    h = blake3.blake3(head, max_threads=1)
    h.update(entries)
    return h.digest()
