"""`repo copy` (repository/copy.py): what writing blobs as stored saves, and what a second
copy of an unchanged repository costs.

    .venv/bin/python -m bench.repo_copy [--mib 512] [--chunk-mib 1]

One source repository (chunk files, zstd 3) of one VM disk of half text-like, half random
data; then, each into an empty target of packs, in the same run:

* ``as stored``: plain -> plain, the source's blobs written unchanged;
* ``recompress`` (the baseline): plain -> plain with ``recompress``, every chunk decoded
  and compressed again at the target's level;
* ``encrypted``: plain -> encrypted (decoded, hashed with the target's id key,
  compressed, encrypted);
* ``second copy``: the as-stored copy again (nothing to send).

Each: wall seconds, CPU seconds of this process (user + system), chunks and bytes sent,
and the ratio of wall and CPU to the baseline's.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from repository.copy import copy_points
from repository.copy_result import CopyResult
from repository.copy_selection import CopyFilter
from repository.import_disk import import_disk
from repository.repository import Repository


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], CopyResult]) -> tuple[float, float, CopyResult]:
    w, c = time.perf_counter(), cpu()
    res = fn()
    return time.perf_counter() - w, cpu() - c, res


def source_repo(tmp: Path, mib: int, chunk_mib: int) -> Repository:
    """A repository at ``tmp/a`` holding one disk of ``mib`` MiB, chunks alternately
    random and base64 text (compressible), the same bytes every run; closed."""
    cs = chunk_mib << 20
    rnd = random.Random(3)
    img = tmp / "disk.img"
    with img.open("wb") as fh:
        for i in range(mib // chunk_mib):
            fh.write(base64.b64encode(rnd.randbytes(cs * 3 // 4)) if i % 2 else rnd.randbytes(cs))
    src = Repository.init(tmp / "a", chunk_size=cs)
    import_disk(src, "vm", 2000, img)
    src.close()
    img.unlink()
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512, help="disk size in MiB")
    ap.add_argument("--chunk-mib", type=int, default=1)
    args = ap.parse_args()
    cs = args.chunk_mib << 20
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        src = source_repo(tmp, args.mib, args.chunk_mib)
        every = CopyFilter()

        def target(name: str, passphrase: str | None = None) -> Repository:
            return Repository.init(
                tmp / name, chunk_size=cs, passphrase=passphrase, kdf_n=1024, packs=True
            )

        def closing(dst: Repository, **kw: bool) -> Callable[[], CopyResult]:
            def run() -> CopyResult:
                r = copy_points(src, dst, every, **kw)
                dst.close()
                return r

            return run

        stored = target("b")
        runs = [
            ("recompress (baseline)", closing(target("c"), recompress=True)),
            ("as stored", closing(stored)),
            ("encrypted target", closing(target("e", "bench"))),
            ("second copy", closing(stored)),
        ]
        rows = [(name, *timed(fn)) for name, fn in runs]
        base_w, base_c = rows[0][1], rows[0][2]
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
        print(f"{args.mib} MiB disk, {args.chunk_mib} MiB chunks")
        head = ("copy", "wall s", "CPU s", "chunks sent", "MiB sent", "as stored", "wall ratio")
        print("| " + " | ".join((*head, "CPU ratio")) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for name, w, c, r in rows:
            s = r.stats
            print(
                f"| {name} | {w:.2f} | {c:.2f} | {s.chunks_sent} | {s.bytes_sent / 2**20:.1f} |"
                f" {s.blobs_as_stored} | {w / base_w:.2f} | {c / base_c:.2f} |"
            )


if __name__ == "__main__":
    main()
