"""The bytes of a pack file: header, chunk records, the sealed pack's trailer.

A pack holds many chunk blobs (repository/blob.py, unchanged) one after another, each
behind a record header that names its chunk id, so that an open pack a crash left
behind can be read back record by record. Sealing appends the pack's index (entries
sorted by id) and a fixed footer; a sealed pack is never changed again. Layout, little
endian (docs/repository-format.md, "Pack files"):

    header   0  8  magic b"VMBPACK1"
             8 16  pack id (random)
            24  8  reserved, 0
    record   0 32  chunk id
            32  4  blob length
            36  4  CRC-32 of bytes 0..35 (a torn or stale tail fails it)
            40  n  the chunk blob
    trailer  count x (id 32, offset u32 of the blob, length u32)   sorted by id
    footer   0  4  magic b"VPKF"
             4  4  entry count
             8  8  trailer offset
            16 32  BLAKE3-256 of the trailer's entries
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from blake3 import blake3
from isal.isal_zlib import crc32

from repository import blob
from repository.errors import CorruptObjectError

MAGIC = b"VMBPACK1"
PACK_ID_LEN = 16
HEADER = struct.Struct("<8s16s8x")
HEADER_LEN = HEADER.size  # 32
RECORD = struct.Struct("<32sII")
RECORD_LEN = RECORD.size  # 40
ENTRY = struct.Struct("<32sII")
ENTRY_LEN = ENTRY.size  # 40
FOOTER = struct.Struct("<4sIQ32s")
FOOTER_LEN = FOOTER.size  # 48
FOOTER_MAGIC = b"VPKF"
MAX_PACK = 2**32 - 1  # offsets are u32


class Entry(NamedTuple):
    id: bytes
    offset: int  # of the blob (after its record header)
    length: int  # of the blob


def header(pack_id: bytes) -> bytes:
    return HEADER.pack(MAGIC, pack_id)


def parse_header(data: bytes, name: str) -> bytes:
    """The pack id of a pack file's first bytes."""
    if len(data) < HEADER_LEN:
        raise CorruptObjectError(name, f"truncated: {len(data)} bytes, header needs {HEADER_LEN}")
    magic, pack_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptObjectError(name, f"bad magic {bytes(magic)!r}, not a pack")
    return bytes(pack_id)


def record_header(chunk_id: bytes, length: int) -> bytes:
    head = chunk_id + length.to_bytes(4, "little")
    return head + crc32(head).to_bytes(4, "little")


def scan_records(data: bytes | memoryview, size_range: tuple[int, int]) -> Iterator[Entry]:
    """The whole records of an open pack, from the first byte after the header up to the
    first one that is torn, stale or not a well-formed blob (a crash mid-write)."""
    view = memoryview(data)
    pos = HEADER_LEN
    while pos + RECORD_LEN <= len(view):
        cid, length, crc = RECORD.unpack_from(view, pos)
        if crc32(view[pos : pos + 36]) != crc or not size_range[0] <= length <= size_range[1]:
            return
        start = pos + RECORD_LEN
        body = view[start : start + length]
        if len(body) != length or not blob_intact(body):
            return
        yield Entry(bytes(cid), start, length)
        pos = start + length


def blob_intact(data: bytes | memoryview) -> bool:
    """The blob's header parses and its payload matches its CRC (no key needed)."""
    try:
        h = blob.parse_header(data, "record")
    except CorruptObjectError:
        return False
    body = memoryview(data)[blob.HEADER_LEN :]
    return h.magic == blob.MAGIC_CHUNK and h.payload_len == len(body) and crc32(body) == h.crc


def trailer(entries: Iterable[Entry], trailer_offset: int) -> bytes:
    """Sorted index + footer, appended at ``trailer_offset`` when the pack is sealed."""
    ordered = sorted(entries)
    body = b"".join(ENTRY.pack(*e) for e in ordered)
    return body + FOOTER.pack(FOOTER_MAGIC, len(ordered), trailer_offset, blake3(body).digest())


def parse_trailer(data: bytes | memoryview, name: str) -> list[Entry]:
    """The entries of a sealed pack (the whole file, or at least its tail: then
    ``data`` must end where the file ends and hold the whole trailer)."""
    if len(data) < HEADER_LEN + FOOTER_LEN:
        raise CorruptObjectError(name, f"truncated: {len(data)} bytes")
    magic, count, offset, digest = FOOTER.unpack_from(data, len(data) - FOOTER_LEN)
    if magic != FOOTER_MAGIC:
        raise CorruptObjectError(name, "no pack footer (not sealed, or cut short)")
    size = count * ENTRY_LEN
    body = memoryview(data)[len(data) - FOOTER_LEN - size : len(data) - FOOTER_LEN]
    if len(body) != size or blake3(body).digest() != digest:
        raise CorruptObjectError(name, "pack index checksum mismatch")
    out = [Entry(*ENTRY.unpack_from(body, i * ENTRY_LEN)) for i in range(count)]
    for e in out:
        if e.offset < HEADER_LEN + RECORD_LEN or e.offset + e.length > offset:
            raise CorruptObjectError(name, f"index entry {e.id.hex()} outside the pack's records")
    return [Entry(bytes(e.id), e.offset, e.length) for e in out]


def trailer_size(count: int) -> int:
    return count * ENTRY_LEN + FOOTER_LEN
