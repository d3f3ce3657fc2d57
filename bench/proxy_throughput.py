"""Proxy throughput per transport, side by side in one run with its baselines.

For each transport (file, nbd via nbdkit): the bare read rate of the disk's allocated data,
the bare BLAKE3 + zstd rate of the same data (pipeline_workers threads), a bare windowed
publish+consume of the bytes that actually had to be sent, and the pipeline end to end into
a real writer (repository_writer.service) on the real broker, with chunk messages transient
and persistent. Also: the bytes sent for a clone of an already backed-up template, and the
peak of the proxy's chunk-memory budget for the whole disk as one task.

    .venv/bin/python -m bench.proxy_throughput [--size-mib 4096]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.amqp import BrokerParams, Consumer, Publisher, ReplyQueue
from common.chunk import chunk_id, compress, is_zero
from common.messages import ChunkBatch
from proxy_worker.budget import MemoryBudget
from proxy_worker.pipeline import PipelineConfig, TaskPipeline
from proxy_worker.settings import NbdSettings, ProxySettings
from proxy_worker.transports.base import DiskReader, DiskSource
from proxy_worker.transports.file import FileTransport
from proxy_worker.transports.nbd import NbdTransport
from proxy_worker.writers import WriterLink
from repository_writer.repository import Repository
from repository_writer.service import WriterService

MiB = 1 << 20
CHUNK = 1 * MiB
SHARDS = 4
LEVEL = 1


def make_disks(root: Path, size: int, seed: int = 1) -> tuple[Path, Path]:
    """template and clone flat files: mixed 1 MiB blocks (25 % template-shared, 20 % text,
    15 % random, 5 % written zeros, rest holes); the clone rewrites 2 % of the blocks."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(3, 9)).hex().encode() for _ in range(500)]
    tpl, clone = root / "tpl/disk-flat.vmdk", root / "clone/disk-flat.vmdk"
    for p in (tpl, clone):
        p.parent.mkdir(parents=True)
    with open(tpl, "wb") as ft, open(clone, "wb") as fc:
        ft.truncate(size)
        fc.truncate(size)
        for off in range(0, size, CHUNK):
            r = rnd.random()
            if r < 0.25:
                data = rnd.randbytes(CHUNK)
            elif r < 0.45:
                line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
                data = (line * (CHUNK // len(line) + 1))[:CHUNK]
                data = (
                    bytes(
                        rnd.randrange(256) if i % 4096 == 0 else b
                        for i, b in enumerate(data[:8192])
                    )
                    + data[8192:]
                )
            elif r < 0.60:
                data = rnd.randbytes(CHUNK)
            elif r < 0.65:
                data = bytes(CHUNK)
            else:
                continue
            for f in (ft, fc):
                f.seek(off)
                f.write(data)
            if rnd.random() < 0.02:
                fc.seek(off)
                fc.write(rnd.randbytes(CHUNK))
    return tpl, clone


def source(path: Path, size: int) -> DiskSource:
    rel = path.parent.name + "/disk.vmdk"
    return DiskSource("vc", "DC0", "esx", "ds", "vm-1", "snapshot-1", f"[ds] {rel}", size)


def chunks_of(r: DiskReader) -> list[tuple[int, int]]:
    out = []
    for e in r.extents(0, r.capacity):
        if e.data:
            start = e.offset - e.offset % CHUNK
            for o in range(start, e.end, CHUNK):
                if not out or out[-1][0] != o:
                    out.append((o, min(CHUNK, r.capacity - o)))
    return out


def bare_read(r: DiskReader) -> tuple[float, int, list[bytes]]:
    ranges = chunks_of(r)
    t0 = time.perf_counter()
    n = 0
    for _, b in r.read_many(ranges):
        n += len(b)
    return time.perf_counter() - t0, n, []


def bare_cpu(r: DiskReader, workers: int) -> tuple[float, int]:
    data = [bytes(b) for _, b in r.read_many(chunks_of(r)[:2048])]
    nz = [d for d in data if not is_zero(d)]

    def work(d: bytes) -> int:
        chunk_id(d)
        return len(compress(d, LEVEL)[0])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, nz))
    return time.perf_counter() - t0, sum(len(d) for d in data)


