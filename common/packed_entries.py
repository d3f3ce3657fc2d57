"""Packed map entries: the compact form in which a disk's (chunk index, chunk id) pairs
cross the broker (TaskEntries, CommitPart) and wait in a writer's staging directory.

A sequence of runs of consecutive chunk indexes, ascending and not overlapping:
  start u64 BE, count u32 BE (>= 1), kind u8 (0 = all-zero chunks, 1 = ids),
  then for kind 1 ``count`` ids of 32 bytes.
A zero run costs 13 bytes whatever its length; an id costs 32 bytes (msgpack pairs cost
about 40). Readers of untrusted data iterate :func:`iter_packed`, which checks the
structure strictly and never expands a zero run into a list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import blake3

ID_LEN = 32
_RUN = struct.Struct(">QIB")
RUN_ZERO = 0
RUN_IDS = 1
# Names what the digest is of, so that it can never equal a digest taken for another use.
_DIGEST_CONTEXT = b"vmbackup-task-entries-v1\0"


class PackedEntriesError(ValueError):
    """Packed entries that break the format; the text says where."""


def pack_entries(entries: list[tuple[int, bytes]]) -> bytes:
    """Pack (index, id) pairs sorted by index (b"" = zero chunk) into runs."""
    out = bytearray()
    i = 0
    n = len(entries)
    prev_end = -1
    while i < n:
        start, cid = entries[i]
        if start < 0 or start <= prev_end - 1 or start > 2**64 - 1:
            raise PackedEntriesError(f"entries: index {start} out of order or out of range")
        kind = RUN_ZERO if cid == b"" else RUN_IDS
        j = i + 1
        while (
            j < n
            and j - i < 0xFFFFFFFF
            and entries[j][0] == start + (j - i)
            and (entries[j][1] == b"") == (kind == RUN_ZERO)
        ):
            j += 1
        out += _RUN.pack(start, j - i, kind)
        if kind == RUN_IDS:
            for _idx, c in entries[i:j]:
                if len(c) != ID_LEN:
                    raise PackedEntriesError(
                        f"entries: chunk id of {len(c)} bytes, expected {ID_LEN}"
                    )
                out += c
        prev_end = start + (j - i)
        i = j
    return bytes(out)


def iter_packed(data: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """Runs (start, count, ids or None for zeros) of packed entries, checked strictly."""
    view = memoryview(data)
    pos = 0
    prev_end = 0
    first = True
    while pos < len(view):
        if len(view) - pos < _RUN.size:
            raise PackedEntriesError(f"packed entries: truncated run header at byte {pos}")
        start, count, kind = _RUN.unpack_from(view, pos)
        pos += _RUN.size
        if count == 0:
            raise PackedEntriesError(f"packed entries: empty run at index {start}")
        if not first and start < prev_end:
            raise PackedEntriesError(
                f"packed entries: run at index {start} overlaps or is unsorted"
            )
        if kind == RUN_ZERO:
            ids = None
        elif kind == RUN_IDS:
            size = count * ID_LEN
            if len(view) - pos < size:
                raise PackedEntriesError(f"packed entries: run at index {start} is truncated")
            ids = bytes(view[pos : pos + size])
            pos += size
        else:
            raise PackedEntriesError(f"packed entries: unknown run kind {kind} at index {start}")
        first = False
        prev_end = start + count
        yield start, count, ids


def iter_entries(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every (index, id) pair in order, one at a time (b"" = zero chunk)."""
    for start, count, ids in iter_packed(data):
        if ids is None:
            for k in range(count):
                yield start + k, b""
        else:
            for k in range(count):
                yield start + k, ids[k * ID_LEN : (k + 1) * ID_LEN]


def unpack_entries(data: bytes) -> list[tuple[int, bytes]]:
    """Every entry as a list (tests, small parts); a zero run expands to one entry per
    chunk, so readers of untrusted parts iterate instead."""
    return list(iter_entries(data))


def check_packed(data: bytes) -> int:
    """How many entries ``data`` holds; PackedEntriesError when it breaks the format."""
    return sum(count for _start, count, _ids in iter_packed(data))


def entries_digest(packed: bytes) -> bytes:
    """What a proxy reports of the entries it staged and the writer checks at the commit:
    BLAKE3 of the packed bytes (32 bytes)."""
    return blake3.blake3(_DIGEST_CONTEXT + packed).digest()
