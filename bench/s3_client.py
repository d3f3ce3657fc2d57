"""Which S3 client for repository/s3_storage.py: botocore (boto3) vs obstore, on the real
lab RGW, in one run.

    .venv/bin/python -m bench.s3_client [--rounds 2] [--big-mib 8,32] [--big-total-mib 256]
                                        [--small-kib 16] [--small-n 300]

Starts (or reuses) the lab's gateway (lab/ceph_rgw.py, memstore), makes a bucket per
client, then per round and client, in alternating order: PUT then GET of objects of
each big size (``--big-total-mib`` in all per size), and PUT then GET of ``--small-n``
small objects; one stream, as one writer thread writes its packs. Reports MiB/s (wall),
this process's CPU seconds (obstore's Rust threads included) and small-object ops/s,
plus the load average. Each client's bucket is removed after its run: the memstore OSD
keeps everything in RAM (4 GiB), and a full OSD makes RGW block writes, not refuse
them. A third row is S3Storage itself (botocore under it): what the storage layer adds.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import obstore
from obstore.store import S3Store

from lab import ceph_rgw
from repository.s3_client import make_client
from repository.s3_config import S3Location
from repository.s3_storage import S3Storage
from tests.rgw import drop_bucket

MiB = 1 << 20
Put = Callable[[str, bytes], None]
Get = Callable[[str], bytes]


def _boto(loc: S3Location) -> tuple[Put, Get]:
    c = make_client(loc)

    def put(key: str, data: bytes) -> None:
        c.put_object(Bucket=loc.bucket, Key=key, Body=data)

    def get(key: str) -> bytes:
        return c.get_object(Bucket=loc.bucket, Key=key)["Body"].read()

    return put, get


def _obstore(loc: S3Location) -> tuple[Put, Get]:
    creds = loc.credentials()
    store = S3Store(
        loc.bucket,
        endpoint=loc.endpoint,
        region=loc.region,
        access_key_id=creds.access_key,
        secret_access_key=creds.secret_key,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def put(key: str, data: bytes) -> None:
        # one PUT, as the others: by default obstore sends 8 MiB and up as a multipart
        # upload of 5 MiB parts, two at once
        obstore.put(store, key, data, use_multipart=False)

    def get(key: str) -> bytes:
        return bytes(obstore.get(store, key).bytes())

    return put, get


def _storage(loc: S3Location) -> tuple[Put, Get]:
    s = S3Storage(loc)
    return (lambda k, d: s.write(k, [d])), s.read


CLIENTS: dict[str, Callable[[S3Location], tuple[Put, Get]]] = {
    "botocore": _boto,
    "obstore": _obstore,
    "S3Storage (botocore)": _storage,
}


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _put_all(put: Put, keys: list[str], data: list[bytes]) -> None:
    for i, k in enumerate(keys):
        put(k, data[i % len(data)])


def _get_all(get: Get, keys: list[str]) -> None:
    for k in keys:
        get(k)


def run_client(
    put: Put, get: Get, sizes: list[int], total: int, small: int, n_small: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    for size in sizes:
        count = max(1, total // size)
        data = [os.urandom(size) for _ in range(min(count, 4))]
        keys = [f"big{size >> 20}/{i}" for i in range(count)]
        w, c = _timed(lambda d=data, ks=keys: _put_all(put, ks, d))  # type: ignore[misc]
        out[f"put{size >> 20}_mibs"], out[f"put{size >> 20}_cpu"] = count * size / MiB / w, c
        w, c = _timed(lambda ks=keys: _get_all(get, ks))  # type: ignore[misc]
        out[f"get{size >> 20}_mibs"], out[f"get{size >> 20}_cpu"] = count * size / MiB / w, c
    blob = os.urandom(small)
    keys = [f"small/{i:05d}" for i in range(n_small)]
    w, c = _timed(lambda: _put_all(put, keys, [blob]))
    out["small_put_ops"], out["small_put_cpu"] = n_small / w, c
    w, c = _timed(lambda: _get_all(get, keys))
    out["small_get_ops"], out["small_get_cpu"] = n_small / w, c
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--big-mib", default="8,32")
    ap.add_argument("--big-total-mib", type=int, default=256)
    ap.add_argument("--small-kib", type=int, default=16)
    ap.add_argument("--small-n", type=int, default=300)
    ap.add_argument("--data-dir", type=Path, default=ceph_rgw.DEFAULT_DIR)
    args = ap.parse_args()
    info = ceph_rgw.start(args.data_dir)
    sizes = [int(x) * MiB for x in args.big_mib.split(",")]
    load0 = os.getloadavg()
    print(f"gateway {info.endpoint} ({info.objectstore}); load before {load0[0]:.2f}")
    base = S3Location(
        endpoint=info.endpoint,
        bucket="unused",
        region=info.region,
        credentials_file=Path(info.credentials_file),
        part_size=64 * MiB,  # one PUT per object here, as for the raw clients
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    order = list(CLIENTS)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else reversed(order):
            loc = S3Location(**{**base.__dict__, "bucket": f"bench-{uuid.uuid4().hex[:12]}"})
            bucket = S3Storage(loc)
            bucket.create_bucket()
            put, get = CLIENTS[name](loc)
            res = run_client(
                put, get, sizes, args.big_total_mib * MiB, args.small_kib << 10, args.small_n
            )
            results[name].append(res)
            drop_bucket(bucket)  # memstore holds it all in RAM: a full OSD blocks writes
            print(
                f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
                flush=True,
            )
    load1 = os.getloadavg()
    print(f"load average after {load1[0]:.2f} (1 min), {load1[1]:.2f} (5 min)")
    keys = list(next(iter(results.values()))[0])
    print("| client | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, runs in results.items():
        best = {k: (max if not k.endswith("cpu") else min)(x[k] for x in runs) for k in keys}
        print(f"| {name} | " + " | ".join(f"{best[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
