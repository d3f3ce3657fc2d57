"""Restore streaming rate vs bare read + decompress + hash of the same chunks, one core.

    .venv/bin/python -m bench.repo_restore [--mib 512]

A mixed image (bench/repo_data.py) is imported; then, with the chunk files page
cached, the baseline reads every non-zero chunk the map names, zstd-decompresses
it and BLAKE3-hashes it (one core); `restore_disk` does the same plus blob checks,
the id comparison, sparse writes to a raw file and its fsync: inline on one core,
then with its default 2 decode threads (all cores). Rates are disk bytes per second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import blake3
import zstandard

from bench.repo_data import MiB, write_image
from repository_writer import blob
from repository_writer.import_disk import import_disk
from repository_writer.repository import Repository
from repository_writer.restore import restore_disk


def baseline(repo: Repository, point_id: str) -> float:
    dmap = repo.load_map(point_id, 2000)
    dctx = zstandard.ZstdDecompressor()
    t0 = time.perf_counter()
    for _i, cid in dmap.iter_ids():
        data = repo.chunks.path_of(cid).read_bytes()
        h = blob.parse_header(data, "")
        body = data[blob.HEADER_LEN :]
        plain = dctx.decompress(body, max_output_size=h.raw_len) if h.compressed else body
        blake3.blake3(plain, max_threads=1).digest()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(all_cpus)[0]})
    work = Path(tempfile.mkdtemp(prefix="repo-restore-", dir=args.dir))
    try:
        write_image(work / "img", args.mib)
        repo = Repository.init(work / "repo", chunk_size=MiB, compression_level=1)
        pid = import_disk(repo, "bench", 2000, work / "img").point_id
        (work / "img").unlink()
        baseline(repo, pid)  # warm the page cache
        t_base = min(baseline(repo, pid) for _ in range(2))
        t_r: dict[int, float] = {}
        for workers in (0, 2):
            if workers:  # decode threads may use the second core
                os.sched_setaffinity(0, all_cpus)
            t_rest = []
            for _ in range(2):
                out = work / "out.raw"
                t0 = time.perf_counter()
                restore_disk(repo, pid, 2000, out, workers=workers)
                t_rest.append(time.perf_counter() - t0)
                out.unlink()
            t_r[workers] = min(t_rest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = args.mib * MiB
    print(
        f"{args.mib} MiB mixed, one core: baseline read+decompress+hash {size / t_base / MiB:.0f}"
        f" MiB/s; restore inline (1 core) {size / t_r[0] / MiB:.0f} MiB/s (ratio"
        f" {t_base / t_r[0]:.2f}); restore with 2 decode threads {size / t_r[2] / MiB:.0f}"
        f" MiB/s (ratio {t_base / t_r[2]:.2f})"
    )


if __name__ == "__main__":
    main()
