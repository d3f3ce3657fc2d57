"""Chunk-level helpers shared by proxies (source side) and writers.

Chunk ids are BLAKE3-256 of the plaintext, keyed when the repository is
encrypted so that ids reveal nothing about content. Zero chunks are detected
by comparing against a cached zero bytes object: ``buf == ZERO`` runs at
memory speed, ``not any(buf)`` is ~100x slower.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

ID_LEN = 32

_zero_cache: dict[int, bytes] = {}


def zero_bytes(size: int) -> bytes:
    """A shared all-zero bytes object of ``size`` bytes (cached per size)."""
    z = _zero_cache.get(size)
    if z is None:
        if len(_zero_cache) > 16:  # chunk sizes are few; never grow without bound
            _zero_cache.clear()
        z = _zero_cache[size] = bytes(size)
    return z


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """True when every byte of ``buf`` is zero. Pass bytes for speed."""
    if isinstance(buf, memoryview):
        buf = buf.tobytes()
    return buf == zero_bytes(len(buf))


def chunk_id(data: bytes | bytearray | memoryview, key: bytes | None = None) -> bytes:
    """BLAKE3-256 of ``data``; keyed (32-byte key) for encrypted repositories."""
    if key is None:
        return blake3.blake3(data, max_threads=1).digest()
    return blake3.blake3(data, key=key, max_threads=1).digest()


# zstd contexts are not thread-safe but are costly to make: one per thread and level.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level)
    return c


def zstd_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompression context (contexts are not thread-safe)."""
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


# The probe: evenly spaced samples of a chunk, each compressed on its own. Only when none of
# them shrinks is the chunk taken for incompressible (encrypted or already compressed data,
# media): zstd on such a chunk costs as much as hashing it and saves nothing.
PROBE_MIN = 64 << 10  # smaller payloads are compressed outright
PROBE_SAMPLES = 8
PROBE_SAMPLE = 4 << 10
PROBE_GAIN = 0.97  # a sample "shrinks" below this fraction of its size


def looks_incompressible(data: bytes | bytearray | memoryview, level: int) -> bool:
    """True when no probe sample of ``data`` compresses (see PROBE_*)."""
    n = len(data)
    if n < PROBE_MIN:
        return False
    view = memoryview(data)
    step = n // PROBE_SAMPLES
    cctx = _compressor(level)
    for i in range(PROBE_SAMPLES):
        sample = view[i * step : i * step + PROBE_SAMPLE]
        if len(cctx.compress(sample)) < len(sample) * PROBE_GAIN:
            return False
    return True


def compress(
    data: bytes | bytearray | memoryview, level: int, *, probe: bool = True
) -> tuple[bytes | bytearray, bool]:
    """zstd-compress ``data`` at ``level`` (0: not at all; negative: a fast level);
    returns (payload, compressed).

    The raw bytes are returned (compressed=False) when compression does not make the
    payload smaller, or, with ``probe``, when no sample of it compresses (then zstd is not
    run on the whole): incompressible data costs no decompression either. They are ``data``
    itself unless it is a memoryview (which may look into a buffer that gets reused): the
    caller hands over a bytes or bytearray chunk and must not change it afterwards.
    """
    if level != 0 and not (probe and looks_incompressible(data, level)):
        out = _compressor(level).compress(data)
        if len(out) < len(data):
            return out, True
    return (data.tobytes() if isinstance(data, memoryview) else data), False


def decompress(payload: bytes | bytearray, raw_len: int) -> bytes:
    """Inverse of :func:`compress` for compressed payloads; checks the length."""
    out = zstd_decompressor().decompress(payload, max_output_size=raw_len)
    if len(out) != raw_len:
        raise ValueError(f"decompressed {len(out)} bytes, expected {raw_len}")
    return out