def bare_publish_consume(params: BrokerParams, nbytes: int, batch: int) -> float:
    n = max(1, nbytes // batch)
    payload = os.urandom(batch)
    got = threading.Event()
    count = [0]

    def handle(_m: object, _d: object) -> None:
        count[0] += 1
        if count[0] >= n:
            got.set()

    cons = Consumer(
        params,
        ["bench.bare"],
        handle,
        prefetch=64,
        workers=1,
        declare=lambda ch: ch.queue_declare("bench.bare", durable=True),
        name="bench-bare",
    ).start()
    cons.ready.wait(30)
    msg = ChunkBatch(
        batch_id="b", task_id="t", reply_to="x", chunks=[(bytes(32), batch, False, payload)]
    )
    with Publisher(params, name="bench-pub") as pub:
        t0 = time.perf_counter()
        futs = [pub.publish("", "bench.bare", msg, persistent=False) for _ in range(n)]
        pub.flush(futs)
        got.wait(600)
        dt = time.perf_counter() - t0
    cons.stop(10)
    return dt


def run_pipeline(
    params: BrokerParams,
    transport: object,
    src: DiskSource,
    persistent: bool,
    budget: MemoryBudget,
    workers: int,
) -> tuple[float, object]:
    pub = Publisher(params, name="bench-proxy")
    replies = ReplyQueue(params, name="bench-proxy-replies")
    link = WriterLink(pub, replies, persistent_chunks=persistent, timeout=120)
    cfg = PipelineConfig(
        chunk_size=CHUNK,
        compression_level=LEVEL,
        n_shards=SHARDS,
        batch_bytes=4 * MiB,
        have_batch=256,
        window_bytes=32 * MiB,
        partial_cap=32 * MiB,
    )
    try:
        with ThreadPoolExecutor(workers) as pool, transport.open(src) as r:  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            st = TaskPipeline(r, link, pool, budget, cfg, uuid.uuid4().hex).run(
                [(0, src.capacity)], src.capacity
            )
            return time.perf_counter() - t0, st
    finally:
        replies.close()
        pub.close()


def rabbitmqctl(*a: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *a], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    vhost = f"bench-proxy-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    params = BrokerParams().with_vhost(vhost)
    try:
        tpl, clone = make_disks(root, size)
        settings = ProxySettings(datastore_mounts={"ds": str(root)}, nbd=NbdSettings(server="file"))
        transports = {"file": FileTransport(settings), "nbd": NbdTransport(settings)}
        rows = []
        for name, t in transports.items():
            with t.open(source(tpl, size)) as r:
                rt, rn, _ = bare_read(r)
            with t.open(source(tpl, size)) as r:
                ct, cn = bare_cpu(r, args.workers)
            for persistent in (False, True):
                repo_dir = root / f"repo-{name}-{persistent}"
                repo = Repository.init(repo_dir, chunk_size=CHUNK, compression_level=LEVEL)
                w = WriterService(
                    repo,
                    params,
                    n_shards=SHARDS,
                    consume_commits=False,
                    name=f"bench-w-{name}-{persistent}",
                ).start()
                budget = MemoryBudget(256 * MiB)
                try:
                    pt, st = run_pipeline(
                        params, t, source(tpl, size), persistent, budget, args.workers
                    )
                    _ct2, st2 = run_pipeline(
                        params, t, source(clone, size), persistent, budget, args.workers
                    )
                finally:
                    w.chunk_consumer.stop(10)
                    w.publisher.close()
                    shutil.rmtree(repo_dir, ignore_errors=True)
                bt = bare_publish_consume(params, st.bytes_sent, 4 * MiB)  # type: ignore[attr-defined]
                rows.append(
                    (
                        name,
                        persistent,
                        rn / rt,
                        cn / ct,
                        st.bytes_sent / bt,
                        size / pt,  # type: ignore[attr-defined]
                        st,
                        st2,
                        budget.peak,
                    )
                )
        print(
            "| transport | chunk msgs persistent | bare read | bare BLAKE3+zstd | "
            "bare publish+consume | pipeline | pipeline / slowest | pipeline per core | "
            "clone bytes sent / allocated | budget peak MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, pers, rr, cr, br, pr, st, st2, peak in rows:
            # every rate as disk MB/s: each stage only sees its share of the disk
            read_r = rr * size / st.bytes_read  # type: ignore[attr-defined]
            cpu_r = cr * size / st.bytes_read  # type: ignore[attr-defined]
            pub_r = br * size / max(1, st.bytes_sent)  # type: ignore[attr-defined]
            slowest = min(read_r, cpu_r, pub_r)
            alloc2 = st2.bytes_read  # type: ignore[attr-defined]
            sent2 = st2.bytes_sent  # type: ignore[attr-defined]
            print(
                f"| {name} | {pers} | {read_r / 1e6:.0f} | {cpu_r / 1e6:.0f} | {pub_r / 1e6:.0f} | "
                f"{pr / 1e6:.0f} | {pr / slowest:.2f} | {pr / 1e6 / args.workers:.0f} | "
                f"{sent2 / alloc2:.3f} | {peak / MiB:.0f} |"
            )
        st: Any = rows[0][6]
        print(
            f"\ndisk {size / MiB:.0f} MiB: read {st.bytes_read / MiB:.0f} MiB, "
            f"zero {st.bytes_zero / MiB:.0f}, known {st.bytes_known / MiB:.0f}, "
            f"sent raw {st.bytes_raw_sent / MiB:.0f} -> payload {st.bytes_sent / MiB:.0f} MiB"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        rabbitmqctl("delete_vhost", vhost)


if __name__ == "__main__":
    main()
