"""Pack-sized objects through S3Storage on the lab's RGW, against the local directory, in
one run: what a repository on S3 would write.

    .venv/bin/python -m bench.s3_packs [--gib 1] [--pack-mib 32] [--threads 1,4]

Writes ``--gib`` GiB as packs of ``--pack-mib`` MiB (pack_store.DEFAULT_PACK_SIZE:
32 objects per GiB) with 1 and 4 writer threads, through S3Storage as one PUT per pack
(part size above the pack: S3Storage's default of 64 MiB) and as multipart with 16 MiB
parts, then reads them back; the same through LocalDirectoryStorage (temp + fsync +
rename) on /var/tmp as the baseline. Reports MiB/s (wall), this process's CPU seconds,
objects written per GiB and the load average. Each bucket is removed after its run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import ceph_rgw
from repository.local_storage import LocalDirectoryStorage
from repository.pack_store import DEFAULT_PACK_SIZE
from repository.s3_config import S3Location
from repository.s3_storage import S3Storage
from repository.storage import Storage
from tests.rgw import drop_bucket

MiB = 1 << 20


def run(storage: Storage, packs: int, data: list[bytes], threads: int) -> dict[str, float]:
    names = [f"packs/{i % 256:02x}/{i:08x}.pack" for i in range(packs)]

    def timed(fn: Callable[[int], object]) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, range(packs)))
        return time.perf_counter() - t0, time.process_time() - c0

    w_wall, w_cpu = timed(lambda i: storage.write(names[i], [data[i % len(data)]]))
    r_wall, r_cpu = timed(lambda i: storage.read(names[i]))
    mib = packs * len(data[0]) / MiB
    return {"put_mibs": mib / w_wall, "put_cpu": w_cpu, "get_mibs": mib / r_wall, "get_cpu": r_cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--pack-mib", type=int, default=DEFAULT_PACK_SIZE // MiB)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--data-dir", type=Path, default=ceph_rgw.DEFAULT_DIR)
    args = ap.parse_args()
    info = ceph_rgw.start(args.data_dir)
    size = args.pack_mib * MiB
    packs = max(1, int(args.gib * 1024 * MiB) // size)
    data = [os.urandom(size) for _ in range(4)]
    per_gib = packs / args.gib
    print(f"gateway {info.endpoint}; {packs} packs of {args.pack_mib} MiB")
    print(f"{per_gib:.0f} objects per GiB; load before {os.getloadavg()[0]:.2f}")
    rows: list[tuple[str, int, dict[str, float]]] = []
    for threads in [int(t) for t in args.threads.split(",")]:
        root = Path(tempfile.mkdtemp(prefix="s3-packs-", dir="/var/tmp"))
        try:
            rows.append(
                ("local directory", threads, run(LocalDirectoryStorage(root), packs, data, threads))
            )
        finally:
            shutil.rmtree(root)
        for label, part in (("S3, one PUT", size + MiB), ("S3, 16 MiB parts", 16 * MiB)):
            loc = S3Location(
                endpoint=info.endpoint,
                bucket=f"bench-{uuid.uuid4().hex[:12]}",
                region=info.region,
                credentials_file=Path(info.credentials_file),
                part_size=part,
            )
            s = S3Storage(loc)
            s.create_bucket()
            try:
                rows.append((label, threads, run(s, packs, data, threads)))
            finally:
                drop_bucket(s)  # memstore: everything is in the OSD's RAM
        for label, t, r in rows[-3:]:
            print(
                f"{label}, {t} threads: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                flush=True,
            )
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    print("| storage | threads | PUT MiB/s | PUT CPU s | GET MiB/s | GET CPU s | PUT vs local |")
    print("|---|---|---|---|---|---|---|")
    local = {t: r for label, t, r in rows if label == "local directory"}
    for label, t, r in rows:
        ratio = r["put_mibs"] / local[t]["put_mibs"]
        print(f"| {label} | {t} | {r['put_mibs']:.1f} | {r['put_cpu']:.2f} | {r['get_mibs']:.1f}"
              f" | {r['get_cpu']:.2f} | {ratio:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
