"""Memory and lookup time of the pack index at 1 M chunk ids (repository/pack_index_file.py).

    .venv/bin/python -m bench.pack_index_rss [--entries 1000000]

Writes one index file of N random ids, maps it, looks up 100 000 present and 100 000
absent ids, and reports the file size, the process's resident memory before and after
(VmRSS; the mapping's touched pages count as resident while they are mapped), and the
time per lookup.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from bench.procmem import proc_memory
from repository.pack_index_file import IndexFile, Location, encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    rnd = random.Random(1)
    n = args.entries
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.idx"
        ids = [rnd.randbytes(32) for _ in range(n)]
        packs = [rnd.randbytes(16) for _ in range(max(1, n // 32))]
        parts = encode((cid, Location(packs[i // 32], 64, 1 << 20)) for i, cid in enumerate(ids))
        path.write_bytes(b"".join(parts))
        del parts
        sample = rnd.sample(ids, 100_000)
        absent = [rnd.randbytes(32) for _ in range(100_000)]
        del ids
        before = proc_memory()["VmRSS"]
        t0 = time.perf_counter()
        f = IndexFile(path)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = sum(1 for cid in sample if f.lookup(cid))
        t_hit = (time.perf_counter() - t0) / len(sample)
        t0 = time.perf_counter()
        miss = sum(1 for cid in absent if f.lookup(cid))
        t_miss = (time.perf_counter() - t0) / len(absent)
        after = proc_memory()["VmRSS"]
        assert hits == len(sample) and miss == 0
        size = os.path.getsize(path)
        print(
            f"{n} entries: index file {size / 2**20:.1f} MiB ({size / n:.1f} B/entry); open"
            f" (checksum) {t_open * 1e3:.0f} ms; lookup {t_hit * 1e6:.1f} us present,"
            f" {t_miss * 1e6:.1f} us absent; RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"
            f" (+{(after - before) / n:.1f} B/entry, the mapped file's touched pages)"
        )


if __name__ == "__main__":
    main()
