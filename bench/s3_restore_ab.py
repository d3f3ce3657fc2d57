"""`vmbackup restore` from one S3 repository by two source trees in turn (A/B).

    .venv/bin/python -m bench.s3_restore_ab --base /work/wt/s3perf-base [--rounds 4]

bench/e2e_s3.py's lab and stack (4 VMs of one 256 MiB disk, the lab's RGW), ONE full
backup by this tree into s3://BUCKET/ab, then ``--rounds`` rounds of a restore of the
first VM's disk by this tree and by ``--base`` (another checkout, e.g. a worktree of
main), alternating, each a process with its own cache directory (the first round fills
it and is left out of the means). Per restore: wall and CPU s of the process, the time
``restore_disk`` itself reported, the load average; checked bit-exact. The restore is
the only thing that differs: the same bucket, the same point, the same machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from bench.e2e_backup import Ours, sha256_file
from bench.e2e_tools import ROOT, run
from lab import Lab, LabSpec, ceph_rgw
from lab.demo_s3 import empty_repository, s3_config_file
from lab.stack import Stack, StackSpec
from repository.s3_config import load_s3_config
from repository.s3_repo_storage import S3RepoStorage

MiB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the other source tree")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    if not (args.base / "vmbackup").is_dir():
        raise SystemExit(f"--base {args.base}: not a vmbackup source tree (no vmbackup/)")
    rgw_dir = Path(os.environ.get("VMBACKUP_BENCH_RGW_DIR") or ceph_rgw.DEFAULT_DIR)
    work = Path(tempfile.mkdtemp(prefix="s3-restore-ab-"))
    info = ceph_rgw.start(rgw_dir)
    trees = {"this": ROOT, "base": args.base.resolve()}
    times: dict[str, list[tuple[float, float, float]]] = {t: [] for t in trees}
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        cfg = s3_config_file(work, info)
        url = f"s3://{bucket}/ab"
        S3RepoStorage(load_s3_config(cfg, f"s3://{bucket}")).create_bucket()
        spec = LabSpec(clusters=1, hosts_per_cluster=2, vms_per_host=2, disk_sizes=[256 * MiB])
        with Lab.start(spec) as lab:
            lab.fill_disks(seed=7, template_vms=0)
            lab.settle()
            ours = Ours(lab, work / "s3", "http", 3)
            ours.stack = Stack(lab, work / "s3", StackSpec(s3_url=url, s3_config=cfg))
            with ours.stack:
                if not ours.backup("full").ok:
                    raise SystemExit("the full backup failed")
            vm = ours.last_report["vms"][0]
            disk = vm["disks"][0]
            files = [d["file"] for v in lab.vms() if v["moref"] == vm["moref"]
                     for d in v["disks"] if d["key"] == disk["key"]]  # fmt: skip
            image = lab.local_path(files[0])
            cap = int(disk["capacity"])
            want = sha256_file(image, cap)
            out = work / "out.img"
            for rnd in range(args.rounds):
                for name, root in trees.items():
                    cmd = [sys.executable, "-m", "vmbackup", "restore", "--repo", url,
                           "--s3-config", str(cfg), "--cache-dir", str(work / f"cache-{name}"),
                           "--point", vm["point_id"], "--disk", str(disk["key"]),
                           "--out", str(out)]  # fmt: skip
                    m = run(cmd, {**os.environ, "PYTHONPATH": str(root)}, cwd=root)
                    ok = sha256_file(out, cap) == want
                    out.unlink()
                    found = re.search(r"zero, ([0-9.]+) s", m.output)
                    inner = float(found.group(1)) if found else float("nan")
                    print(f"| {rnd} | {name} | {m.wall:.2f} | {m.cpu:.2f} | {inner:.2f} | {ok} |"
                          f" {m.load_before:.1f}→{m.load_after:.1f} |", flush=True)  # fmt: skip
                    if not ok:
                        raise SystemExit(f"{name}: the restored image differs")
                    if rnd:
                        times[name].append((m.wall, m.cpu, inner))
        empty_repository(S3RepoStorage(load_s3_config(cfg, url)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not info.reused:
            ceph_rgw.stop(rgw_dir)
    for name, rows in times.items():
        n = max(1, len(rows))
        print(f"{name}: mean of rounds 1..: wall {sum(r[0] for r in rows) / n:.2f} s,"
              f" CPU {sum(r[1] for r in rows) / n:.2f} s,"
              f" restore_disk {sum(r[2] for r in rows) / n:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
