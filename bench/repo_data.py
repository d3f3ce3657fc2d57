"""Deterministic mixed test data for the repository benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"kernel", b"block", b"inode", b"\n", b" "]


def text_chunk(rnd: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(_WORDS, k=64)) + b"%d\n" % rnd.getrandbits(32)
    return bytes(out[:size])


def mixed_chunks(n: int, size: int = MiB, seed: int = 1) -> Iterator[bytes]:
    """Zeros 20 %, duplicates 20 %, compressible text 30 %, random 30 %."""
    rnd = random.Random(seed)
    seen: list[bytes] = []
    for i in range(n):
        k = i % 10
        if k < 2:
            yield bytes(size)
        elif k < 4 and seen:
            yield seen[rnd.randrange(len(seen))]
        elif k < 7:
            c = text_chunk(rnd, size)
            if len(seen) < 32:
                seen.append(c)
            yield c
        else:
            yield rnd.randbytes(size)


def write_image(path: Path, n_chunks: int, size: int = MiB, seed: int = 1) -> int:
    with open(path, "wb") as fh:
        for c in mixed_chunks(n_chunks, size, seed):
            fh.write(c)
    return n_chunks * size
