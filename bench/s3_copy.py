"""`repo copy` with S3 on either side (the lab's RGW), against a local -> local copy in the
same run: what a second copy into, out of or between buckets costs.

    .venv/bin/python -m bench.s3_copy [--mib 256] [--chunk-mib 1] [--data-dir DIR]

One local source (packs, zstd 3) of one VM disk, half text-like, half random; then, in
one run, each into an empty target (packs of 32 MiB):

* ``local -> local`` (the baseline);
* ``local -> S3``, and that copy again (``second copy``: nothing to send);
* ``S3 -> S3``: the S3 copy into another bucket (chunks read with ranged GETs);
* ``S3 -> local``, and again into another directory reading one chunk at a time
  (``copy.READERS = 1``: what the copy did before it kept several GETs in flight).

Each: wall seconds, CPU seconds of this process (user + system), chunks and MiB sent,
the copy's S3 requests (after both repositories are open) that write (PutObject,
UploadPart, CopyObject: counted on the real clients through botocore's event hooks) and
that read (GetObject), and the ratio of
wall and CPU to the baseline's. The gateway is started if it is not running (and left
running); each bucket is removed after the run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.repo_copy import source_repo
from lab import ceph_rgw
from repository import copy
from repository.copy import copy_points
from repository.copy_result import CopyResult
from repository.copy_selection import CopyFilter
from repository.repository import Repository
from repository.s3_config import S3Location
from repository.s3_storage import S3Storage
from tests.rgw import drop_bucket

MiB = 1 << 20
WRITES = ("PutObject", "UploadPart", "CopyObject")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Requests:
    """S3 requests of the repositories it watches, by operation."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self._seen: set[int] = set()

    def watch(self, repo: Repository) -> Repository:
        # repositories on one endpoint with the same keys share a client (s3_client.py):
        # its requests counted once
        if isinstance(repo.storage, S3Storage) and id(repo.storage._client) not in self._seen:
            self._seen.add(id(repo.storage._client))
            events = repo.storage._client.meta.events
            for op in (*WRITES, "GetObject"):
                events.register(f"before-call.s3.{op}", self._count(op))
        return repo

    def _count(self, op: str) -> Callable[..., None]:
        def count(**_kw: object) -> None:
            self.ops[op] += 1

        return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256, help="disk size in MiB")
    ap.add_argument("--chunk-mib", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=ceph_rgw.DEFAULT_DIR)
    args = ap.parse_args()
    info = ceph_rgw.start(args.data_dir)
    cs = args.chunk_mib * MiB
    buckets: list[S3Storage] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        cfg = tmp / "s3.toml"
        cfg.write_text(
            f'endpoint = "{info.endpoint}"\nregion = "{info.region}"\n'
            f'credentials_file = "{info.credentials_file}"\n'
        )

        def bucket() -> str:
            loc = S3Location(
                endpoint=info.endpoint,
                bucket=f"bench-{uuid.uuid4().hex[:16]}",
                region=info.region,
                credentials_file=Path(info.credentials_file),
            )
            s = S3Storage(loc)
            s.create_bucket()
            buckets.append(s)
            return f"s3://{loc.bucket}/repo"

        source_repo(tmp, args.mib, args.chunk_mib)  # at tmp/a
        s3_b, s3_c = bucket(), bucket()

        def new(where: str) -> Repository:
            if where.startswith("s3://"):
                return Repository.init(
                    where, chunk_size=cs, pack_size=32 * MiB, s3_config=cfg,
                    cache_dir=tmp / f"cache-{where[5:].replace('/', '-')}",
                )  # fmt: skip
            return Repository.init(tmp / where, chunk_size=cs, pack_size=32 * MiB)

        def opened(where: str) -> Repository:
            if where.startswith("s3://"):
                cache = tmp / f"cache-{where[5:].replace('/', '-')}"
                return Repository.open(where, s3_config=cfg, cache_dir=cache)
            return Repository.open(tmp / where)

        readers = copy.READERS
        runs = [
            ("local -> local (baseline)", "a", "b", True, readers),
            ("local -> S3", "a", s3_b, True, readers),
            ("second copy local -> S3", "a", s3_b, False, readers),
            ("S3 -> S3 (other bucket)", s3_b, s3_c, True, readers),
            ("S3 -> local", s3_c, "d", True, readers),
            ("S3 -> local, 1 GET at a time", s3_c, "e", True, 1),
        ]
        rows = []
        try:
            for name, frm, to, fresh, n_readers in runs:
                copy.READERS = n_readers  # GETs in flight for a source on S3
                source, target = opened(frm), new(to) if fresh else opened(to)
                req = Requests()  # the copy's requests, not the opens'
                req.watch(source), req.watch(target)
                w, c = time.perf_counter(), cpu()
                res: CopyResult = copy_points(source, target, CopyFilter())
                target.close()
                rows.append((name, time.perf_counter() - w, cpu() - c, res, req.ops))
        finally:
            for s in buckets:
                drop_bucket(s)
    base_w, base_c = rows[0][1], rows[0][2]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.mib} MiB disk, {args.chunk_mib} MiB chunks, gateway {info.endpoint}")
    print("| copy | wall s | CPU s | chunks sent | MiB sent | S3 writes | S3 GETs | wall ratio"
          " | CPU ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, w, c, r, ops in rows:
        st = r.stats
        writes = sum(ops[o] for o in WRITES)
        print(
            f"| {name} | {w:.2f} | {c:.2f} | {st.chunks_sent} | {st.bytes_sent / MiB:.1f} |"
            f" {writes} | {ops['GetObject']} | {w / base_w:.2f} | {c / base_c:.2f} |"
        )


if __name__ == "__main__":
    main()
