"""`make demo`: back up a simulated datacenter through the whole distributed pipeline.

1. starts the vSphere lab (VMware's vcsim + CBT): 2 clusters of 3 hosts, 24 VMs with
   one or two disks, several cloned from one template, one disk size not a multiple
   of the chunk size; fills the disks with a realistic mix;
2. starts 2 writers and 2 proxies as separate processes (each with its /metrics port),
   in a private vhost of the running RabbitMQ;
3. runs a full backup (a coordinator process), writes guest data into some VMs, runs an
   incremental (CBT), showing progress per VM and overall;
4. restores every disk of the newest and of the older point and compares each byte
   with what the disk held when its snapshot was taken; restores one VM as a new VM;
5. prints a summary table, and exits non-zero on any mismatch. Nothing is left behind.

    .venv/bin/python -m lab.demo [--vms-per-host 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import amqp
from common.amqp import BrokerParams, Consumer, Delivery
from common.logging import setup_logging
from common.messages import JobEvent, Message
from common.progress import ProgressBoard
from coordinator.job_progress import JobProgress
from lab import Lab, LabSpec, demo_files
from lab.checks import disk_digests, lab_snapshots, same_content, vm_disk_files
from lab.demo_s3 import run_s3_section
from lab.stack import BackupRun, Stack, StackError, StackSpec
from vmbackup.progress import progress_board

MiB = 1 << 20


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """A backup's job events, as they arrive on the events exchange: VMs done and data
    read on the command's progress display (vmbackup/progress.py: bars on a terminal,
    lines elsewhere), a line per VM, and the zero and known bytes for the summary."""

    def __init__(self, stack: Stack, board: ProgressBoard, label: str) -> None:
        self.zero = 0
        self.known = 0
        self.job = JobProgress(
            board.task(f"{label}: VMs", "items"), board.task(f"{label}: data read"), board.note
        )
        params = BrokerParams(url=stack.broker_url)

        def declare(ch: Any) -> None:
            amqp.declare_base(ch, params)

        self.consumer = Consumer(
            params,
            [],
            self.on_event,
            declare=declare,
            name="demo-progress",
            exclusive_reply_queue=True,
            exclusive_bindings=[(amqp.EXCHANGE_EVENTS, "#")],
            workers=1,
            prefetch=256,
        )
        self.consumer.start()

    def on_event(self, msg: Message, _d: Delivery) -> None:
        if not isinstance(msg, JobEvent):
            return
        self.job.event(msg.event, msg.vm, msg.fields)
        if msg.event == "task-done":
            self.zero += int(msg.fields.get("bytes_zero", 0) or 0)
            self.known += int(msg.fields.get("bytes_known", 0) or 0)

    def close(self) -> None:
        self.consumer.stop(timeout=10)


def run_backup(stack: Stack, label: str, policy: str = "all") -> tuple[BackupRun, Progress]:
    with progress_board(prog="demo") as board:
        progress = Progress(stack, board, label)
        try:
            run = stack.backup(policy)
        finally:
            progress.close()
    if run.returncode != 0:
        print(f"  backup exited {run.returncode}; coordinator log: {run.log_path}")
    return run, progress


def write_guest_changes(lab: Lab, seed: int, fraction: float) -> int:
    """Guest-like writes (runs of 64 KiB to 8 MiB) into about half the VMs."""
    rng = random.Random(seed)
    written = 0
    vms = lab.vms()
    for vm in vms[::2]:
        for d in vm["disks"]:
            budget = int(d["capacity"] * fraction)
            while budget > 0:
                length = min(rng.choice([64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20]), budget)
                length = min(length, d["capacity"])
                offset = rng.randrange(0, d["capacity"] - length + 1) // 4096 * 4096
                lab.write_guest_data(vm["moref"], d["key"], offset, rng.randbytes(length))
                written += length
                budget -= length
    return written


def restore_and_compare(
    stack: Stack, run: BackupRun, expected: dict[tuple[str, int], str], label: str
) -> list[str]:
    """Restore every disk of every point of ``run``; return the mismatches."""
    bad: list[str] = []
    checked = 0
    vms = run.report.get("vms", [])
    total = sum(int(d.get("capacity", 0)) for vm in vms if vm.get("point_id") for d in vm["disks"])
    restored = 0
    with progress_board(prog="demo") as board:
        disks, data = board.task(f"{label}: disks", "items"), board.task(f"{label}: restored")
        n_disks = sum(len(vm["disks"]) for vm in vms if vm.get("point_id"))
        for vm in vms:
            if not vm.get("point_id"):
                bad.append(f"{label}: {vm['name']}: no restore point ({vm.get('reason', '')})")
                continue
            for d in vm["disks"]:
                try:
                    digest = stack.restore_digest(vm["point_id"], d["key"])
                except StackError as exc:
                    bad.append(f"{label}: {vm['name']} disk {d['key']}: {exc}")
                else:
                    if digest != expected.get((vm["moref"], d["key"])):
                        bad.append(f"{label}: {vm['name']} disk {d['key']}: restored bytes differ")
                checked += 1
                restored += int(d.get("capacity", 0))
                disks(checked, n_disks)
                data(restored, total)
    print(f"  {label}: {checked} disks restored and compared, {len(bad)} mismatches")
    return bad


def summary_row(label: str, run: BackupRun, progress: Progress) -> list[str]:
    vms = run.report.get("vms", [])
    disks = [d for vm in vms for d in vm.get("disks", [])]
    full = sum(1 for d in disks if d.get("mode") == "full")
    incr = sum(1 for d in disks if d.get("mode") == "incremental")
    cap = sum(int(d.get("capacity", 0)) for d in disks)
    read = sum(int(d.get("bytes_read", 0)) for d in disks)
    sent = sum(int(d.get("bytes_sent", 0)) for d in disks)
    ok = sum(1 for vm in vms if vm.get("status") == "ok")
    return [
        label,
        f"{ok}/{len(vms)}",
        str(len(disks)),
        f"{full}/{incr}",
        f"{human(read)} / {human(cap)}",
        human(sent),
        ratio(read - progress.zero, read - progress.zero - progress.known),
        ratio(read - progress.zero - progress.known, sent),
        f"{run.seconds:.1f}s",
        f"{read / max(run.seconds, 1e-6) / 1e6:.1f}",
    ]


def ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def print_table(rows: list[list[str]]) -> None:
    head = [
        "run",
        "VMs ok",
        "disks",
        "full/incr",
        "read / capacity",
        "sent to writers",
        "dedup",
        "compression",
        "time",
        "MB/s",
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="vmbackup demo on the vSphere lab")
    ap.add_argument("--vms-per-host", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", metavar="DIR", help="keep the repository and logs in DIR")
    ap.add_argument(
        "--chunk-files",
        action="store_true",
        help="a format-2 repository (a file per chunk) instead of packs",
    )
    ap.add_argument("--pack-size", type=int, default=None, metavar="BYTES", help="pack size")
    args = ap.parse_args(argv)
    setup_logging("warning", "console")

    spec = LabSpec(
        clusters=2,
        hosts_per_cluster=3,
        vms_per_host=args.vms_per_host,
        disks_per_vm=2,
        disk_sizes=[96 * MiB, 64 * MiB + 12345, 48 * MiB],
        shared_datastores=1,
    )
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vmbackup-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    rows: list[list[str]] = []
    t_start = time.monotonic()
    print(f"vmbackup demo: {spec.vm_count} VMs on 2 clusters of 3 hosts; work dir {work}")
    try:
        with Lab.start(spec) as lab:
            print(f"  lab (vcsim + CBT) at {lab.url}")
            report = lab.fill_disks(seed=args.seed, template_vms=spec.vm_count // 3)
            kinds = ", ".join(f"{k} {human(v)}" for k, v in report.bytes_by_kind.items())
            print(f"  disks filled: {kinds}")
            # ESXi tracks a running VM's writes as they happen: the lab's CBT state is
            # brought there before the first backup, not hashed inside it.
            settled = lab.settle()
            print(f"  CBT state of {settled['disks']} disks settled in {settled['seconds']:.1f} s")
            stack_spec = StackSpec(chunk_files=args.chunk_files, pack_size=args.pack_size)
            with Stack(lab, work, stack_spec) as stack:
                for p in stack.procs.values():
                    print(
                        f"  {p.name:<9} pid {p.popen.pid if p.popen else '-':<7} "
                        f"metrics http://127.0.0.1:{p.metrics_port}/metrics"
                    )
                print("full backup:")
                expected_full = disk_digests(lab)
                full, progress = run_backup(stack, "full")
                rows.append(summary_row("full", full, progress))
                if full.returncode != 0:
                    failures.append(f"full backup exited {full.returncode}")
                changed = write_guest_changes(lab, args.seed + 1, 0.01)
                print(f"guest writes: {human(changed)} in runs of 64 KiB to 8 MiB")
                print("incremental backup (CBT):")
                expected_incr = disk_digests(lab)
                incr, progress = run_backup(stack, "incremental")
                rows.append(summary_row("incremental", incr, progress))
                if incr.returncode != 0:
                    failures.append(f"incremental backup exited {incr.returncode}")
                print("restore and compare, byte for byte:")
                failures += restore_and_compare(stack, incr, expected_incr, "newest point")
                failures += restore_and_compare(stack, full, expected_full, "older point")
                for transport in ("http", "nbd"):
                    failures += restore_one_vm(stack, lab, incr, transport)
                failures += demo_files.file_restore(stack, lab, args.seed)
                print("verify:")
                try:
                    print("  " + stack.verify().strip()[-400:])
                except StackError as exc:
                    failures.append(f"verify found damage: {exc}")
            failures += run_s3_section(lab, work, rows)  # lab/demo_s3.py; VMBACKUP_DEMO_S3=0: off
            left = lab_snapshots(lab)
            if left:
                failures.append(f"snapshots left in the lab: {left}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nsummary:")
    print_table(rows)
    print(f"  total {time.monotonic() - t_start:.0f}s")
    if failures:
        print("\nFAILED:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("\nall restored disks are bit-exact; no snapshot, process or temp file left behind")
    return 0


def restore_one_vm(stack: Stack, lab: Lab, run: BackupRun, transport: str) -> list[str]:
    """Restore the first VM of ``run`` as a new VM (its disks written over ``transport``:
    one /folder PUT each, or only the data chunks through nbdkit) and compare its disk
    files."""
    vms = [vm for vm in run.report.get("vms", []) if vm.get("point_id")]
    if not vms:
        return ["restore-vm: no point to restore"]
    vm = vms[0]
    new_name = f"{vm['name']}-restored-{transport}"
    ds = sorted(lab.datastores)[0]
    print(f"restore-vm --transport {transport}: {vm['name']} -> {new_name} on [{ds}]")
    try:
        res = stack.restore_vm(vm["point_id"], ds, new_name, transport)
    except Exception as exc:
        return [f"restore-vm --transport {transport} failed: {exc}"]
    print(f"  {new_name} ({res['vm_moref']}) on host {res['host']}, {res['power_state']}")
    for d in res["disks"]:
        print(
            f"    disk {d['saved_key']} -> {d['file']}: {d['capacity']} bytes, "
            f"{d['bytes_sent']} sent in {d['seconds']:.2f} s"
        )
    bad = []
    new_disks = vm_disk_files(lab, new_name)
    if len(new_disks) != len(vm["disks"]):
        return [
            f"restore-vm: {new_name} has {len(new_disks)} disks, the point has {len(vm['disks'])}"
        ]
    img = stack.workdir / "cmp.img"
    for ds_path, d_old in zip(new_disks, vm["disks"], strict=True):
        img.unlink(missing_ok=True)  # restore refuses to overwrite the previous disk's copy
        stack.vmbackup(
            "restore",
            "--repo",
            str(stack.repo),
            "--point",
            vm["point_id"],
            "--disk",
            str(d_old["key"]),
            "--out",
            str(img),
        )
        if not same_content(lab.local_path(ds_path), img):
            bad.append(f"restore-vm: {new_name} {ds_path} differs from the point")
    img.unlink(missing_ok=True)
    print(f"  {new_name}: {len(new_disks)} disk files equal the point byte for byte: {not bad}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
