"""The e2e full backup into a repository on the lab's Ceph RGW vs a local directory, and a
restore from each, in the same run on the same lab.

    .venv/bin/python -m bench.e2e_s3 [--vms 4] [--mib 256] [--rounds 1] [--stream-part-mib 0]
        [--tls] [--keep DIR]   # then: python -m bench.job_tail DIR/s3-0 DIR/local-0

One lab (1 cluster, 2 hosts, ``--vms`` VMs of one disk of ``--mib`` MiB, lab.fill_disks'
mix, no clones), one RGW (lab/ceph_rgw.py, memstore; $VMBACKUP_BENCH_RGW_DIR or
/tmp/vmbackup-rgw). Per round, for each target in turn (local first on even rounds, S3
first on odd ones, so neither always runs on a warmer machine): a fresh repository, the
stack of 2 writers and 2 proxies (bench/e2e_backup.py's Ours: CPU of every process
sampled around the job), one full backup of every VM, the objects the repository holds
afterwards per GiB read, then `vmbackup restore` of one disk (timed as a process,
checked bit-exact). CPU s = the pipeline's processes (writers, proxies, coordinator);
the gateway's daemons (mon, osd, radosgw) are shown apart. Ratios are S3 / local of the
same round. All temp data and the bucket's objects are removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.e2e_backup import Ours, sha256_file
from bench.e2e_tools import ROOT, proc_cpu, run
from lab import Lab, LabSpec, ceph_rgw
from lab.demo_s3 import empty_repository, s3_config_file
from lab.stack import Stack, StackSpec
from repository.s3_config import load_s3_config
from repository.s3_repo_storage import S3RepoStorage

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Row:
    target: str
    round: int
    backup_wall: float
    backup_cpu: float
    read: int
    gateway_cpu: float
    objects: int
    restore_wall: float
    restore_cpu: float
    restore_ok: bool
    load: str
    roles: str = ""  # CPU s per role of the full: where S3's extra CPU goes


def gateway_cpu(info: ceph_rgw.RgwInfo) -> float:
    return sum(proc_cpu(pid) for pid in info.pids.values())


def objects_of(stack: Stack, url: str, config: Path) -> int:
    if not url:
        return sum(1 for p in stack.repo.rglob("*") if p.is_file())
    return sum(1 for _ in S3RepoStorage(load_s3_config(config, url)).list(""))


def one(
    lab: Lab, work: Path, target: str, rnd: int, info: ceph_rgw.RgwInfo, bucket: str, cfg: Path
) -> Row:
    url = f"s3://{bucket}/r{rnd}" if target == "s3" else ""
    spec = StackSpec(
        s3_url=url,
        s3_config=cfg if url else None,
        env={"VMBACKUP_WRITER__PACK_IDLE_SEAL": "2"},  # both: the same settings
    )
    ours = Ours(lab, work / f"{target}-{rnd}", "http", 3)
    ours.stack = Stack(lab, work / f"{target}-{rnd}", spec)
    with ours.stack as stack:
        g0 = gateway_cpu(info)
        full = ours.backup("full")
        g1 = gateway_cpu(info)
        if not full.ok:
            raise SystemExit(f"{target} full backup failed: {full.note}")
        objects = objects_of(stack, url, cfg)
        vm = ours.last_report["vms"][0]
        disk = vm["disks"][0]
        image = lab.local_path(next(d["file"] for v in lab.vms() if v["moref"] == vm["moref"]
                                    for d in v["disks"] if d["key"] == disk["key"]))  # fmt: skip
        cap = int(disk["capacity"])
        out = work / "restored.img"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "vmbackup", "restore", *stack.repo_args()]
        m = run([*cmd, "--point", vm["point_id"], "--disk", str(disk["key"]), "--out", str(out)],
                env)  # fmt: skip
        ok = sha256_file(out, cap) == sha256_file(image, cap)
        out.unlink()
        if url:
            empty_repository(S3RepoStorage(load_s3_config(cfg, url)))
    roles = " ".join(
        f"{k[4:]} {v:.2f}" for k, v in sorted(full.detail.items()) if k.startswith("cpu:")
    )
    return Row(target, rnd, full.wall, full.cpu, full.bytes_read, g1 - g0, objects, m.wall,
               m.cpu, ok, f"{full.load_before:.1f}→{m.load_after:.1f}", roles)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vms", type=int, default=4)
    ap.add_argument("--mib", type=int, default=256, help="disk size of each VM")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--stream-part-mib", type=int, default=0, help="the S3 config's stream_part_mib"
    )
    ap.add_argument(
        "--keep", type=Path, help="work in this (new) directory and keep it: the stack's logs"
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="S3 over the gateway's https endpoint (its own CA), as a deployment runs it: "
        "botocore then sends UNSIGNED-PAYLOAD instead of hashing every body for SigV4",
    )
    args = ap.parse_args(argv)
    rgw_dir = Path(os.environ.get("VMBACKUP_BENCH_RGW_DIR") or ceph_rgw.DEFAULT_DIR)
    if args.keep:
        args.keep.mkdir(parents=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="e2e-s3-"))
    rows: list[Row] = []
    info = ceph_rgw.start(rgw_dir)
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        cfg = s3_config_file(work, info, tls=args.tls)
        if args.stream_part_mib:
            cfg.write_text(cfg.read_text() + f"stream_part_mib = {args.stream_part_mib}\n")
        S3RepoStorage(load_s3_config(cfg, f"s3://{bucket}")).create_bucket()
        per_host = (args.vms + 1) // 2
        spec = LabSpec(clusters=1, hosts_per_cluster=2, vms_per_host=per_host,
                       disk_sizes=[args.mib * MiB])  # fmt: skip
        with Lab.start(spec) as lab:
            lab.fill_disks(seed=7, template_vms=0)
            lab.settle()
            for rnd in range(args.rounds):
                order = ("local", "s3") if rnd % 2 == 0 else ("s3", "local")
                for target in order:
                    rows.append(one(lab, work, target, rnd, info, bucket, cfg))
                    print(rows[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if not info.reused:
            ceph_rgw.stop(rgw_dir)
    print_table(rows, args)
    return 0 if all(r.restore_ok for r in rows) else 1


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\n{args.vms} VMs x {args.mib} MiB, {args.rounds} round(s), S3 over "
        f"{'https' if args.tls else 'http'}; load {os.getloadavg()}"
    )
    print("| target | round | full s | MB/s | ratio | CPU s (pipeline) | CPU s (gateway) |"
          " objects | objects/GiB read | restore s | restore MB/s | ratio | restore CPU s |"
          " bit-exact | load |")  # fmt: skip
    print("|" + "---|" * 15)
    local = {r.round: r for r in rows if r.target == "local"}
    for r in rows:
        base = local[r.round]
        speed = r.read / r.backup_wall / 1e6
        ratio = (r.read / r.backup_wall) / (base.read / base.backup_wall)
        cap = args.mib * MiB
        rratio = base.restore_wall / r.restore_wall
        print(
            f"| {r.target} | {r.round} | {r.backup_wall:.1f} | {speed:.1f} | {ratio:.2f} |"
            f" {r.backup_cpu:.1f} | {r.gateway_cpu:.1f} | {r.objects} |"
            f" {r.objects / (r.read / GiB):.0f} | {r.restore_wall:.1f} |"
            f" {cap / r.restore_wall / 1e6:.1f} | {rratio:.2f} | {r.restore_cpu:.1f} |"
            f" {r.restore_ok} | {r.load} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
