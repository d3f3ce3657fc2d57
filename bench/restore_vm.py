"""restore-vm of one lab VM: its disk over /folder (one PUT of every byte) against NBD
(only the chunks with data, through nbdkit's file plugin), same point, same run.

    .venv/bin/python -m bench.restore_vm [--gib 4] [--used 0.25] [--repeat 2]

One VM with one disk of ``--gib``, ``--used`` of it written by lab.fill_disks (60 %
text-like, 40 % random; the rest never written), backed up once by the real stack
(`vmbackup backup`, file transport). Then `vmbackup restore-vm` runs ``--repeat`` times per
transport, alternating, each as a process, and each restored flat file is compared byte for
byte with the backed-up disk. Reported: wall time, disk capacity / time, bytes sent (the
result's ``bytes_sent``) and what the restored flat file allocates on the datastore.
All temp data is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.e2e_backup import sha256_file
from common.logging import setup_logging
from lab import Lab, LabSpec
from lab.guest import FillMix
from lab.stack import Stack, StackSpec

GiB = 1 << 30
MiB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="disk capacity")
    ap.add_argument("--used", type=float, default=0.25, help="share of the disk written")
    ap.add_argument("--repeat", type=int, default=2, help="restores per transport")
    ap.add_argument("--dir", default=None, help="parent of the temp dir")
    args = ap.parse_args(argv)
    setup_logging("warning", "console")
    cap = int(args.gib * GiB) // MiB * MiB
    work = Path(tempfile.mkdtemp(prefix="bench-restore-vm-", dir=args.dir))
    rows: list[tuple[str, float, int, int, bool]] = []
    try:
        spec = LabSpec(
            clusters=1, hosts_per_cluster=1, vms_per_host=1, disks_per_vm=1, disk_sizes=[cap]
        )
        with Lab.start(spec) as lab:
            mix = FillMix(
                template=0.0, compressible=0.6 * args.used, unique=0.4 * args.used, zeros=0.0
            )
            fill = lab.fill_disks(seed=11, mix=mix)
            print(f"disk {cap / GiB:.2f} GiB, written: {fill.bytes_by_kind}")
            lab.settle()
            [vm] = lab.vms()
            src = lab.local_path(vm["disks"][0]["file"])
            want = sha256_file(src, cap)
            ds = vm["disks"][0]["file"].split("]", 1)[0][1:]
            with Stack(
                lab, work / "stack", StackSpec(writers=1, proxies=1, transport="file")
            ) as st:
                run = st.backup("all")
                [point] = [v["point_id"] for v in run.report["vms"] if v.get("point_id")]
                print(f"backup {run.seconds:.1f} s, point {point}")
                for i in range(args.repeat):
                    for transport in ("http", "nbd"):
                        name = f"restored-{transport}-{i}"
                        t0 = time.monotonic()
                        res = st.restore_vm(point, ds, name, transport)
                        seconds = time.monotonic() - t0
                        [disk] = res["disks"]
                        flat = lab.local_path(disk["file"])
                        allocated = os.stat(flat).st_blocks * 512
                        exact = sha256_file(flat, cap) == want
                        rows.append((transport, seconds, disk["bytes_sent"], allocated, exact))
                        print(f"  {transport} {seconds:.2f} s, sent {disk['bytes_sent']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nrestore-vm of one {cap / GiB:.2f} GiB disk, {args.used:.0%} written")
    print("| transport | s | MB/s (capacity / s) | MiB sent | MiB allocated | bit-exact |")
    print("|---|---|---|---|---|---|")
    for transport, seconds, sent, allocated, exact in rows:
        print(
            f"| {transport} | {seconds:.2f} | {cap / seconds / 1e6:.0f} | {sent / MiB:.0f} | "
            f"{allocated / MiB:.0f} | {exact} |"
        )
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
