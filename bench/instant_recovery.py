"""Instant recovery against a copy restore: how soon the point's VM can run, same point,
same run.

    .venv/bin/python -m bench.instant_recovery [--gib 2] [--used 0.25] [--repeat 2]

One lab VM with one disk of ``--gib``, ``--used`` of it written by lab.fill_disks (60 %
text-like, 40 % random, the rest never written), backed up once by the real stack. Then,
``--repeat`` times, alternating:

- baseline: `vmbackup restore-vm --transport nbd` (the faster copy) and a power-on of the
  new VM: the VM can run when both are done;
- instant: `vmbackup restore-vm --instant` until vCenter shows the VM powered on, then
  SIGUSR1 (migrate to the lab's datastore) until the command exits; the moved disk is
  compared byte for byte with the backed-up disk.

Reported: wall seconds to a running VM, seconds of the migration, CPU seconds of the
vmbackup process and its children (nbdkit, nbdfuse; the lab's copy in vcsim is not in
it), the load average. All temp data is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e_backup import sha256_file
from common.logging import setup_logging
from lab import Lab, LabSpec
from lab.guest import FillMix
from lab.stack import ROOT, Stack, StackSpec

GiB = 1 << 30
MiB = 1 << 20


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _vm(si: Any, name: str) -> Any:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [], True)
    try:
        return next((v for v in view.view if getattr(v, "name", "") == name), None)
    finally:
        view.DestroyView()


def _baseline(st: Stack, si: Any, point: str, ds: str, name: str) -> tuple[float, float]:
    from pyVim.task import WaitForTask

    t0, c0 = time.monotonic(), _children_cpu()
    st.restore_vm(point, ds, name, "nbd")
    vm = _vm(si, name)
    WaitForTask(vm.PowerOnVM_Task())
    seconds, cpu = time.monotonic() - t0, _children_cpu() - c0
    WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())
    return seconds, cpu


def _instant(
    st: Stack, si: Any, point: str, ds: str, name: str, work: Path, digest: Any
) -> tuple[float, float, float, bool]:
    from pyVim.task import WaitForTask

    argv = [sys.executable, "-m", "vmbackup", "restore-vm", point, "--config"]
    argv += [str(st.config_path), "--to", "lab", "--datastore", ds, "--name", name]
    argv += ["--instant", "--export-dir", str(work), "--json"]
    t0, c0 = time.monotonic(), _children_cpu()
    with open(work.parent / f"{name}.out", "w+") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=st._env({}), stdout=out)
        while True:
            vm = _vm(si, name)
            if vm is not None and vm.runtime.powerState == "poweredOn":
                break
            if proc.poll() is not None:
                raise SystemExit(f"restore-vm --instant exited {proc.returncode}")
            time.sleep(0.05)
        running = time.monotonic() - t0
        proc.send_signal(signal.SIGUSR1)
        if proc.wait(timeout=3600) != 0:
            raise SystemExit(f"the migration failed: exit {proc.returncode}")
        migrate = time.monotonic() - t0 - running
        out.seek(0)
        text = out.read()
    cpu = _children_cpu() - c0
    result: dict[str, Any] = json.loads(text[text.index("{\n") :])["result"]
    [disk] = result["disks"]
    exact = bool(digest(disk["file"]))
    WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())  # deletes the moved files
    return running, migrate, cpu, exact


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="disk capacity")
    ap.add_argument("--used", type=float, default=0.25, help="share of the disk written")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each")
    ap.add_argument("--dir", default=None, help="parent of the temp dir")
    args = ap.parse_args(argv)
    setup_logging("warning", "console")
    cap = int(args.gib * GiB) // MiB * MiB
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-instant-", dir=args.dir))
    rows: list[tuple[str, float, float, float, bool]] = []  # kind, to running, migrate, cpu
    try:
        spec = LabSpec(
            clusters=1, hosts_per_cluster=1, vms_per_host=1, disks_per_vm=1, disk_sizes=[cap]
        )
        with Lab.start(spec) as lab:
            mix = FillMix(
                template=0.0, compressible=0.6 * args.used, unique=0.4 * args.used, zeros=0.0
            )
            lab.fill_disks(seed=11, mix=mix)
            lab.settle()
            [vm] = lab.vms()
            want = sha256_file(lab.local_path(vm["disks"][0]["file"]), cap)
            ds = vm["disks"][0]["file"].split("]", 1)[0][1:]
            si = lab.connect()
            with Stack(
                lab, work / "stack", StackSpec(writers=1, proxies=1, transport="file")
            ) as st:
                run = st.backup("all")
                [point] = [v["point_id"] for v in run.report["vms"] if v.get("point_id")]
                print(f"backup {run.seconds:.1f} s, point {point}")
                exports = work / "exports"
                exports.mkdir()
                for i in range(args.repeat):
                    s, cpu = _baseline(st, si, point, ds, f"copy-{i}")
                    rows.append(("restore-vm --transport nbd + power-on", s, 0.0, cpu, True))
                    print(f"  copy {s:.2f} s")

                    def same(file: str) -> bool:
                        return sha256_file(lab.local_path(file), cap) == want

                    r, m, cpu, exact = _instant(st, si, point, ds, f"instant-{i}", exports, same)
                    rows.append(("restore-vm --instant, then migrate", r, m, cpu, exact))
                    print(f"  instant {r:.2f} s to running, migrate {m:.2f} s, exact {exact}")
                    assert not any(exports.iterdir()), "the export left files"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"\none {cap / GiB:.2f} GiB disk, {args.used:.0%} written;"
        f" load average (1 min) {load0:.2f} at start, {load[0]:.2f} at end"
    )
    print("| how | s to a running VM | ratio vs copy | s migrating | CPU s | bit-exact |")
    print("|---|---|---|---|---|---|")
    base = min(r[1] for r in rows if r[0].startswith("restore-vm --transport"))
    for kind, s, m, cpu, exact in rows:
        print(f"| {kind} | {s:.2f} | {s / base:.2f} | {m:.2f} | {cpu:.2f} | {exact} |")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
