"""Proxy throughput per transport, side by side in one run with its baselines.

A lab (vcsim) with two VMs whose disks hold the same mixed data, the second a clone of the
first (template) with 2 % of its blocks rewritten. Per transport (file, nbd via nbdkit's file
plugin, http through the lab's /folder URL):

- bare read: the transport reading the chunks of the full backup's task, i.e. the areas CBT
  reports allocated (what the pipeline is given; see ``full_backup_ranges``);
- bare BLAKE3 + zstd: ``--workers`` threads hashing and compressing a sample of that data;
- bare publish+consume: windowed publish (confirms) of the payload the pipeline actually
  sent, in batch-sized messages, consumed by another process;
- the pipeline end to end: the proxy in its own process (``--child``) sending to a real
  ``vmbackup writer`` process (fresh repository), then the clone through the same writer
  (bytes sent / allocated). Per ``--chunk-paths``: ``stream`` (chunk batches on the
  writer's chunk stream, the default deployment), ``broker`` (through RabbitMQ, transient
  messages) and ``broker-persistent``.

What runs where (2 shared cores): this process runs the baselines and the lab client; the
proxy, the writer, RabbitMQ and the lab (http only) are separate processes. The baselines
run alone, the pipeline shares the cores with the writer (decompress, re-hash, fsync) and
the broker, which is the deployment shape minus the network. RSS is the proxy process's
peak (VmHWM), next to the peak of its chunk-memory budget. CPU seconds of the template's
run: the proxy process's own, the disk's server's (nbdkit, a child of the proxy, or the lab
serving http), the writer's, and the broker's (over the template and the clone); disk MB
per proxy CPU second is what sizes proxies (Veeam's anchor: ~100 MB/s per core).

The floor: what the pipeline cannot skip, measured alone per transport: the bare read's
CPU (this process and the disk's server), the pipeline's own chunk work (zero check,
BLAKE3, probe + zstd) and the writer's store of the sent chunks into a fresh repository.
Spread perfectly over the cores (each side's own with ``--split``) it gives the least
time the pipeline can take here, and so the best ratio these cores allow: a ratio below
0.7 is the code's when that bound is well above it, the machine's when it is not.

    .venv/bin/python -m bench.proxy_throughput [--size-mib 4096] [--transports file,nbd,http]
        [--chunk-paths stream,broker,broker-persistent]

Size: past 400 lines: the floor, the baselines and the pipeline per transport and chunk
path run in one process so that every ratio has its baseline from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.e2e_tools import broker_pid, proc_cpu
from bench.procmem import proc_memory
from common.amqp import BrokerParams, Publisher, open_blocking
from common.chunk import chunk_id, compress, is_zero
from common.malloc_tuning import limit_heap_retention
from common.messages import ChunkBatch
from common.snapshot_disk import SnapshotDisk
from coordinator.planner import align
from lab.guest import data_extents
from proxy_worker.budget import MemoryBudget
from proxy_worker.chunk_stream_client import WriterStreams
from proxy_worker.pipeline import PipelineConfig, TaskPipeline, TaskStats
from proxy_worker.settings import (
    HttpSettings,
    NbdSettings,
    ProxySettings,
    VCenterAccess,
    VCenterDirectory,
)
from proxy_worker.transports.base import DiskReader
from proxy_worker.transports.file import FileTransport
from proxy_worker.transports.http import HttpTransport
from proxy_worker.transports.nbd import NbdTransport
from proxy_worker.transports.read_buffers import ReadBuffers
from proxy_worker.writer_client import WriterLink
from repository.repository import Repository

MiB = 1 << 20
CHUNK = 1 * MiB
SHARDS = 4
LEVEL = 1
BATCH = 4 * MiB
CPU_SAMPLE = 512 * MiB  # bytes of allocated data the bare hash+zstd baseline processes


def fill_disks(tpl: Path, clone: Path, size: int, seed: int = 1) -> None:
    """Mixed 1 MiB blocks (25 % shared with the template, 20 % text, 15 % random, 5 %
    written zeros, rest holes); the clone equals the template except 2 % rewritten blocks."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(3, 9)).hex().encode() for _ in range(500)]
    with open(tpl, "wb") as ft, open(clone, "wb") as fc:
        ft.truncate(size)
        fc.truncate(size)
        for off in range(0, size, CHUNK):
            r = rnd.random()
            if r < 0.25 or 0.45 <= r < 0.60:
                data = rnd.randbytes(CHUNK)
            elif r < 0.45:
                line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
                text = bytearray((line * (CHUNK // len(line) + 1))[:CHUNK])
                for i in range(0, 8192, 4096):  # a few unique bytes: no two blocks alike
                    text[i] = rnd.randrange(256)
                data = bytes(text)
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


def full_backup_ranges(path: Path, capacity: int) -> list[tuple[int, int]]:
    """A full backup's task ranges as the coordinator plans them: the areas the lab's
    QueryChangedDiskAreas(changeId="*") reports as allocated (the flat file's SEEK_DATA
    extents, as lab/vcsim/sparse.go walks them), grown to whole chunks. So no transport
    reads the disk's holes, as in production, where CBT is the only way http has to skip
    them (nbd's block status and the file transport's SEEK_DATA then find none left)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = data_extents(fd, capacity)
    finally:
        os.close(fd)
    return align([(start, end - start) for start, end in extents], CHUNK, capacity)


def chunks_of(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of aligned ``ranges``, in disk order."""
    return [(o, min(CHUNK, off + n - o)) for off, n in ranges for o in range(off, off + n, CHUNK)]


# --- where processes run (--split) ---------------------------------------------------------


class Placement:
    """``--split``: the deployment shape on one box. The proxy side (this process: the
    baselines' reading, hashing and publishing; the proxy child and its nbdkit) runs on the
    first core; the other side (writer, baseline consumer, RabbitMQ, the lab as the
    datastore's server) on the rest, as if they were other machines. Without it nothing
    is pinned. The shared RabbitMQ node gets all cores back at the end, also on SIGTERM or
    Ctrl-C; after a SIGKILL: ``taskset -a -p -c 0-$(($(nproc)-1)) $(pgrep -f beam.smp)``."""

    def __init__(self, split: bool) -> None:
        self.split = split
        self.all = sorted(os.sched_getaffinity(0))
        if split and len(self.all) < 2:
            raise SystemExit("--split needs at least 2 cores")
        self.proxy = set(self.all[:1]) if split else set(self.all)
        self.backend = set(self.all[1:]) if split else set(self.all)
        self.pinned: list[int] = []

    @property
    def proxy_cores(self) -> int:
        return len(self.proxy)

    def pin_self(self) -> None:
        os.sched_setaffinity(0, self.proxy)  # children started later inherit it

    def pin_backend(self, pid: int | None) -> None:
        """Every thread of ``pid`` onto the back-end cores (children started later too)."""
        if not self.split or pid is None:
            return
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), self.backend)
        self.pinned.append(pid)

    def release(self) -> None:
        """Give every pinned process (the shared broker above all) all cores back."""
        for pid in self.pinned:
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(task.name), self.all)
        os.sched_setaffinity(0, self.all)


