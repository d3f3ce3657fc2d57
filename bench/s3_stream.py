"""A writer's chunk store on the lab's RGW with an open pack's parts streamed as it
fills (stream_part_mib) vs uploaded whole at its seal (0), alternating in one run.

    .venv/bin/python -m bench.s3_stream [--mib 200] [--rate 40] [--rounds 3] [--part-mib 16]

Per round and mode: a fresh repository (packs of 128 MiB, S3 part size 64 MiB), ``--mib``
MiB of incompressible 1 MiB blobs stored as a writer does (batches of 4, fdatasync'd
each, paced at ``--rate`` MiB/s like chunks arriving from proxies; 0 = as fast as the
disk), then ``flush`` (what a point commit waits for first). Reports the store phase's
wall, the flush's wall (the job's tail), this process's CPU seconds in all, the bytes
sent as parts before the flush, and the load average. RGW: $VMBACKUP_BENCH_RGW_DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from lab import ceph_rgw
from lab.demo_s3 import s3_config_file
from repository.repository import Repository
from repository.s3_config import load_s3_config
from repository.s3_pack_store import S3PackStore
from repository.s3_repo_storage import S3RepoStorage
from tests.rgw import drop_bucket

MiB = 1 << 20


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def one(work: Path, base_cfg: Path, bucket: str, part_mib: int, args: argparse.Namespace) -> dict:
    cfg = work / f"s3-{part_mib}.toml"
    cfg.write_text(base_cfg.read_text() + f"stream_part_mib = {part_mib}\n")
    cache = work / f"cache-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/r{uuid.uuid4().hex[:8]}"
    repo = Repository.init(url, chunk_size=MiB, packs=True, s3_config=cfg, cache_dir=cache)
    store = repo.chunks
    assert isinstance(store, S3PackStore)
    blobs = [os.urandom(MiB) for _ in range(8)]
    c0, t0 = cpu(), time.monotonic()
    for i in range(0, args.mib, 4):
        batch = [(os.urandom(32), [blobs[(i + k) % 8]]) for k in range(4)]
        store.write_many(batch)
        if args.rate:
            due = t0 + (i + 4) / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
    t1 = time.monotonic()
    before = store.storage.part_bytes
    store.flush()
    t2 = time.monotonic()
    row = {
        "stream_mib": part_mib,
        "store_s": t1 - t0,
        "flush_s": t2 - t1,
        "cpu_s": cpu() - c0,
        "streamed_mib": before / MiB,
        "load": f"{os.getloadavg()[0]:.1f}",
    }
    repo.close()
    shutil.rmtree(cache, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--rate", type=float, default=40.0, help="MiB/s stored (0: unpaced)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=16)
    args = ap.parse_args(argv)
    rgw_dir = Path(os.environ.get("VMBACKUP_BENCH_RGW_DIR") or ceph_rgw.DEFAULT_DIR)
    work = Path(tempfile.mkdtemp(prefix="s3-stream-", dir="/var/tmp"))
    info = ceph_rgw.start(rgw_dir)
    rows = []
    try:
        base_cfg = s3_config_file(work, info)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        storage = S3RepoStorage(load_s3_config(base_cfg, f"s3://{bucket}"))
        storage.create_bucket()
        try:
            for rnd in range(args.rounds):
                modes = (0, args.part_mib) if rnd % 2 == 0 else (args.part_mib, 0)
                for part in modes:
                    rows.append({"round": rnd} | one(work, base_cfg, bucket, part, args))
                    print(rows[-1], flush=True)
        finally:
            drop_bucket(storage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not info.reused:
            ceph_rgw.stop(rgw_dir)
    print(f"\n{args.mib} MiB at {args.rate:g} MiB/s, packs of 128 MiB, {args.rounds} rounds")
    print("| stream_part_mib | round | store s | flush s | CPU s | streamed MiB | load |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["stream_mib"], r["round"])):
        print(
            f"| {r['stream_mib']} | {r['round']} | {r['store_s']:.2f} | {r['flush_s']:.2f}"
            f" | {r['cpu_s']:.2f} | {r['streamed_mib']:.0f} | {r['load']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
