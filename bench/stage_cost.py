"""CPU per staged task: a task's map entries through the commits queue vs on the writer's
chunk stream (#21), the way a proxy stages them when a task is done.

A real writer (WriterService on a real repository, its own process: its CPU is read from
/proc) with a chunk stream, the proxy's own ``WriterLink.stage_entries`` in this process,
the real broker in a throw-away vhost. Per path, ``--tasks`` tasks of ``--entries`` entries
each are staged one after the other (as one proxy thread does), alternating the paths
``--rounds`` times; reported per task: this process's CPU (the proxy side), the writer's,
the broker's (shared with whatever else runs on the machine: read it as an upper bound).

    .venv/bin/python -m bench.stage_cost [--tasks 300] [--entries 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.e2e_tools import broker_pid, proc_cpu
from common.amqp import BrokerParams, Publisher, ReplyQueue
from proxy_worker.chunk_stream_client import WriterStreams
from proxy_worker.writer_client import WriterLink
from tests.conftest import BROKER_URL, drop_vhost, make_vhost

CS = 1024 * 1024
N_SHARDS = 1

WRITER = """
import sys, time
from common.amqp import BrokerParams
from repository.repository import Repository
from repository_writer.service import WriterService
params = BrokerParams(url=sys.argv[1], heartbeat=30).with_vhost(sys.argv[2])
svc = WriterService(Repository.open(sys.argv[3]), params, n_shards=1, shards="0",
                    data_listen="127.0.0.1:0", name="bench-writer").start()
print("ready", flush=True)
sys.stdin.read()
svc.close()
"""


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stage(link: WriterLink, run: str, tasks: int, entries: int, cid: bytes) -> None:
    ents = [(i, cid) for i in range(entries)]
    for t in range(tasks):
        link.stage_entries(f"{run}-task-{t}", f"job-{run}", "vm", 2000, ents)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--entries", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    from repository.repository import Repository

    vhost = make_vhost("stagecost")
    params = BrokerParams(url=BROKER_URL, heartbeat=30).with_vhost(vhost)
    bpid = broker_pid()
    with tempfile.TemporaryDirectory(prefix="stage-cost-") as tmp:
        repo = Repository.init(Path(tmp) / "repo", chunk_size=CS, compression_level=1)
        data = b"stage cost" * 1000
        cid = repo.chunk_id(data)
        repo.store_raw_chunks([(cid, data)])
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, BROKER_URL, vhost, str(repo.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None
        for line in writer.stdout:  # its log lines first
            if line.strip() == b"ready":
                break
        else:
            raise SystemExit(f"the writer exited ({writer.wait()}) before it was ready")
        pub = Publisher(params, name="bench-proxy")
        replies = ReplyQueue(params, name="bench-proxy-replies")
        streams = WriterStreams("bench", connect_timeout=5)
        links = {
            "commits queue": WriterLink(pub, replies, persistent_chunks=False, timeout=30),
            "chunk stream": WriterLink(
                pub, replies, persistent_chunks=False, timeout=30, streams=streams
            ),
        }
        links["chunk stream"].have({0: [cid]})  # learns the writer's stream
        assert links["chunk stream"].endpoints, "the writer offered no chunk stream"
        for name, link in links.items():  # warm up both paths
            _stage(link, f"warm-{name[:5]}", 20, args.entries, cid)
        sums: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0] for n in links}
        load0 = os.getloadavg()[0]
        for r in range(args.rounds):
            for name, link in links.items():
                c0, w0 = _self_cpu(), proc_cpu(writer.pid)
                b0, t0 = (proc_cpu(bpid) if bpid else 0.0), time.monotonic()
                _stage(link, f"r{r}-{name[:5]}", args.tasks, args.entries, cid)
                s = sums[name]
                s[0] += _self_cpu() - c0
                s[1] += proc_cpu(writer.pid) - w0
                s[2] += (proc_cpu(bpid) - b0) if bpid else 0.0
                s[3] += time.monotonic() - t0
        load1 = os.getloadavg()[0]
        streams.close()
        replies.close()
        pub.close()
        assert writer.stdin is not None
        writer.stdin.close()
        writer.wait(60)
    drop_vhost(vhost)
    n = args.tasks * args.rounds
    print(
        f"{args.tasks} tasks x {args.rounds} rounds per path, {args.entries} entries each;"
        f" load {load0:.2f} -> {load1:.2f}"
    )
    print("| path | proxy CPU ms/task | writer CPU ms/task | broker CPU ms/task | wall ms/task |")
    print("|---|---|---|---|---|")
    for name, (c, w, b, wall) in sums.items():
        print(
            f"| {name} | {c / n * 1e3:.2f} | {w / n * 1e3:.2f} | {b / n * 1e3:.2f}"
            f" | {wall / n * 1e3:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