def bare_read(r: DiskReader, ranges: list[tuple[int, int]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(len(b) for _, b in r.read_many(ranges))
    return time.perf_counter() - t0, n


def bare_cpu(r: DiskReader, ranges: list[tuple[int, int]], workers: int) -> tuple[float, int]:
    """Hash + compress (zero chunks only checked) of a sample of the allocated data;
    only the CPU stage is timed, in batches so the sample never sits in memory at once."""

    def work(d: bytes | bytearray) -> int:
        if is_zero(d):
            return 0
        chunk_id(d)
        return len(compress(d, LEVEL, probe=False)[0])  # the baseline: zstd on all

    ranges = ranges[: CPU_SAMPLE // CHUNK]
    spent, n = 0.0, 0
    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(ranges), 64):
            data = [b for _, b in r.read_many(ranges[i : i + 64])]
            t0 = time.perf_counter()
            list(pool.map(work, data))
            spent += time.perf_counter() - t0
            n += sum(len(d) for d in data)
    return spent, n


def bare_chunks_and_store(
    path: Path, ranges: list[tuple[int, int]], repo_dir: Path
) -> tuple[float, float]:
    """CPU seconds of the work no pipeline can skip, for the data a transport reads from
    ``path``: the proxy's chunk work as the pipeline does it (zero check, BLAKE3, the
    compression probe and zstd of the chunks it sends) and the writer's store of what is
    sent (``Repository.store_chunks``: decompress, re-hash, durable write into a fresh
    repository in ``repo_dir``). Reading is not timed. Socket copies and framing are left
    out, so the floor this gives is, if anything, too low."""
    repo = Repository.init(
        repo_dir / f"vmbackup-bench-floor-{uuid.uuid4().hex[:6]}",
        chunk_size=CHUNK,
        compression_level=LEVEL,
    )
    chunk_cpu = store_cpu = 0.0
    seen: set[bytes] = set()
    batch: list[tuple[bytes, int, bool, bytes | bytearray]] = []
    batch_bytes = 0

    def store() -> float:
        t0 = time.process_time()  # fsyncs may run on the store's own threads
        repo.store_chunks(batch)
        return time.process_time() - t0

    try:
        with open(path, "rb", buffering=0) as fh:
            for off, n in ranges:
                data = os.pread(fh.fileno(), n, off)
                t0 = time.thread_time()
                if not is_zero(data):
                    cid = chunk_id(data)
                    if cid not in seen:  # what the have-query leaves to send
                        seen.add(cid)
                        payload, compressed = compress(data, LEVEL)
                        batch.append((cid, n, compressed, payload))
                        batch_bytes += len(payload)
                chunk_cpu += time.thread_time() - t0
                if batch_bytes >= BATCH:
                    store_cpu += store()
                    batch, batch_bytes = [], 0
            if batch:
                store_cpu += store()
    finally:
        shutil.rmtree(repo.path, ignore_errors=True)
    return chunk_cpu, store_cpu


def bare_publish_consume(params: BrokerParams, nbytes: int, where: Placement) -> float:
    """Publish ``nbytes`` as BATCH-sized ChunkBatch messages (confirm window as the proxy's
    publisher) to a queue that a consumer in another process drains; time until all arrived."""
    n = max(1, nbytes // BATCH)
    queue = f"bench.bare.{uuid.uuid4().hex[:8]}"
    conn = open_blocking(params, "bench-setup")
    conn.channel().queue_declare(queue, durable=True)
    conn.close()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy_throughput", "--consume", queue, str(n)],
        env={**os.environ, "BENCH_BROKER_URL": params.url},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert consumer.stdout is not None
    where.pin_backend(consumer.pid)
    if consumer.stdout.readline().strip() != "ready":
        raise RuntimeError("bench consumer did not start")
    payload = os.urandom(BATCH)
    msg = ChunkBatch(
        batch_id="b", task_id="t", reply_to="x", chunks=[(bytes(32), BATCH, False, payload)]
    )
    with Publisher(params, name="bench-pub") as pub:
        t0 = time.perf_counter()
        futs = [pub.publish("", queue, msg, persistent=False) for _ in range(n)]
        pub.flush(futs)
        consumer.stdout.readline()  # "done"
        dt = time.perf_counter() - t0
    consumer.wait(60)
    conn = open_blocking(params, "bench-setup")
    conn.channel().queue_delete(queue)
    conn.close()
    return dt


def consume_main(queue: str, n: int) -> None:
    params = BrokerParams(url=os.environ["BENCH_BROKER_URL"])
    conn = open_blocking(params, "bench-consumer")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=16)
    got = 0

    def on_msg(ch: Any, m: Any, _p: Any, _b: bytes) -> None:
        nonlocal got
        ch.basic_ack(m.delivery_tag)
        got += 1
        if got >= n:
            ch.stop_consuming()

    ch.basic_consume(queue, on_msg)
    print("ready", flush=True)
    ch.start_consuming()
    print("done", flush=True)
    conn.close()


# --- the proxy in its own process ------------------------------------------------------------


def open_transport(spec: dict[str, Any]) -> Any:
    # nbd as `vmbackup proxy` runs it by default: 4 reads in flight, nbdkit with 4 threads
    # (this bench used 8 and 8: no faster in the pipeline, see RESULTS.md); read buffers
    # from one pool the size of the memory budget, as the proxy's service makes it.
    settings = ProxySettings(datastore_mounts=spec["mounts"], nbd=NbdSettings(server="file"))
    buffers = ReadBuffers(settings.memory_limit_mib * MiB)
    if spec["transport"] == "file":
        return FileTransport(settings)
    if spec["transport"] == "nbd":
        return NbdTransport(settings, buffers=buffers)
    vc = VCenterAccess(**spec["vc"])
    return HttpTransport(HttpSettings(), VCenterDirectory([vc]), buffers)


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def children_cpu() -> float:
    """CPU of this process's finished children: the nbd transport's nbdkit."""
    t = os.times()
    return t.children_user + t.children_system


def run_pipeline(
    link: WriterLink,
    transport: Any,
    src: SnapshotDisk,
    budget: MemoryBudget,
    workers: int,
    writer_pid: int,
    server_pid: int | None,
    ranges: list[tuple[int, int]],
) -> tuple[float, float, float, float, TaskStats]:
    """(seconds, CPU seconds of this process, of the disk's server (nbdkit, or the lab
    serving http at ``server_pid``; 0 for file), of the writer, stats) of one disk through
    the pipeline."""
    window = ProxySettings().window_bytes(CHUNK)  # as `vmbackup proxy` sizes its stages
    cfg = PipelineConfig(
        chunk_size=CHUNK,
        compression_level=LEVEL,
        n_shards=SHARDS,
        window_bytes=window,
        partial_cap=window,
    )
    k0 = children_cpu()
    with ThreadPoolExecutor(workers) as pool, transport.open(src) as r:
        t0, c0, w0 = time.perf_counter(), process_cpu(), proc_cpu(writer_pid)
        s0 = proc_cpu(server_pid) if server_pid else 0.0
        st = TaskPipeline(r, link, pool, budget, cfg, uuid.uuid4().hex).run(ranges, src.capacity)
        dt, cpu = time.perf_counter() - t0, process_cpu() - c0
        # the task is acked by then: every chunk it sent is durable at the writer
        w_cpu = proc_cpu(writer_pid) - w0
        s_cpu = proc_cpu(server_pid) - s0 if server_pid else 0.0
    # nbdkit is reaped when the reader closes
    return dt, cpu, children_cpu() - k0 + s_cpu, w_cpu, st


def child_main(spec_json: str) -> None:
    """One proxy process: the template, then the clone, through the pipeline."""
    from common.amqp import ReplyQueue

    spec = json.loads(spec_json)
    if spec.get("heap", True):
        limit_heap_retention()  # as `vmbackup proxy` does
    params = BrokerParams(url=spec["url"])
    transport = open_transport(spec)
    pub = Publisher(params, name="bench-proxy")
    replies = ReplyQueue(params, name="bench-proxy-replies")
    streams = (
        WriterStreams("bench-proxy", connect_timeout=10)
        if spec["path"].startswith("stream")
        else None
    )
    link = WriterLink(
        pub,
        replies,
        persistent_chunks=spec["path"] == "broker-persistent",
        timeout=120,
        streams=streams,
    )
    budget = MemoryBudget(ProxySettings().memory_limit_mib * MiB)  # the default budget
    out: dict[str, Any] = {"rss_before": proc_memory()["VmRSS"]}  # interpreter + libraries
    try:
        for which in ("tpl", "clone"):
            src = SnapshotDisk(**spec[which])
            dt, cpu, server_cpu, w_cpu, st = run_pipeline(
                link,
                transport,
                src,
                budget,
                spec["workers"],
                spec["writer_pid"],
                spec["server_pid"],
                [(off, n) for off, n in spec["tasks"][which]],
            )
            stats = {k: v for k, v in vars(st).items() if k != "entries"}
            out[which] = {
                "seconds": dt,
                "cpu": cpu,
                "server_cpu": server_cpu,
                "writer_cpu": w_cpu,
                **stats,
            }
    finally:
        if streams is not None:
            streams.close()
        replies.close()
        pub.close()
        transport.close()
    out["budget_peak"] = budget.peak
    out["rss_peak"] = proc_memory()["VmHWM"]
    print(json.dumps(out), flush=True)


def start_writer(
    root: Path, repo_root: Path, params: BrokerParams, tag: str, *, stream: bool, tls: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    repo = repo_root / f"vmbackup-bench-repo-{tag}-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vmbackup",
            "repo",
            "init",
            str(repo),
            "--chunk-size",
            str(CHUNK),
            "--compression-level",
            str(LEVEL),
        ],
        check=True,
        capture_output=True,
    )
    cfg = root / f"writer-{tag}.toml"
    cfg.write_text(
        f'[broker]\nurl = "{params.url}"\nn_shards = {SHARDS}\n'
        f'[metrics]\nport = 0\n[repository]\npath = "{repo}"\n'
        f'[writer]\nname = "bench-writer-{tag}"\nconsume_commits = false\n'
        + ('data_listen = "127.0.0.1:0"\n' if stream else "")
        + f'data_tls = "{"on" if tls else "off"}"\n'
    )
    log = root / f"writer-{tag}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmbackup", "writer", "--config", str(cfg)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b"writer_started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"writer did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, repo


def rabbitmqctl(*a: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *a], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--transports", default="file,nbd,http")
    ap.add_argument(
        "--chunk-paths",
        default="stream,broker",
        help="how chunk batches reach the writer: stream, stream-tls, broker, broker-persistent",
    )
    ap.add_argument(
        "--repo-dir",
        default="/dev/shm",
        help="where the writer's repository lives (default tmpfs: writers are other machines "
        "with their own disks, so this VM's fsync latency is not the proxy's)",
    )
    ap.add_argument(
        "--split",
        action="store_true",
        help="proxy side on the first core, writer + broker + lab on the others (see Placement)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--consume", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.consume:
        consume_main(args.consume[0], int(args.consume[1]))
        return

    from lab import Lab, LabSpec

    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    vhost = f"bench-proxy-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    params = BrokerParams().with_vhost(vhost)
    spec = LabSpec(
        clusters=1,
        hosts_per_cluster=1,
        vms_per_host=2,
        disk_sizes=[size],
        local_datastores=False,
        power_on=False,
    )
    rows = []
    broker = broker_pid()
    where = Placement(args.split)
    # SIGTERM (a CI time-out, `kill`) unwinds like Ctrl-C, through the finally below that
    # gives the shared broker its cores back and removes the vhost; only SIGKILL cannot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    where.pin_self()
    where.pin_backend(broker)
    try:
        with Lab.start(spec) as lab:
            where.pin_backend(lab.pid)
            vms = lab.vms()
            srcs = []
            for vm in vms[:2]:
                d = vm["disks"][0]
                ds = d["file"][1:].split("]", 1)[0]
                srcs.append(
                    SnapshotDisk(
                        "lab",
                        vm["datacenter"],
                        vm["host"],
                        ds,
                        vm["moref"],
                        "",
                        d["file"],
                        d["capacity"],
                    )
                )
            t0 = time.perf_counter()
            clone_path = lab.local_path(srcs[1].disk_file)
            fill_disks(lab.local_path(srcs[0].disk_file), clone_path, size)
            clone_alloc = os.stat(clone_path).st_blocks * 512
            tasks = {
                which: full_backup_ranges(lab.local_path(src.disk_file), src.capacity)
                for which, src in (("tpl", srcs[0]), ("clone", srcs[1]))
            }
            ranges = chunks_of(tasks["tpl"])
            # Write the disks back now: otherwise the kernel's flusher does it during the
            # first transport's runs, on the same cores (that transport measured ~30 % slower).
            os.sync()
            print(f"# disks filled and synced in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            vc = dict(
                name="lab",
                url=lab.url,
                user=lab.user,
                password=lab.password,
                thumbprint=lab.thumbprint,
            )
            for name in args.transports.split(","):
                cspec = {"transport": name, "mounts": lab.datastores, "vc": vc}
                t = open_transport(cspec)
                # the read's CPU: this process, and the disk's server (nbdkit, a child
                # reaped when the reader closes; the lab for http)
                c0, k0, s0 = time.process_time(), children_cpu(), proc_cpu(lab.pid)
                with t.open(srcs[0]) as r:
                    rt, rn = bare_read(r, ranges)
                floor = {
                    "read_client": time.process_time() - c0,
                    "read_server": children_cpu() - k0 + proc_cpu(lab.pid) - s0,
                }
                with t.open(srcs[0]) as r:
                    ct, cn = bare_cpu(r, ranges, args.workers)
                t.close()
                floor["chunks"], floor["store"] = bare_chunks_and_store(
                    lab.local_path(srcs[0].disk_file), ranges, Path(args.repo_dir)
                )
                for path in args.chunk_paths.split(","):
                    writer, repo = start_writer(
                        root,
                        Path(args.repo_dir),
                        params,
                        f"{name}-{path}",
                        stream=path.startswith("stream"),
                        tls=path == "stream-tls",
                    )
                    where.pin_backend(writer.pid)
                    w_cpu0, b_cpu0 = proc_cpu(writer.pid), proc_cpu(broker) if broker else 0.0
                    try:
                        child = subprocess.run(
                            [
                                sys.executable,
                                "-m",
                                "bench.proxy_throughput",
                                "--child",
                                json.dumps(
                                    {
                                        **cspec,
                                        "url": params.url,
                                        "path": path,
                                        "workers": args.workers,
                                        "writer_pid": writer.pid,
                                        "server_pid": lab.pid if name == "http" else None,
                                        "tpl": dataclasses.asdict(srcs[0]),
                                        "clone": dataclasses.asdict(srcs[1]),
                                        "tasks": tasks,
                                    }
                                ),
                            ],
                            check=True,
                            capture_output=True,
                            text=True,
                        )
                        res_cpu = {
                            "writer_cpu_both_runs": proc_cpu(writer.pid) - w_cpu0,
                            "broker_cpu": (proc_cpu(broker) - b_cpu0) if broker else 0.0,
                        }
                    finally:
                        writer.send_signal(signal.SIGTERM)
                        writer.wait(60)
                        shutil.rmtree(repo, ignore_errors=True)
                    res = {**json.loads(child.stdout.strip().splitlines()[-1]), **res_cpu}
                    bt = bare_publish_consume(params, res["tpl"]["bytes_sent"], where)
                    rows.append((name, path, rn / rt, cn / ct, bt, res, clone_alloc, floor))
                    print(f"# {name} {path}: {res} floor {floor}", file=sys.stderr)
    finally:
        where.release()
        shutil.rmtree(root, ignore_errors=True)
        rabbitmqctl("delete_vhost", vhost)
    if args.split:
        print(f"split: proxy side on cores {sorted(where.proxy)}, rest on {sorted(where.backend)}")
    print_table(rows, size, where)


def floor_seconds(name: str, floor: dict[str, float], where: Placement) -> float:
    """The least time the pipeline can take on these cores: the CPU of the work it cannot
    skip (``floor``) spread perfectly over the cores each side may use. Shared, everything
    shares every core; ``--split``, the proxy side (reading, nbdkit, chunk work) has its
    core(s), the writer's store and the lab's http server the others."""
    if not where.split:
        return sum(floor.values()) / len(where.all)
    server_on_proxy_side = name == "nbd"  # nbdkit runs beside the proxy, the lab does not
    proxy = floor["read_client"] + floor["chunks"]
    backend = floor["store"]
    if server_on_proxy_side:
        proxy += floor["read_server"]
    else:
        backend += floor["read_server"]
    return max(proxy / len(where.proxy), backend / len(where.backend))


def print_table(rows: list[Any], size: int, where: Placement) -> None:
    print(
        "| transport | chunk path | bare read | bare BLAKE3+zstd | "
        "bare publish+consume | pipeline | pipeline / slowest | best these cores allow | "
        "pipeline per proxy core | "
        "clone sent / allocated | budget peak MiB | proxy RSS peak MiB | "
        "template CPU s proxy / server / writer, broker (both runs) | "
        "floor CPU s read (client + server) / chunks / store | "
        "disk MB per proxy CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, path, read_rate, cpu_rate, bt, res, clone_alloc, floor in rows:
        st = res["tpl"]
        # every rate in disk MB/s: each stage only sees its share of the disk
        read_r = read_rate * size / st["bytes_read"]
        cpu_r = cpu_rate * size / st["bytes_read"]
        pub_r = size / bt
        pipe_r = size / st["seconds"]
        slowest = min(read_r, cpu_r, pub_r)
        # the ratio the pipeline would reach if it took no more than its floor
        best = size / floor_seconds(name, floor, where) / slowest
        clone = res["clone"]
        print(
            f"| {name} | {path} | {read_r / 1e6:.0f} | {cpu_r / 1e6:.0f} | {pub_r / 1e6:.0f} | "
            f"{pipe_r / 1e6:.0f} | {pipe_r / slowest:.2f} | {best:.2f} | "
            f"{pipe_r / 1e6 / where.proxy_cores:.0f} | "
            f"{clone['bytes_sent'] / clone_alloc:.3f} | "
            f"{res['budget_peak'] / MiB:.0f} | {res['rss_peak'] / MiB:.0f} | "
            f"{st['cpu']:.1f} / {st['server_cpu']:.1f} / {st['writer_cpu']:.1f}, "
            f"{res['broker_cpu']:.1f} | "
            f"{floor['read_client']:.1f} + {floor['read_server']:.1f} / {floor['chunks']:.1f} / "
            f"{floor['store']:.1f} | "
            f"{size / st['cpu'] / 1e6:.0f} |"
        )
    st = rows[0][5]["tpl"]
    print(
        f"\ndisk {size / MiB:.0f} MiB ({rows[0][0]}): read {st['bytes_read'] / MiB:.0f} MiB, "
        f"zero {st['bytes_zero'] / MiB:.0f}, known {st['bytes_known'] / MiB:.0f}, "
        f"sent raw {st['bytes_raw_sent'] / MiB:.0f} -> payload {st['bytes_sent'] / MiB:.0f} MiB"
    )


if __name__ == "__main__":
    main()
