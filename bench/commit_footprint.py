"""What a restore point's map costs the coordinator and the broker: entries inline in the
task results (the path before #21, still taken by proxies with ``stage_entries = false``)
vs staged at the writers by the proxies (the default).

Three kinds of process, all on the real broker in a throw-away vhost: a real writer
(WriterService on a real repository), a proxy stand-in that publishes each task's result
the way ProxyService does (staging its entries first with the proxy's own
``WriterLink.stage_entries``), and, per mode, a fresh coordinator process that holds every
VM's task results at once (as a job whose VMs all finish together does), then checks and
commits each VM's point with coordinator/commits.py. Reported per mode: the coordinator's
resident memory grown while holding the results (per VM), and the broker bytes of the
results it consumed and of the commit messages it published (per VM); the proxies'
staged bytes beside them.

    .venv/bin/python -m bench.commit_footprint [--vms 20] [--chunks 12288]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bench.procmem import proc_memory
from common import metrics
from common.amqp import BrokerParams, Publisher, ReplyQueue, results_queue
from common.messages import TaskResult
from tests.conftest import BROKER_URL, drop_vhost, make_vhost

CS = 256 * 1024
POOL = 256  # distinct chunks the maps name (map size, not chunk count, is measured)
CHUNKS_PER_TASK = 1024


def _params(vhost: str) -> BrokerParams:
    return BrokerParams(url=BROKER_URL, heartbeat=30).with_vhost(vhost)


def _pool_ids(repo_path: Path, *, store: bool = False) -> list[bytes]:
    """Ids of the chunks the maps name (stored once by the orchestrator)."""
    from repository.repository import Repository

    repo = Repository.open(repo_path)
    data = [f"pool {i}".encode() * 16 for i in range(POOL)]
    items = [(repo.chunk_id(d), d) for d in data]
    if store:
        repo.store_raw_chunks(items)
    return [cid for cid, _ in items]


def _entries(ids: list[bytes], start: int, n: int, vm: int) -> list[tuple[int, bytes]]:
    return [(i, ids[(i * 7 + vm) % POOL]) for i in range(start, start + n)]


def _plans(job: str, vms: int, chunks: int) -> list[Any]:
    from coordinator import planner

    out = []
    for v in range(vms):
        dec = planner.Decision(planner.FULL, "bench")
        plan = planner.DiskPlan(2000, chunks * CS, dec, "cid")
        out.append(
            planner.plan_ranges(
                plan,
                [(0, chunks * CS)],
                chunk_size=CS,
                max_bytes=CHUNKS_PER_TASK * CS,
                job_id=job,
                vm_uuid=f"vm-{v}",
            )
        )
    return out


# --- roles (child processes) ---------------------------------------------------------------


def run_writer(vhost: str, repo_path: str) -> int:
    from repository.repository import Repository
    from repository_writer.service import WriterService

    svc = WriterService(Repository.open(repo_path), _params(vhost), n_shards=2, name="bench-w")
    svc.start()
    print("ready", file=sys.stderr, flush=True)
    sys.stdin.read()  # until the orchestrator closes our stdin
    svc.close()
    return 0


def run_proxy(vhost: str, repo_path: str, job: str, vms: int, chunks: int, mode: str) -> int:
    from proxy_worker.writer_client import WriterLink

    params = _params(vhost)
    ids = _pool_ids(Path(repo_path))
    pub = Publisher(params, name="bench-proxy")
    replies = ReplyQueue(params, name="bench-proxy-replies")
    link = WriterLink(pub, replies, persistent_chunks=False, timeout=120.0)
    for v, plan in enumerate(_plans(job, vms, chunks)):
        for t in plan.tasks:
            ((off, length),) = t.ranges
            entries = _entries(ids, off // CS, length // CS, v)
            staged = (
                link.stage_entries(t.task_id, job, f"vm-{v}", 2000, entries)
                if mode == "staged"
                else None
            )
            digest, count = staged or (b"", 0)
            res = TaskResult(
                t.task_id,
                job,
                f"vm-{v}",
                2000,
                True,
                "",
                [] if staged else entries,
                length,
                0,
                0,
                length,
                0.1,
                "bench",
                "",
                digest,
                count,
            )
            pub.publish_sync("", results_queue("bench"), res, persistent=True)
    out = {
        k: _counter(metrics.AMQP_PUBLISHED_BYTES, kind=k) for k in ("task-entries", "task-result")
    }
    print(json.dumps(out), flush=True)
    replies.close()
    pub.close()
    return 0


def run_coordinator(vhost: str, repo_path: str, vms: int, chunks: int, mode: str) -> int:
    from coordinator import commits, report, snapshots
    from coordinator.discovery import DiskInfo, VmInfo
    from coordinator.disk_work import DiskWork
    from coordinator.job_runtime import Runtime
    from coordinator.previous_points import History
    from coordinator.settings import CoordinatorSettings

    job = f"bench-{mode}"
    rt = Runtime.start(
        CoordinatorSettings(id="bench"), {}, History.open(Path(repo_path)), _params(vhost)
    )
    works: list[DiskWork] = []
    for plan in _plans(job, vms, chunks):
        info = DiskInfo(
            2000,
            "Hard disk 1",
            plan.capacity,
            "[ds] a.vmdk",
            "ds",
            "persistent",
            "Flat",
            "",
            1000,
            0,
        )
        w = DiskWork(info, plan, report.DiskReport(2000))
        w.futures = {t.task_id: rt.results.expect(t.task_id) for t in plan.tasks}
        works.append(w)
    before = proc_memory()["VmRSS"]
    cpu0 = _cpu()
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.commit_footprint",
            "--role",
            "proxy",
            "--vhost",
            vhost,
            "--repo",
            repo_path,
            "--job",
            job,
            "--vms",
            str(vms),
            "--chunks",
            str(chunks),
            "--mode",
            mode,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    for w in works:
        for fut in w.futures.values():
            w.results.append(_result(fut))
        w.futures = {}
    held = proc_memory()["VmRSS"]
    proxy_out = json.loads(proxy.communicate(timeout=600)[0].strip().splitlines()[-1])
    for v, w in enumerate(works):
        commits.check_results(w, CS)
        vm = VmInfo(
            "lab",
            f"vm-{v}-mo",
            f"vm {v}",
            f"vm-{v}",
            f"vm-{v}",
            "dc",
            "c",
            "",
            "h",
            "host-1",
            False,
            "connected",
            True,
            False,
        )
        snap = snapshots.Snapshot("lab", vm.moref, "snapshot-1", None, "s", False)
        commits.commit_point(rt, job, vm, f"vm-{v}", snap, b"{}", [w], [], "complete")
    seconds = time.monotonic() - t0
    out = {
        "mode": mode,
        "rss_before": before,
        "rss_held": held,
        "hwm": proc_memory()["VmHWM"],
        "consumed_result_bytes": _counter(metrics.AMQP_CONSUMED_BYTES, kind="task-result"),
        "commit_bytes": _counter(metrics.AMQP_PUBLISHED_BYTES, kind="commit"),
        "part_bytes": _counter(metrics.AMQP_PUBLISHED_BYTES, kind="commit-part"),
        "proxy_staged_bytes": proxy_out["task-entries"],
        "proxy_result_bytes": proxy_out["task-result"],
        "seconds": seconds,
        "cpu_s": _cpu() - cpu0,
    }
    rt.close()
    print(json.dumps(out), flush=True)
    return 0


def _result(fut: Future[TaskResult]) -> TaskResult:
    return fut.result(timeout=600)


def _counter(counter: Any, **labels: str) -> float:
    total = 0.0
    for family in counter.collect():
        for s in family.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- the orchestrator ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=12288, help="chunks per disk (one disk per VM)")
    ap.add_argument("--role", choices=["writer", "proxy", "coordinator"], default="")
    ap.add_argument("--vhost", default="")
    ap.add_argument("--repo", default="")
    ap.add_argument("--job", default="")
    ap.add_argument("--mode", choices=["inline", "staged"], default="staged")
    args = ap.parse_args(argv)
    if args.role == "writer":
        return run_writer(args.vhost, args.repo)
    if args.role == "proxy":
        return run_proxy(args.vhost, args.repo, args.job, args.vms, args.chunks, args.mode)
    if args.role == "coordinator":
        return run_coordinator(args.vhost, args.repo, args.vms, args.chunks, args.mode)

    from repository.repository import Repository

    vhost = make_vhost("bench-commit")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="commit-footprint-") as tmp:
        repo = Path(tmp) / "repo"
        Repository.init(repo, chunk_size=CS)
        _pool_ids(repo, store=True)
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.commit_footprint",
                "--role",
                "writer",
                "--vhost",
                vhost,
                "--repo",
                str(repo),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # its logs
            stderr=subprocess.PIPE,  # "ready", then nothing unless it fails
            text=True,
        )
        try:
            assert writer.stderr is not None
            for line in writer.stderr:
                if line.strip() == "ready":
                    break
            else:
                raise RuntimeError("the writer exited before it was ready")
            for mode in ("inline", "staged"):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.commit_footprint",
                        "--role",
                        "coordinator",
                        "--vhost",
                        vhost,
                        "--repo",
                        str(repo),
                        "--vms",
                        str(args.vms),
                        "--chunks",
                        str(args.chunks),
                        "--mode",
                        mode,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            assert writer.stdin is not None
            writer.stdin.close()
            writer.wait(timeout=120)
            drop_vhost(vhost)
    load1 = os.getloadavg()[0]
    n = args.vms
    print(
        f"{n} VMs x 1 disk of {args.chunks} chunks ({args.chunks * CS // 2**30} GiB at 256 KiB"
        f" chunks; {args.chunks // CHUNKS_PER_TASK} tasks per disk);"
        f" load {load0:.2f} -> {load1:.2f}"
    )
    print(
        "| entries | coordinator RSS grown while holding results, per VM | task-result bytes per VM"
        " | commit bytes per VM (request + parts) | staged by proxies per VM | coordinator CPU s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {(r['rss_held'] - r['rss_before']) / n / 2**20:.2f} MiB"
            f" | {r['consumed_result_bytes'] / n / 1000:.1f} kB"
            f" | {(r['commit_bytes'] + r['part_bytes']) / n / 1000:.1f} kB"
            f" | {r['proxy_staged_bytes'] / n / 1000:.1f} kB | {r['cpu_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
