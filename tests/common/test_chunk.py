"""Chunk helpers: zero check, ids, and compression with its incompressibility probe."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from common.chunk import (
    PROBE_MIN,
    PROBE_SAMPLE,
    PROBE_SAMPLES,
    chunk_id,
    compress,
    decompress,
    is_zero,
    looks_incompressible,
)
from common.compression_level import MIN_LEVEL

MiB = 1 << 20


def _random(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _text(n: int) -> bytes:
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    return (line * (n // len(line) + 1))[:n]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3 * PROBE_MIN), level=st.integers(MIN_LEVEL, 5), probe=st.booleans())
def test_compress_round_trips_whatever_it_chooses(data: bytes, level: int, probe: bool) -> None:
    payload, compressed = compress(data, level, probe=probe)
    if compressed:
        assert len(payload) < len(data)
        assert decompress(payload, len(data)) == data
    else:
        assert payload == data


def test_random_chunk_is_stored_as_given_without_compressing_it_whole() -> None:
    data = bytearray(_random(MiB))
    assert looks_incompressible(data, 1)
    payload, compressed = compress(data, 1)
    assert not compressed and payload is data  # the caller's buffer, no copy
    # without the probe zstd runs on all of it and still gives up
    payload, compressed = compress(data, 1, probe=False)
    assert not compressed and payload is data


def test_compressible_chunks_are_compressed() -> None:
    assert not looks_incompressible(_text(MiB), 1)
    payload, compressed = compress(_text(MiB), 1)
    assert compressed and len(payload) < MiB // 20


def test_one_compressible_sample_is_enough_to_compress() -> None:
    """Random data with one sampled stretch of zeros (a partly filled block): compressed."""
    data = bytearray(_random(MiB))
    step = MiB // PROBE_SAMPLES
    data[5 * step : 5 * step + PROBE_SAMPLE] = bytes(PROBE_SAMPLE)
    assert not looks_incompressible(data, 1)
    payload, compressed = compress(data, 1)
    assert compressed and decompress(payload, MiB) == data


def test_half_random_half_text_is_compressed() -> None:
    data = _random(MiB // 2) + _text(MiB // 2)
    payload, compressed = compress(data, 3)
    assert compressed and len(payload) < 0.6 * MiB


def test_small_payloads_are_not_probed() -> None:
    assert not looks_incompressible(_random(PROBE_MIN - 1), 1)
    assert looks_incompressible(_random(PROBE_MIN), 1)


def test_memoryview_input_is_copied_out_when_stored_raw() -> None:
    backing = bytearray(_random(MiB))
    before = bytes(backing)
    payload, compressed = compress(memoryview(backing), 1)
    assert not compressed and isinstance(payload, bytes) and payload == before
    backing[:4] = bytes(4)  # the buffer behind the view is reused; the payload stays
    assert payload == before


def test_zero_check_and_ids() -> None:
    assert is_zero(bytes(MiB)) and is_zero(bytearray(10)) and is_zero(memoryview(bytes(7)))
    assert not is_zero(bytes(MiB - 1) + b"\1")
    key = bytes(range(32))
    assert chunk_id(b"abc") == chunk_id(bytearray(b"abc")) == chunk_id(memoryview(b"abc"))
    assert chunk_id(b"abc", key) != chunk_id(b"abc")
    assert len(chunk_id(b"", key)) == 32
