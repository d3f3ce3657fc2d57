"""Blob, map, key file and id validation: round trips and every way to be bad."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from common.chunk import compress
from repository import blob, keyfile
from repository.chunk_store import ChunkStore, parse_hex_id
from repository.errors import (
    CorruptObjectError,
    InvalidChunkIdError,
    WrongPassphraseError,
)
from repository.fixed_index import ZERO_ID, DiskMap
from repository.meta_auth import MetaAuth


@given(data=st.binary(max_size=4096), level=st.integers(0, 5), enc=st.booleans())
@settings(max_examples=60, deadline=None)
def test_blob_round_trip(data: bytes, level: int, enc: bool) -> None:
    cipher = AESGCM(bytes(range(32))) if enc else None
    payload, compressed = compress(data, level)
    head, body = blob.encode(payload, len(data), compressed, blob.MAGIC_CHUNK, cipher)
    assert len(head) == blob.HEADER_LEN
    assert blob.decode(head + body, blob.MAGIC_CHUNK, cipher, "x") == data


@given(data=st.binary(min_size=1, max_size=2048), pos=st.integers(0, 10_000), enc=st.booleans())
@settings(max_examples=80, deadline=None)
def test_blob_any_flipped_bit_is_detected(data: bytes, pos: int, enc: bool) -> None:
    cipher = AESGCM(bytes(32)) if enc else None
    payload, compressed = compress(data, 3)
    raw = bytearray(b"".join(blob.encode(payload, len(data), compressed, blob.MAGIC_CHUNK, cipher)))
    pos %= len(raw)
    if 20 <= pos < 32 and not enc:
        return  # the unused nonce field of a plain blob carries no information
    raw[pos] ^= 0x01
    with pytest.raises(CorruptObjectError) as ei:
        blob.decode(bytes(raw), blob.MAGIC_CHUNK, cipher, "chunk abc")
    assert "chunk abc" in str(ei.value)


@given(cut=st.integers(0, 100))
def test_blob_truncated(cut: int) -> None:
    data = os.urandom(200)
    raw = b"".join(blob.encode(data, 200, False, blob.MAGIC_CHUNK, None))
    with pytest.raises(CorruptObjectError, match=r"truncated|payload is"):
        blob.decode(raw[: len(raw) - 1 - cut], blob.MAGIC_CHUNK, None, "c")


def test_blob_encrypted_vs_plain_mismatch() -> None:
    raw = b"".join(blob.encode(b"hello", 5, False, blob.MAGIC_CHUNK, None))
    with pytest.raises(CorruptObjectError, match="not encrypted"):
        blob.decode(raw, blob.MAGIC_CHUNK, AESGCM(bytes(32)), "c")
    raw = b"".join(blob.encode(b"hello", 5, False, blob.MAGIC_CHUNK, AESGCM(bytes(32))))
    with pytest.raises(CorruptObjectError, match="authentication"):
        blob.decode(raw, blob.MAGIC_CHUNK, AESGCM(bytes([1] * 32)), "c")


def _TAG(head: bytes, entries: bytes | bytearray | memoryview) -> bytes:
    return MetaAuth("00000000-0000-4000-8000-000000000000", None).map_tag(
        "vm", "20260101T000000Z-00000000", 1, head, entries
    )


@given(
    cap=st.integers(1, 40 * 1024),
    sets=st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=32, max_size=32))),
)
@settings(max_examples=60, deadline=None)
def test_map_round_trip_and_resize(cap: int, sets: list[tuple[int, bytes]]) -> None:
    m = DiskMap(1024, cap)
    for i, cid in sets:
        if i < len(m):
            m.set(i, cid)
    tag = _TAG
    head, body = m.encode(tag)
    m2 = DiskMap.decode(head + body, "map", tag, keyed=False)
    assert m2.entries == m.entries and m2.capacity == cap
    grown = m.resized(cap * 2)
    assert grown.entries[: len(m.entries)] == m.entries
    assert all(grown.get(i) == ZERO_ID for i in range(len(m), len(grown)))


def test_map_corruption_detected() -> None:
    m = DiskMap(1024, 10 * 1024)
    m.set(3, os.urandom(32))
    data = bytearray(b"".join(m.encode(_TAG)))
    for pos in (0, 9, 20, 40, 64 + 3 * 32 + 5):
        bad = bytearray(data)
        bad[pos] ^= 4
        with pytest.raises(CorruptObjectError):
            DiskMap.decode(bytes(bad), "map m", _TAG, keyed=False)
    with pytest.raises(CorruptObjectError, match="truncated"):
        DiskMap.decode(bytes(data[:-7]), "map m", _TAG, keyed=False)


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    keys = keyfile.create(path, b"secret", n=1 << 10)
    assert keyfile.load(path, b"secret") == keys
    with pytest.raises(WrongPassphraseError, match=str(path)):
        keyfile.load(path, b"wrong")
    path.write_text("{not json")
    with pytest.raises(CorruptObjectError, match="key file"):
        keyfile.load(path, b"secret")


@pytest.mark.parametrize(
    "text",
    ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "/etc/passwd", "", "aa/" + "b" * 61],
)
def test_hex_id_validation(text: str) -> None:
    with pytest.raises(InvalidChunkIdError):
        parse_hex_id(text)


def test_chunk_store_rejects_bad_ids(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    for bad in (b"", b"x" * 31, b"../../" * 6, "a" * 64):
        with pytest.raises(InvalidChunkIdError):
            store.path_of(bad)  # type: ignore[arg-type]  # the bad input under test
    assert parse_hex_id("ab" * 32) == bytes([0xAB]) * 32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=70_000), st.integers(0, 0xFFFFFFFF))
def test_blob_crc_is_zlibs_crc32(data: bytes, start: int) -> None:
    """The blob CRC (docs/repository-format.md: CRC-32, zlib polynomial) comes from ISA-L
    for speed: it must equal zlib's, so existing repositories keep verifying."""
    import zlib

    assert blob.crc32(data) == zlib.crc32(data)
    assert blob.crc32(data, start) == zlib.crc32(data, start)
    assert blob.crc32(memoryview(data)[1:]) == zlib.crc32(data[1:])
