"""Restore streaming rate vs bare read + decompress + hash of the same chunks.

    .venv/bin/python -m bench.repo_restore [--mib 256] [--repeat 5]

A mixed image (bench/repo_data.py) is imported; then, with the chunk files page
cached, the baseline reads every non-zero chunk the map names, zstd-decompresses
it and BLAKE3-hashes it on one core. `restore_disk` does the same plus the blob
checks, the id comparison and the sparse positional writes of a raw file, in
these modes (interleaved with the baseline, ``--repeat`` rounds):

- ``1core``: inline decode (workers=0), pinned to one core, with the final fsync;
- ``1core-nosync``: the same without fsync (``restore --no-fsync``, scratch copies);
- ``2thr``: the default 2 decode threads, all cores, with fsync.

Rates are disk bytes per second. Ratio = baseline time / restore time, per round
(range shown) and of the best times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import blake3
import zstandard

from bench.repo_data import MiB, write_image
from repository import blob
from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk

MODES = {
    "1core": (0, True, True),
    "1core-nosync": (0, False, True),
    "1thr": (1, True, False),
    "2thr": (2, True, False),
}


def baseline(repo: Repository, point_id: str) -> float:
    dmap = repo.load_map(point_id, 2000)
    dctx = zstandard.ZstdDecompressor()
    t0 = time.perf_counter()
    for _i, cid in dmap.iter_ids():
        data = repo.chunks.read(cid)  # the blob, from its file (or its pack)
        h = blob.parse_header(data, "")
        body = data[blob.HEADER_LEN :]
        plain = dctx.decompress(body, max_output_size=h.raw_len) if h.compressed else body
        blake3.blake3(plain, max_threads=1).digest()
    return time.perf_counter() - t0


def restore_once(repo: Repository, pid: str, out: Path, workers: int, sync: bool) -> float:
    t0 = time.perf_counter()
    restore_disk(repo, pid, 2000, out, workers=workers, sync=sync)
    t = time.perf_counter() - t0
    out.unlink()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    all_cpus = os.sched_getaffinity(0)
    one = {sorted(all_cpus)[0]}
    os.sched_setaffinity(0, one)
    work = Path(tempfile.mkdtemp(prefix="repo-restore-", dir=args.dir))
    t_base: list[float] = []
    t_mode: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        write_image(work / "img", args.mib)
        repo = Repository.init(work / "repo", chunk_size=MiB, compression_level=1)
        pid = import_disk(repo, "bench", 2000, work / "img").point_id
        (work / "img").unlink()
        os.sync()  # the import's dirty pages must not be flushed during the timings
        baseline(repo, pid)  # warm the page cache
        for _ in range(args.repeat):
            os.sched_setaffinity(0, one)
            t_base.append(baseline(repo, pid))
            for mode, (workers, sync, pinned) in MODES.items():
                os.sched_setaffinity(0, one if pinned else all_cpus)
                t_mode[mode].append(restore_once(repo, pid, work / "out.raw", workers, sync))
    finally:
        os.sched_setaffinity(0, all_cpus)
        shutil.rmtree(work, ignore_errors=True)
    size = args.mib * MiB
    b = min(t_base)
    print(
        f"{args.mib} MiB mixed, {args.repeat} rounds; baseline read+decompress+hash (1 core)"
        f" best {size / b / MiB:.0f} MiB/s, median {size / statistics.median(t_base) / MiB:.0f}"
    )
    for mode, ts in t_mode.items():
        per_round = [tb / tr for tb, tr in zip(t_base, ts, strict=True)]
        print(
            f"  restore {mode:13s} best {size / min(ts) / MiB:5.0f} MiB/s;"
            f" ratio of best times {b / min(ts):.2f};"
            f" per round {min(per_round):.2f}..{max(per_round):.2f}"
            f" (median {statistics.median(per_round):.2f})"
        )


if __name__ == "__main__":
    main()
