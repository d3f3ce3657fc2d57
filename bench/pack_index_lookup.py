"""Lookup time in an S3 repository's index cache: a file per pack vs the merged cache.

    .venv/bin/python -m bench.pack_index_lookup [--packs 100 1000 4000] [--per-pack 128]

For each count of packs (128 chunk ids each: 128 MiB packs of 1 MiB chunks), writes one
index file per pack (the cache as it was: one per uploaded or downloaded index object),
times lookups of present and absent ids through PackIndex, then merges the files with
the same merge_index_files the cache's compaction uses (s3_pack_index.py) and times
the same lookups again. CPU seconds (process time) per lookup, in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from repository.pack_compact import merge_index_files
from repository.pack_index import PackIndex
from repository.pack_index_file import Location
from repository.pack_writer import write_index

LOOKUPS = 2000


def _per_lookup_us(index: PackIndex, ids: list[bytes]) -> float:
    t0 = time.process_time()
    for cid in ids:
        index.lookup(cid)
    return (time.process_time() - t0) / len(ids) * 1e6


def run(packs: int, per_pack: int, rnd: random.Random) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "index").mkdir()
        ids: list[bytes] = []
        for _ in range(packs):
            pack = rnd.randbytes(16)
            entries = [
                (rnd.randbytes(32), Location(pack, i << 20, 1 << 20)) for i in range(per_pack)
            ]
            ids += [cid for cid, _ in entries]
            write_index(root, pack.hex() + ".idx", entries)
        present = rnd.sample(ids, LOOKUPS)
        absent = [rnd.randbytes(32) for _ in range(LOOKUPS)]
        index = PackIndex(root)
        index.refresh()
        row = {
            "packs": packs,
            "files": len(index.files()),
            "hit_us": _per_lookup_us(index, present),
            "miss_us": _per_lookup_us(index, absent),
        }
        merge_index_files(root, index.files())
        index.refresh()
        row["merged_files"] = len(index.files())
        row["merged_hit_us"] = _per_lookup_us(index, present)
        row["merged_miss_us"] = _per_lookup_us(index, absent)
        index.close()
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packs", type=int, nargs="+", default=[100, 1000, 4000])
    ap.add_argument("--per-pack", type=int, default=128)
    args = ap.parse_args()
    rnd = random.Random(7)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| packs | files | hit us | miss us | merged files | hit us | miss us | hit ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.packs:
        r = run(n, args.per_pack, rnd)
        ratio = r["hit_us"] / r["merged_hit_us"]
        print(
            f"| {n} | {r['files']:.0f} | {r['hit_us']:.1f} | {r['miss_us']:.1f}"
            f" | {r['merged_files']:.0f} | {r['merged_hit_us']:.1f} | {r['merged_miss_us']:.1f}"
            f" | {ratio:.0f}x |"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
