"""End to end: the whole pipeline vs restic 0.14 and borg 1.2 on the same lab images.

    .venv/bin/python -m bench.e2e_backup [--scale dev|full] [--transport file|http]
        [--tools restic,borg,borg-fixed] [--dir PARENT] [--json OUT]

One run, one set of VM images (the demo datacenter of lab/demo.py scaled up: 2 clusters
of 3 hosts, 24 VMs with 2 disks each, one disk of 4 GiB (256 MiB at dev scale), filled
by lab.fill_disks with a third of the VMs cloned from one template). ``--scale full`` is
about 21 GiB of allocated data, ``dev`` about 2 GiB. For each tool in turn, on the same
bytes:

1. full backup: vmbackup = coordinator (``vmbackup backup``) + 2 proxies + 2 writers as
   separate processes (lab/stack.py) on the lab's vCenter; restic / borg back up the
   disks' flat files in one process each. Wall time, CPU, repository size.
2. the same 1 % of the allocated data rewritten in runs of 64 KiB to 8 MiB, then an
   incremental (vmbackup: CBT; restic / borg: re-read every changed file); then the same
   1 % again as isolated 64 KiB writes, one per 1 MiB chunk (the worst case), and another
   incremental. Bytes read: ours from the job report, theirs from /proc/PID/io rchar.
3. restore of the 4 GiB disk from the newest point: ``vmbackup restore`` vs
   ``restic restore`` of the same file, checked byte for byte against the image.

The change sets are reverted after each tool, so every tool starts from the same images.
All temp data (lab datastores, repositories, restores) is removed at the end.

Size: past 400 lines: one script runs every tool's full, both incrementals and the
restore in the same run (what makes the ratios comparable); the tools' command lines
live in bench/e2e_tools.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.e2e_changes import ChangeSet, Disk, guest_runs, isolated_writes
from bench.e2e_floor import Floor, floor_table, measure_floor
from bench.e2e_tools import (
    Borg,
    Measured,
    Restic,
    Tool,
    broker_pid,
    bytecode_env,
    dir_size,
    load1,
    make_tools,
    proc_cpu,
    proc_io,
    proc_sys_cpu,
    run,
)
from bench.procmem import proc_memory
from common.logging import setup_logging
from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec

MiB = 1 << 20
GiB = 1 << 30
CHANGE_FRACTION = 0.01
# Metrics summed over the proxies / writers and reported as deltas per backup run.
METRICS = (
    "vmbackup_proxy_task_seconds_sum",
    "vmbackup_proxy_queue_wait_seconds_sum",
    "vmbackup_proxy_throttle_seconds_total",
    "vmbackup_proxy_read_bytes_total",
    "vmbackup_writer_write_seconds_sum",
    "vmbackup_writer_fsync_seconds_sum",
    "vmbackup_writer_stored_bytes_total",
    "vmbackup_amqp_confirm_wait_seconds_sum",
)


@dataclass
class RunResult:
    """One backup or restore by one tool."""

    tool: str
    what: str  # full | incremental | worst | restore
    wall: float
    cpu: float
    bytes_read: int
    load_before: float
    load_after: float
    repo_bytes: int = 0
    repo_du: int = 0
    ok: bool = True
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def disk_sizes(scale: str) -> tuple[int, list[int]]:
    """(restore disk capacity, capacities of the 48 disks in creation order)."""
    if scale == "full":
        restore, pattern = 4 * GiB, [512 * MiB, 640 * MiB + 12345, 704 * MiB]
    else:
        restore, pattern = 256 * MiB, [48 * MiB, 64 * MiB + 12345, 72 * MiB]
    return restore, [restore] + [pattern[i % 3] for i in range(47)]


def sha256_file(path: Path, length: int) -> str:
    """SHA-256 of the first ``length`` bytes, zeros past the end of a shorter file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            block = f.read(min(left, 8 * MiB)) or bytes(min(left, 8 * MiB))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def scrape(port: int) -> dict[str, float]:
    """Sum each metric of METRICS over its label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def timeline(log: Path, vms: list[dict[str, Any]], wall: float, job: float) -> dict[str, float]:
    """Where a job's time went, from the coordinator's log and report.

    Per VM: ``snapshot`` = from the VM's start to its snapshot_created event (waiting for
    a per-host snapshot slot included; in the lab, creating it is a full sparse copy of
    every disk plus a hash of each 64 KiB block for CBT; on ESXi, a switch to a delta
    disk), ``data`` = snapshot_created to point_committed (CBT query, tasks through
    proxies and writers, commit).
    """
    created: dict[str, float] = {}
    committed: dict[str, float] = {}
    finished: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        ev, vm = e.get("event"), e.get("vm_moref") or e.get("vm")
        if ev not in ("snapshot_created", "point_committed", "vm_finished") or not vm:
            continue
        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        {"snapshot_created": created, "point_committed": committed, "vm_finished": finished}[
            ev
        ].setdefault(vm, ts)
    snap = data = 0.0
    for vm in vms:
        m = vm.get("moref", "")
        if m in created and m in finished:
            snap += float(vm.get("seconds", 0)) - (finished[m] - created[m])
            data += committed.get(m, finished[m]) - created[m]
    return {
        "job_seconds": round(job, 2),
        "process_overhead_seconds": round(wall - job, 2),  # start-up, login, exit
        "vm_snapshot_seconds_sum": round(snap, 1),
        "vm_data_seconds_sum": round(data, 1),
    }


class Ours:
    """The vmbackup stack on the lab, with per-process CPU and metrics around each job."""

    def __init__(
        self,
        lab: Lab,
        work: Path,
        transport: str,
        level: int,
        perf_full: str | None = None,
        chunk_files: bool = False,
    ) -> None:
        self.lab = lab
        spec = StackSpec(
            transport=transport,
            compression_level=level,
            chunk_files=chunk_files,
            env=bytecode_env(work),
        )
        self.stack = Stack(lab, work, spec)
        self.broker_pid = broker_pid()
        self.perf_full = perf_full

    def sample(self) -> dict[str, float]:
        s: dict[str, float] = {"cpu:lab": proc_cpu(self.lab.pid)}
        if self.broker_pid:
            s["cpu:broker (shared)"] = proc_cpu(self.broker_pid)
        for p in self.stack.procs.values():
            if p.popen is None:
                continue
            s[f"cpu:{p.name}"] = proc_cpu(p.popen.pid)
            s[f"sys_cpu:{p.name}"] = proc_sys_cpu(p.popen.pid)  # the kernel's share of it
            s[f"rchar:{p.name}"] = proc_io(p.popen.pid).get("rchar", 0)
            # peak resident memory since start (what k8s/ sizes its limits from)
            s[f"peak_rss_mib:{p.name}"] = proc_memory(p.popen.pid)["VmHWM"] / 2**20
            for k, v in scrape(p.metrics_port).items():
                s[k] = s.get(k, 0.0) + v
        return s

    def backup(self, what: str) -> RunResult:
        before = self.sample()
        la = load1()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        perf = self.start_perf() if what == "full" else None
        t0 = time.monotonic()
        popen, log_path, report_path = self.stack.backup_popen("all")
        try:
            rc = popen.wait(timeout=3600)
        except BaseException:
            # The coordinator runs in its own session: stop it too when we are stopped.
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        finally:
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait()
        r = self.stack.finish_run(rc, report_path, log_path, time.monotonic() - t0)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = self.sample()
        delta = {
            k: round(after[k] if k.startswith("peak_") else after[k] - before.get(k, 0.0), 3)
            for k in after
        }
        delta["cpu:coordinator"] = round(
            ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 3
        )
        disks = [d for vm in r.report.get("vms", []) for d in vm.get("disks", [])]
        vms = r.report.get("vms", [])
        ok = r.returncode == 0 and all(vm.get("status") == "ok" for vm in vms)
        # The pipeline's own processes; the lab and the shared broker are shown apart.
        own = ("cpu:proxy", "cpu:writer", "cpu:coordinator")
        cpu = sum(v for k, v in delta.items() if k.startswith(own))
        res = RunResult(
            "vmbackup",
            what,
            r.seconds,
            cpu,
            sum(int(d.get("bytes_read", 0)) for d in disks),
            la,
            load1(),
            ok=ok,
            note="" if ok else f"exit {r.returncode}, see {r.log_path}",
        )
        res.detail = {
            "bytes_sent": sum(int(d.get("bytes_sent", 0)) for d in disks),
            "bytes_planned": sum(int(d.get("bytes_planned", 0)) for d in disks),
            "modes": sorted({str(d.get("mode")) for d in disks}),
            "vm_seconds_max": max((float(vm.get("seconds", 0)) for vm in vms), default=0.0),
            "vm_seconds_sum": round(sum(float(vm.get("seconds", 0)) for vm in vms), 1),
            "tasks": sum(int(d.get("tasks", 0)) for d in disks),
            **delta,
        }
        res.detail.update(timeline(r.log_path, vms, r.seconds, float(r.report.get("seconds", 0))))
        self.last_report = r.report
        return res

    def start_perf(self) -> subprocess.Popen[bytes] | None:
        """System-wide `perf record` (with call graphs) of the full job, for `perf report`."""
        if not self.perf_full:
            return None
        cmd = ["perf", "record", "-a", "-g", "-F", "499", "-o", self.perf_full]
        perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # perf needs a moment before it samples
        return perf

    def restore(self, vm: str, key: int, out: Path, capacity: int) -> RunResult:
        point = next(
            v["point_id"] for v in self.last_report["vms"] if v["moref"] == vm or v["name"] == vm
        )
        env = {
            **os.environ,
            **self.stack.spec.env,  # the compiled bytecode
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        cmd = [sys.executable, "-m", "vmbackup", "restore", "--repo", str(self.stack.repo)]
        m = run([*cmd, "--point", point, "--disk", str(key), "--out", str(out)], env)
        return restore_result("vmbackup", m, capacity, "fsync included")


def restore_result(tool: str, m: Measured, capacity: int, note: str) -> RunResult:
    return RunResult(
        tool, "restore", m.wall, m.cpu, m.rchar, m.load_before, m.load_after, note=note
    )


def image_bytes(tool: Tool, disks: list[Disk]) -> int:
    """What a tool reads of these images: all of each file, or only its data with --sparse.

    restic and borg skip files whose mtime/ctime/size/inode did not change and read a
    changed file whole; borg's fixed chunker with --sparse skips holes (SEEK_DATA).
    """
    if isinstance(tool, Borg) and tool.chunker:
        return sum(os.stat(d.path).st_blocks * 512 for d in disks)
    return sum(os.stat(d.path).st_size for d in disks)


def tool_result(tool: Tool, what: str, m: Measured, read: int) -> RunResult:
    r = RunResult(tool.name, what, m.wall, m.cpu, read, m.load_before, m.load_after)
    # rchar also counts what the tool reads back of its own files (restic re-reads each
    # temp pack file to store it), so it is kept beside the image bytes, not instead.
    r.detail["rchar"] = m.rchar
    return r


def show(r: RunResult) -> None:
    extra = f", repo {r.repo_bytes / MiB:.0f} MiB" if r.repo_bytes else ""
    print(
        f"  {r.tool:<10} {r.what:<11} {r.wall:7.1f} s  CPU {r.cpu:7.1f} s  "
        f"read {r.bytes_read / MiB:9.0f} MiB{extra}  load {r.load_before:.2f}->{r.load_after:.2f}"
        f"{'' if r.ok else '  FAILED ' + r.note}",
        flush=True,
    )


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.results: list[RunResult] = []
        self.failures: list[str] = []
        self.lab_snapshots: dict[str, float] = {}

    def record(self, r: RunResult) -> RunResult:
        self.results.append(r)
        show(r)
        if not r.ok:
            self.failures.append(f"{r.tool} {r.what}: {r.note}")
        return r

    def check_restore(self, tool: str, got: Path, image: Path, capacity: int) -> bool:
        same = sha256_file(got, capacity) == sha256_file(image, capacity)
        if not same:
            self.failures.append(f"{tool} restore: restored bytes differ from the image")
        got.unlink(missing_ok=True)
        return same

    def ours(
        self, lab: Lab, disks: list[Disk], changes: list[ChangeSet], rdisk: tuple[str, int, Disk]
    ) -> None:
        print(f"vmbackup ({self.args.transport} transport):", flush=True)
        ours = Ours(
            lab,
            self.work / "vmbackup",
            self.args.transport,
            self.args.compression_level,
            self.args.perf_full,
            self.args.chunk_files,
        )
        with ours.stack:
            full = ours.backup("full")
            full.detail["compression"] = f"zstd,{self.args.compression_level}"
            self.record(full)
            full.repo_bytes, full.repo_du = dir_size(ours.stack.repo)
            for cs, what in zip(changes, ("incremental", "worst"), strict=True):
                cs.apply(disks)
                self.record(ours.backup(what))
            vm, key, d = rdisk
            out = self.work / "restore-vmbackup.img"
            r = ours.restore(vm, key, out, d.capacity)
            r.ok = self.check_restore("vmbackup", out, d.path, d.capacity)
            self.record(r)
            for cs in reversed(changes):
                cs.revert(disks)
        if self.args.keep_logs:
            for sub in ("logs", "reports"):
                shutil.copytree(
                    ours.stack.workdir / sub, Path(self.args.keep_logs) / sub, dirs_exist_ok=True
                )
        shutil.rmtree(self.work / "vmbackup", ignore_errors=True)
        la = load1()
        create, remove = lab_snapshot_seconds(lab)
        self.lab_snapshots = {"create": create, "remove": remove}
        print(
            f"  lab alone: snapshot of every VM, one at a time: create {create:.1f} s, "
            f"remove {remove:.1f} s (load {la:.2f}->{load1():.2f})",
            flush=True,
        )

    def ours_full_at(self, lab: Lab, level: int) -> None:
        """Only a full again, into a fresh repository at zstd ``level`` (``--also-level``):
        for the matched-compression table."""
        name = f"vmbackup-zstd{level}"
        print(f"{name} (full only, {self.args.transport} transport):", flush=True)
        work = self.work / name
        ours = Ours(lab, work, self.args.transport, level, None, self.args.chunk_files)
        with ours.stack:
            full = ours.backup("full")
            full.tool = name
            full.detail["compression"] = f"zstd,{level}"
            full.repo_bytes, full.repo_du = dir_size(ours.stack.repo)
            self.record(full)
        shutil.rmtree(work, ignore_errors=True)

    def theirs(self, tool: Tool, disks: list[Disk], changes: list[ChangeSet], rdisk: Disk) -> None:
        print(f"{tool.name}:", flush=True)
        files = [d.path for d in disks]
        try:
            tool.init()
            m = tool.backup(files, "full")
            full = tool_result(tool, "full", m, image_bytes(tool, disks))
            if isinstance(tool, Borg):
                full.detail["compression"] = tool.compression
            self.record(full)
            full.repo_bytes, full.repo_du = dir_size(tool.repo)
            for i, (cs, what) in enumerate(zip(changes, ("incremental", "worst"), strict=True)):
                cs.apply(disks)
                m = tool.backup(files, f"incr{i}")
                touched = [disks[j] for j in sorted(cs.disks_touched())]
                self.record(tool_result(tool, what, m, image_bytes(tool, touched)))
            if isinstance(tool, Restic):
                target = self.work / "restic-restore"
                m = tool.restore(rdisk.path, target)
                got = target / rdisk.path.relative_to("/")
                t0 = time.perf_counter()
                fd = os.open(got, os.O_RDONLY)
                os.fsync(fd)  # ours fsyncs before it exits; show restic's figure with it too
                os.close(fd)
                r = restore_result(
                    tool.name, m, rdisk.capacity, f"fsync after: {time.perf_counter() - t0:.1f} s"
                )
                r.detail["fsync_seconds"] = time.perf_counter() - t0
                r.ok = self.check_restore(tool.name, got, rdisk.path, rdisk.capacity)
                self.record(r)
                shutil.rmtree(target, ignore_errors=True)
        finally:
            for cs in reversed(changes):
                cs.revert(disks)
            tool.cleanup()


def lab_snapshot_seconds(lab: Lab) -> tuple[float, float]:
    """Create and remove a snapshot of every VM, one at a time: (create s, remove s).

    This is what the simulator alone costs a job (it copies and hashes every disk at
    CreateSnapshot); ESXi instead switches the VM to a delta disk in about a second.
    """
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = lab.connect()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    create = remove = 0.0
    try:
        for vm in view.view:
            t0 = time.perf_counter()
            WaitForTask(vm.CreateSnapshot_Task("bench", "", False, False))
            t1 = time.perf_counter()
            WaitForTask(vm.snapshot.currentSnapshot.RemoveSnapshot_Task(False))
            create += t1 - t0
            remove += time.perf_counter() - t1
    finally:
        view.Destroy()
    return create, remove


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_for_quiet(limit: float, max_seconds: float, period: float = 20.0) -> None:
    """Block until the 1-minute load average was below ``limit`` at 4 checks in a row."""
    t0, quiet = time.monotonic(), 0
    while time.monotonic() - t0 < max_seconds:
        la = load1()
        quiet = quiet + 1 if la < limit else 0
        print(f"  waiting for load < {limit}: {la:.2f} ({quiet}/4)", flush=True)
        if quiet >= 4:
            return
        time.sleep(period)
    print(f"  load stayed above {limit} for {max_seconds / 60:.0f} min; running anyway", flush=True)


def lab_spec(scale: str) -> tuple[LabSpec, int]:
    restore, sizes = disk_sizes(scale)
    spec = LabSpec(
        clusters=2,
        hosts_per_cluster=3,
        vms_per_host=4,
        disks_per_vm=2,
        disk_sizes=sizes,
        shared_datastores=1,
    )
    return spec, restore


def lab_disks(lab: Lab, layout: dict[tuple[str, int], list[tuple[int, int, str]]]) -> list[Disk]:
    out = []
    for vm in lab.vms():
        for d in vm["disks"]:
            alloc = sum(n for _, n, _ in layout.get((vm["name"], d["key"]), []))
            out.append(Disk(lab.local_path(d["file"]), int(d["capacity"]), alloc))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", choices=("dev", "full"), default="dev")
    ap.add_argument("--transport", choices=("file", "http", "nbd"), default="file")
    ap.add_argument("--compression-level", type=int, default=3, help="repository zstd level")
    ap.add_argument(
        "--also-level",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also a full of ours at zstd level N (fresh repository; repeatable)",
    )
    ap.add_argument(
        "--tools",
        default="restic,borg,borg-fixed",
        help="competitors, in order (borg / borg-fixed with -zstdN: zstd level N, not lz4)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default: $TMPDIR)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write every figure as JSON")
    ap.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="L",
        help="first wait until the 1-minute load average stays below L for a minute",
    )
    ap.add_argument("--wait-max", type=float, default=60.0, metavar="MIN", help="then run anyway")
    ap.add_argument(
        "--chunk-files", action="store_true", help="a format-2 repository (a file per chunk)"
    )
    ap.add_argument("--keep-logs", default=None, metavar="DIR", help="copy the stack's logs here")
    ap.add_argument(
        "--perf-full",
        default=None,
        metavar="FILE",
        help="record the full job system-wide with `perf record -a -g` into FILE",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure the design's CPU floor on the same images (bench/e2e_floor.py)",
    )
    args = ap.parse_args(argv)
    setup_logging("warning", "console")
    # SIGTERM unwinds like Ctrl-C, so the stack, the lab and the temp data are cleaned up.
    signal.signal(signal.SIGTERM, _interrupted)
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.wait_max * 60)
    names = [n for n in args.tools.split(",") if n]
    spec, restore_cap = lab_spec(args.scale)
    work = Path(tempfile.mkdtemp(prefix="e2e-bench-", dir=args.dir))
    bench = Bench(args, work)
    floor: Floor | None = None
    t_start = time.monotonic()
    print(f"e2e bench, scale {args.scale}, work dir {work}, load {os.getloadavg()}", flush=True)
    try:
        with Lab.start(spec, timeout=600) as lab:
            t0 = time.monotonic()
            fill = lab.fill_disks(seed=args.seed, template_vms=spec.vm_count // 3)
            disks = lab_disks(lab, fill.layout)
            allocated = sum(d.allocated for d in disks)
            capacity = sum(d.capacity for d in disks)
            kinds = ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in fill.bytes_by_kind.items())
            print(
                f"lab: {spec.vm_count} VMs, {len(disks)} disks, capacity {capacity / GiB:.2f} GiB, "
                f"allocated {allocated / GiB:.2f} GiB ({kinds}); filled in "
                f"{time.monotonic() - t0:.0f} s",
                flush=True,
            )
            # The lab's CBT state as a running VM's would be (ESXi tracks writes as they
            # happen): otherwise the simulator hashes every disk inside our timed full.
            settled = lab.settle()
            print(f"lab: CBT state settled in {settled['seconds']:.1f} s", flush=True)
            changes = [
                guest_runs(disks, CHANGE_FRACTION, args.seed),
                isolated_writes(disks, CHANGE_FRACTION, args.seed),
            ]
            for cs in changes:
                print(
                    f"change set {cs.name}: {len(cs.writes)} writes, "
                    f"{cs.changed_bytes() / MiB:.1f} MiB changed in "
                    f"{len(cs.disks_touched())} disks",
                    flush=True,
                )
            vm_r, d_r = next(
                (vm, d) for vm in lab.vms() for d in vm["disks"] if d["capacity"] == restore_cap
            )
            rdisk = next(d for d in disks if d.path == lab.local_path(d_r["file"]))
            bench.ours(lab, disks, changes, (vm_r["moref"], int(d_r["key"]), rdisk))
            for level in args.also_level:
                bench.ours_full_at(lab, level)
            if args.floor:
                floor = measure_floor(
                    [d.path for d in disks], 1 << 20, args.compression_level, work
                )
                print("\n".join(floor_table(floor, None, {})), flush=True)
            for tool in make_tools(work, names):
                bench.theirs(tool, disks, changes, rdisk)
            meta = {
                "scale": args.scale,
                "transport": args.transport,
                "vms": spec.vm_count,
                "disks": len(disks),
                "capacity": capacity,
                "allocated": allocated,
                "bytes_by_kind": fill.bytes_by_kind,
                "changed": {cs.name: cs.changed_bytes() for cs in changes},
                "changed_disks": {cs.name: len(cs.disks_touched()) for cs in changes},
                "restore_capacity": restore_cap,
                "seconds_total": round(time.monotonic() - t_start, 1),
                "lab_snapshot_seconds": bench.lab_snapshots,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_tables(meta, bench.results)
    if floor is not None:
        meta["floor"] = floor.as_detail()
        fulls = {r.tool: r.cpu for r in bench.results if r.what == "full"}
        peers = {t: c for t, c in fulls.items() if not t.startswith("vmbackup")}
        print("\n".join(floor_table(floor, fulls.get("vmbackup"), peers)))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"meta": meta, "results": [asdict(r) for r in bench.results]}, indent=1)
        )
    if bench.failures:
        print("\nFAILED:\n  " + "\n  ".join(bench.failures))
        return 1
    return 0


def print_tables(meta: dict[str, Any], results: list[RunResult]) -> None:
    by = {(r.tool, r.what): r for r in results}
    tools = list(dict.fromkeys(r.tool for r in results))
    print(
        f"\n{meta['vms']} VMs, {meta['disks']} disks, {meta['capacity'] / GiB:.2f} GiB capacity, "
        f"{meta['allocated'] / GiB:.2f} GiB allocated; transport {meta['transport']}; "
        f"total {meta['seconds_total']:.0f} s"
    )
    ours = by.get(("vmbackup", "full"))
    print("\n| tool | full s | ours / theirs | CPU s | read GiB | repo MiB | du MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for t in tools:
        r = by.get((t, "full"))
        if r is None:
            continue
        ratio = f"{ours.wall / r.wall:.2f}" if ours else "-"
        print(
            f"| {t} | {r.wall:.1f} | {ratio} | {r.cpu:.1f} | {r.bytes_read / GiB:.2f} | "
            f"{r.repo_bytes / MiB:.0f} | {r.repo_du / MiB:.0f} | "
            f"{r.load_before:.2f}→{r.load_after:.2f} |"
        )
    for what, label in (("incremental", "runs 64 KiB-8 MiB"), ("worst", "isolated 64 KiB")):
        changed = meta["changed"][
            "runs 64 KiB-8 MiB" if what == "incremental" else "isolated 64 KiB"
        ]
        ours = by.get(("vmbackup", what))
        print(f"\nIncremental, 1 % changed as {label}: {changed / MiB:.1f} MiB changed")
        print("| tool | s | theirs / ours | CPU s | read MiB | read / changed | load |")
        print("|---|---|---|---|---|---|---|")
        for t in tools:
            r = by.get((t, what))
            if r is None:
                continue
            speed = f"{r.wall / ours.wall:.1f}x" if ours else "-"
            print(
                f"| {t} | {r.wall:.1f} | {speed} | {r.cpu:.1f} | {r.bytes_read / MiB:.0f} | "
                f"{r.bytes_read / changed:.1f} | {r.load_before:.2f}→{r.load_after:.2f} |"
            )
    cap = meta["restore_capacity"]
    print(f"\nRestore of one {cap / GiB:.2f} GiB disk (newest point), checked byte for byte")
    print("| tool | s | MB/s (capacity / s) | bit-exact | note | load |")
    print("|---|---|---|---|---|---|")
    for t in tools:
        r = by.get((t, "restore"))
        if r is not None:
            print(
                f"| {t} | {r.wall:.1f} | {cap / r.wall / 1e6:.0f} | {r.ok} | {r.note} | "
                f"{r.load_before:.2f}→{r.load_after:.2f} |"
            )
    snaps = meta.get("lab_snapshot_seconds") or {}
    if snaps:
        print(
            f"\nlab alone, snapshot create + remove of every VM one at a time: "
            f"{snaps['create']:.1f} s + {snaps['remove']:.1f} s"
        )
    print_matched(results)
    print("\nvmbackup per run (deltas over the run: CPU s per process, metrics summed):")
    for r in results:
        if r.tool.startswith("vmbackup") and r.what != "restore":
            print(f"  {r.what}: {json.dumps(r.detail, sort_keys=True)}")
    rchar = {f"{r.tool} {r.what}": r.detail["rchar"] for r in results if "rchar" in r.detail}
    print(f"competitors' rchar (bytes read by read(), own files included): {json.dumps(rchar)}")


def print_matched(results: list[RunResult]) -> None:
    """Every full of ours beside every full of borg's, each with its compression."""
    fulls = [r for r in results if r.what == "full" and "compression" in r.detail]
    ours = [r for r in fulls if r.tool.startswith("vmbackup")]
    borgs = [r for r in fulls if r.tool.startswith("borg")]
    if not ours or not borgs or len(ours) + len(borgs) < 3:
        return
    print("\nFulls by compression (ours / borg's, same run, same images):")
    print("| ours | borg | wall ratio | CPU ratio | ours CPU | borg CPU | repo MiB ours/borg |")
    print("|---|---|---|---|---|---|---|")
    for o in ours:
        for b in borgs:
            print(
                f"| {o.tool} {o.detail['compression']} | {b.tool} {b.detail['compression']} | "
                f"{o.wall / b.wall:.2f} | {o.cpu / b.cpu:.2f} | {o.cpu:.1f} | {b.cpu:.1f} | "
                f"{o.repo_bytes / MiB:.0f} / {b.repo_bytes / MiB:.0f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
