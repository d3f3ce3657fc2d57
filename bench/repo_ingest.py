"""Writer ingest rate vs bare BLAKE3 + zstd-1 + write of the same data, one core.

    .venv/bin/python -m bench.repo_ingest [--mib 512]

Data: 1 MiB chunks, mixed (20 % zeros, 20 % duplicates, 30 % text, 30 % random),
read from a page-cached image. Baseline, per chunk: BLAKE3, zstd-1, append to one
file, one fsync at the end. Measured against it, in the same run:
* import: `import_disk`, inline and with its 2 hash/compress threads (on the one
  core they only overlap the fsyncs), the better of the two (zero check, hash,
  dedup, zstd-1, blob, temp+fsync+rename, dir fsync per 8-chunk batch, map and
  point commit);
* writer: `Repository.store_chunks` on proxy-made batches of 4 chunks (decompress,
  re-hash to verify the id, dedup, blob, durable write) - the writer service's work
  per ChunkBatch, without the broker - on chunk files (format 2) and on packs (format 3,
  32 MiB packs), each with its wall and CPU seconds and the files it left.
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
from common.chunk import compress, is_zero
from repository.import_disk import import_disk
from repository.repository import Repository


def baseline(image: Path, out: Path) -> float:
    cctx = zstandard.ZstdCompressor(level=1)
    t0 = time.perf_counter()
    with open(image, "rb", buffering=0) as src, open(out, "wb") as dst:
        while chunk := src.read(MiB):
            blake3.blake3(chunk, max_threads=1).digest()
            dst.write(cctx.compress(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    return time.perf_counter() - t0


def run(mib: int, workdir: Path) -> dict[str, float]:
    image = workdir / "image.raw"
    write_image(image, mib)
    with open(image, "rb") as fh:  # warm the page cache for every contender alike
        while fh.read(16 * MiB):
            pass
    t_base = min(baseline(image, workdir / f"base{i}.out") for i in range(2))
    t_imp = {}
    for workers in (0, 2):
        repo = Repository.init(workdir / f"repo-{workers}", chunk_size=MiB, compression_level=1)
        t0 = time.perf_counter()
        import_disk(repo, "bench", 2000, image, workers=workers)
        t_imp[workers] = time.perf_counter() - t0
    t_import = min(t_imp.values())
    # proxy side (not timed): batches as a proxy would send them
    batches: list[list[tuple[bytes, int, bool, bytes]]] = [[]]
    with open(image, "rb") as fh:
        while chunk := fh.read(MiB):
            if is_zero(chunk):
                continue
            payload, comp = compress(chunk, 1)
            batches[-1].append((blake3.blake3(chunk).digest(), len(chunk), comp, payload))
            if len(batches[-1]) == 4:
                batches.append([])
    size = mib * MiB
    layouts: dict[str, float] = {}
    for name, packs in (("files", False), ("packs", True)):
        repo2 = Repository.init(
            workdir / f"repo-{name}", chunk_size=MiB, compression_level=1, packs=packs
        )
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            repo2.store_chunks(b)
        repo2.close()  # packs: the last one sealed, as a writer does when it stops
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        layouts[f"{name}_mib_s"] = size / wall / MiB
        layouts[f"{name}_ratio"] = t_base / wall
        layouts[f"{name}_cpu_s"] = cpu
        layouts[f"{name}_wall_s"] = wall
        layouts[f"{name}_files"] = sum(len(f) for _, _, f in os.walk(repo2.path))
    t_writer = layouts["files_wall_s"]
    return {
        **layouts,
        "mib": mib,
        "baseline_s": t_base,
        "baseline_mib_s": size / t_base / MiB,
        "import_mib_s": size / t_import / MiB,
        "import_inline_ratio": t_base / t_imp[0],
        "import_2thr_ratio": t_base / t_imp[2],
        "writer_mib_s": size / t_writer / MiB,
        "import_ratio": t_base / t_import,
        "writer_ratio": t_base / t_writer,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512, help="data size in MiB")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    work = Path(tempfile.mkdtemp(prefix="repo-ingest-", dir=args.dir))
    try:
        r = run(args.mib, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{r['mib']} MiB mixed, one core: baseline {r['baseline_mib_s']:.0f} MiB/s; "
        f"import {r['import_mib_s']:.0f} MiB/s (ratio {r['import_ratio']:.2f}; inline"
        f" {r['import_inline_ratio']:.2f}, 2 threads {r['import_2thr_ratio']:.2f}); "
        f"writer store_chunks {r['writer_mib_s']:.0f} MiB/s (ratio {r['writer_ratio']:.2f})"
    )
    for name in ("files", "packs"):
        print(
            f"  writer on {name}: {r[f'{name}_mib_s']:.0f} MiB/s, ratio {r[f'{name}_ratio']:.2f},"
            f" wall {r[f'{name}_wall_s']:.2f} s, CPU {r[f'{name}_cpu_s']:.2f} s,"
            f" {r[f'{name}_files']:.0f} files in the repository"
        )
    print(f"  baseline wall {r['baseline_s']:.2f} s; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
