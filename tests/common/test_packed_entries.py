"""Packed map entries (common/packed_entries.py): round trips, size, malformed input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common import messages as m
from common.packed_entries import (
    PackedEntriesError,
    check_packed,
    entries_digest,
    iter_packed,
    pack_entries,
    unpack_entries,
)

ids = st.binary(min_size=32, max_size=32)
# sorted, distinct indexes with runs (what a disk's commit entries look like)
sorted_pairs = st.lists(
    st.tuples(st.integers(0, 2**40), st.one_of(st.just(b""), ids)),
    max_size=30,
    unique_by=lambda p: p[0],
).map(sorted)


@given(sorted_pairs)
@settings(max_examples=300)
def test_packed_entries_round_trip(entries: list[tuple[int, bytes]]) -> None:
    packed = pack_entries(entries)
    assert unpack_entries(packed) == entries
    # runs: a long zero run costs one header
    assert len(packed) <= 13 * len(entries) + 32 * sum(1 for _i, c in entries if c)


def test_packed_entries_are_compact() -> None:
    n = 100_000
    # a disk's layout: allocated stretches (ids) between unallocated ones (zeros)
    entries = [(i, (i % 7 + 1).to_bytes(1, "big") * 32 if i % 70 < 50 else b"") for i in range(n)]
    packed = pack_entries(entries)
    loose = len(m.encode(m.TaskResult("t", "j", "u", 1, True, "", entries, 0, 0, 0, 0, 0.0, "p")))
    assert len(packed) < 0.9 * loose
    zeros = pack_entries([(i, b"") for i in range(n)])
    assert len(zeros) == 13


@given(st.binary(max_size=200))
@example(bytes(8) + b"\xff\xff\xff\xff" + b"\x00")  # a zero run of 2**32 - 1 entries
@settings(max_examples=500)
def test_packed_entries_garbage_raises_only_packed_entries_error(data: bytes) -> None:
    # The parser, lazily, as the writer reads staged parts: garbage may well hold a "valid"
    # zero run of 4 billion entries, which unpack_entries would build as a list (this test
    # once ran the suite out of memory that way).
    with contextlib.suppress(PackedEntriesError):
        for _start, _count, _ids in iter_packed(data):
            pass


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ([(5, b""), (4, b"")], "out of order"),
        ([(1, b"x")], "chunk id of 1 bytes"),
        ([(-1, b"")], "out of order or out of range"),
    ],
)
def test_pack_refuses_bad_entries(entries: list[tuple[int, bytes]], needle: str) -> None:
    with pytest.raises(PackedEntriesError, match=needle):
        pack_entries(entries)


@given(sorted_pairs)
def test_count_and_digest_follow_the_entries(entries: list[tuple[int, bytes]]) -> None:
    packed = pack_entries(entries)
    assert check_packed(packed) == len(entries)
    assert len(entries_digest(packed)) == 32
    if entries:
        other = pack_entries([*entries[:-1], (entries[-1][0], b"\x09" * 32)])
        if other != packed:
            assert entries_digest(other) != entries_digest(packed)
