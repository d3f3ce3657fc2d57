"""`vmbackup export` read speed: a sequential copy of the export against `vmbackup restore`
of the same disk, and random 4 KiB read latency with a cold and a warm cache.

    .venv/bin/python -m bench.export_read [--mib 512] [--repeat 3] [--reads 1000]

A mixed image (bench/repo_data.py: 20 % zeros, 20 % duplicates, 30 % text, 30 % random;
1 MiB chunks, zstd 3) is imported. Then, alternating, ``--repeat`` rounds of:

- restore: `vmbackup restore --no-fsync` (a process, as an operator runs it) to a raw file;
- export: `vmbackup export`'s nbdkit started (export/nbdkit_server.py, a fresh cold cache),
  then `nbdcopy` of its URI (Unix socket) to a raw file; the time is nbdcopy's only.

Also `restore_disk` in this process (no command start: the core rate to compare with
nbdcopy's time) and the export with nbdkit's start and stop (to compare with the command).
All outputs are compared with the image. CPU s: user+sys of the restore command, of this
process for restore_disk, of nbdkit and nbdcopy for the export. Ratio = restore time /
export time (goal >= 0.8). Latency: one libnbd client on a fresh export; cold: one 4 KiB
read at a random offset of each distinct data chunk (up to ``--reads``), in random order,
each reading and decoding its chunk; warm: the same reads again, the cache holding the
whole disk.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.repo_data import MiB, write_image
from export.nbdkit_server import ExportSpec, start_export
from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def restore_round(repo: Path, pid: str, out: Path) -> tuple[float, float]:
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vmbackup", "restore", "--repo", str(repo), "--point", pid,
         "--disk", "2000", "--out", str(out), "--no-fsync"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0, _children_cpu() - cpu0


def restore_inline(repo: Repository, pid: str, out: Path) -> tuple[float, float]:
    """restore_disk in this process: the restore without the command's start."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    restore_disk(repo, pid, 2000, out, sync=False)
    return time.perf_counter() - t0, time.process_time() - cpu0


def export_round(
    repo: Path, pid: str, out: Path, sock: Path, cache_mib: int
) -> tuple[float, float, float]:
    """(nbdcopy's time, nbdkit start + copy + stop, CPU of nbdkit and nbdcopy)."""
    cpu0, t_all = _children_cpu(), time.perf_counter()
    spec = ExportSpec(repo, pid, 2000, socket=sock, cache_mib=cache_mib)
    with start_export(spec) as ex:
        t0 = time.perf_counter()
        subprocess.run(["nbdcopy", ex.uri, str(out)], check=True)
        t = time.perf_counter() - t0
    return t, time.perf_counter() - t_all, _children_cpu() - cpu0  # nbdkit reaped by now


def latency(
    repo: Repository, path: Path, pid: str, sock: Path, reads: int
) -> dict[str, list[float]]:
    """Cold: the first read of each distinct data chunk (it reads and decodes the chunk);
    warm: the same reads again, the cache holding the whole disk."""
    import nbd

    dmap = repo.load_map(pid, 2000)
    first: dict[bytes, int] = {}
    for i, cid in dmap.iter_ids():
        first.setdefault(cid, i)
    rnd = random.Random(5)
    chunks = list(first.values())
    rnd.shuffle(chunks)
    cs = dmap.chunk_size
    offsets = [i * cs + rnd.randrange(cs // 4096) * 4096 for i in chunks[:reads]]
    spec = ExportSpec(path, pid, 2000, socket=sock, cache_mib=dmap.capacity // MiB + 16)
    out: dict[str, list[float]] = {"cold": [], "warm": []}
    with start_export(spec) as ex:
        h = nbd.NBD()
        h.connect_uri(ex.uri)
        for phase in ("cold", "warm"):
            for off in offsets:
                t0 = time.perf_counter()
                h.pread(4096, off)
                out[phase].append(time.perf_counter() - t0)
        h.shutdown()
    return out


def _same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=512, help="image size (1 MiB chunks)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reads", type=int, default=1000, help="random 4 KiB reads per phase")
    ap.add_argument("--cache-mib", type=int, default=128, help="export cache, sequential runs")
    ap.add_argument("--dir", default=None, help="parent of the temp dir")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.dir))
    try:
        img = work / "img"
        write_image(img, args.mib)
        repo_path = work / "repo"
        repo = Repository.init(repo_path)
        pid = import_disk(repo, "bench", 2000, img).point_id
        size = img.stat().st_size
        load0 = os.getloadavg()
        kinds = ("restore_disk", "export nbdcopy", "vmbackup restore", "export start+copy+stop")
        rows: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for kind in ("inline", "export", "command"):
                out = work / f"{kind}.raw"
                if kind == "inline":
                    rows["restore_disk"].append(restore_inline(repo, pid, out))
                elif kind == "command":
                    rows["vmbackup restore"].append(restore_round(repo_path, pid, out))
                else:
                    t, t_all, cpu = export_round(repo_path, pid, out, work / "s", args.cache_mib)
                    rows["export nbdcopy"].append((t, cpu))
                    rows["export start+copy+stop"].append((t_all, cpu))
                assert _same(out, img), f"{kind}: output differs from the image"
                out.unlink()
        lat = latency(repo, repo_path, pid, work / "s", args.reads)
        load1 = os.getloadavg()
        print(f"image {args.mib} MiB, 1 MiB chunks, mixed; load {load0[0]:.2f} -> {load1[0]:.2f}")
        print("| run | best s | median s | MB/s (best) | CPU s (median) |")
        print("|---|---|---|---|---|")
        for kind, rs in rows.items():
            ts, cs = [r[0] for r in rs], [r[1] for r in rs]
            print(
                f"| {kind} | {min(ts):.2f} | {statistics.median(ts):.2f} |"
                f" {size / min(ts) / 1e6:.0f} | {statistics.median(cs):.2f} |"
            )
        for a, b in (
            ("restore_disk", "export nbdcopy"),
            ("vmbackup restore", "export start+copy+stop"),
        ):
            ratios = [r[0] / e[0] for r, e in zip(rows[a], rows[b], strict=True)]
            best = min(r[0] for r in rows[a]) / min(e[0] for e in rows[b])
            print(
                f"ratio {a} time / {b} time: best {best:.2f}, per round"
                f" {min(ratios):.2f}-{max(ratios):.2f} (goal >= 0.8)"
            )
        for phase, xs in lat.items():
            q = statistics.quantiles(xs, n=100)
            print(
                f"random 4 KiB reads, {phase}: p50 {q[49] * 1e3:.3f} ms, p99 {q[98] * 1e3:.3f} ms,"
                f" mean {statistics.mean(xs) * 1e3:.3f} ms ({len(xs)} reads)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
