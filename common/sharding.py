"""Which writer shard owns a chunk id.

The shard is taken from the id's first two bytes, so ids (uniform BLAKE3 output)
spread evenly, and any process computes the owner without a shared index.
"""

from __future__ import annotations

from collections.abc import Iterable


def shard_of(chunk_id: bytes, n_shards: int) -> int:
    if n_shards <= 0:
        raise ValueError(f"n_shards must be positive, got {n_shards}")
    return int.from_bytes(chunk_id[:2], "big") % n_shards


def shard_routing_key(shard: int) -> str:
    return f"shard.{shard}"


def shard_queue(shard: int) -> str:
    return f"vmbackup.shard.{shard}"


def parse_shard_set(spec: str | Iterable[int], n_shards: int) -> list[int]:
    """Parse a writer's shard set: "all", "0-3,7" or a list of ints, each < n_shards."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            return list(range(n_shards))
        out: set[int] = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                rng = range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1)
            except ValueError:
                raise ValueError(f"bad shard set {spec!r}: {part!r} is not N or N-M") from None
            out.update(rng)
        shards = sorted(out)
    else:
        shards = sorted(set(spec))
    bad = [s for s in shards if not 0 <= s < n_shards]
    if bad:
        raise ValueError(f"shards {bad} out of range 0..{n_shards - 1}")
    if not shards:
        raise ValueError("empty shard set")
    return shards
