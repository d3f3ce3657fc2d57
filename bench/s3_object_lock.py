"""What S3 Object Lock costs a repository on the lab's RGW: the same writes, creates and
deletes through S3Storage on a plain bucket and through LockedS3Storage on a bucket with
Object Lock (GOVERNANCE, one day), in one run; and the retention extension per object.

    .venv/bin/python -m bench.s3_object_lock [--packs 16] [--small 200]

- packs: ``--packs`` objects of 8 MiB (one PUT each) and as many of 12 MiB (multipart,
  5 MiB parts: the locked one adds a PutObjectRetention after completion);
- small: ``--small`` objects of 4 KiB under points/ (a point's meta and maps: one locked
  PUT each) and as many ``create`` calls under locks/ (locked: PUT, version listing);
- delete: the small unlocked objects (plain: one DELETE; locked: a version listing and a
  DELETE per version);
- extend: a HEAD and a PutObjectRetention per object (what the extension does for an
  object it extends).
Reports wall seconds, this process's CPU seconds and the ratio locked / plain; the load
average before and after. Both buckets are removed after the run (the governance bypass
empties the locked one).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lab import ceph_rgw
from repository.s3_config import MIN_PART, S3Location
from repository.s3_object_lock import LockedS3Storage, LockPolicy
from repository.s3_storage import S3Storage
from tests.rgw import drop_bucket

MiB = 1 << 20


def timed(n: int, fn: Callable[[int], object]) -> tuple[float, float]:
    """Wall and CPU seconds of fn(0) .. fn(n - 1)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t0, time.process_time() - c0


def empty_locked(storage: S3Storage) -> None:
    client, bucket = storage._client, storage.loc.bucket
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(
                Bucket=bucket,
                Key=v["Key"],
                VersionId=v["VersionId"],
                BypassGovernanceRetention=True,
            )
    client.delete_bucket(Bucket=bucket)


def workload(s: S3Storage, packs: int, small: int) -> dict[str, tuple[float, float]]:
    big8, big12, tiny = os.urandom(8 * MiB), os.urandom(12 * MiB), os.urandom(4096)
    out = {
        "PUT 8 MiB packs": timed(packs, lambda i: s.write(f"packs/00/{i:032x}", [big8])),
        "multipart 12 MiB packs": timed(packs, lambda i: s.write(f"packs/01/{i:032x}", [big12])),
        "PUT 4 KiB points/": timed(small, lambda i: s.write(f"points/vm/p{i}/meta", [tiny])),
        "create 4 KiB locks/": timed(small, lambda i: s.create(f"locks/c{i}", [tiny])),
        "delete 4 KiB locks/": timed(small, lambda i: s.delete(f"locks/c{i}")),
    }
    if isinstance(s, LockedS3Storage):
        locked = s

        def extend(i: int) -> None:
            name = f"points/vm/p{i}/meta"
            vid = locked.versions(name)[0].version_id
            locked.retain_until(name, vid)
            locked.set_retention(name, vid, locked.policy.until(time.time() + 60))

        out["extend 4 KiB points/ (HEAD + retention)"] = timed(small, extend)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packs", type=int, default=16)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--data-dir", type=Path, default=ceph_rgw.DEFAULT_DIR)
    args = ap.parse_args()
    info = ceph_rgw.start(args.data_dir)
    loc = S3Location(
        endpoint=info.endpoint,
        bucket=f"bench-{uuid.uuid4().hex[:12]}",
        region=info.region,
        credentials_file=Path(info.credentials_file),
        part_size=MIN_PART,
    )
    plain = S3Storage(loc)
    plain.create_bucket()
    lock_loc = S3Location(**{**loc.__dict__, "bucket": f"bench-ol-{uuid.uuid4().hex[:12]}"})
    locked = LockedS3Storage(lock_loc, LockPolicy("GOVERNANCE", 86400))
    locked._client.create_bucket(Bucket=lock_loc.bucket, ObjectLockEnabledForBucket=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        base = workload(plain, args.packs, args.small)
        lock = workload(locked, args.packs, args.small)
    finally:
        drop_bucket(plain)
        empty_locked(locked)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| operation | plain wall s | plain CPU | locked wall s | locked CPU | locked/plain |")
    print("|---|---|---|---|---|---|")
    for op, (lw, lc) in lock.items():
        bw, bc = base.get(op, (float("nan"), float("nan")))
        ratio = lw / bw if op in base else float("nan")
        print(f"| {op} | {bw:.2f} | {bc:.2f} | {lw:.2f} | {lc:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
