"""Restore of one lab disk: `vmbackup restore` (with and without fsync) vs `restic restore`.

    .venv/bin/python -m bench.e2e_restore [--gib 4]

Isolates the restore step of bench/e2e_backup.py: one disk filled by lab.fill_disks (same
seed and mix), backed up with `vmbackup repo import-disk` and `restic backup`, then each
restore runs alone, is timed as a process, and is checked byte for byte against the image.
MB/s = disk capacity / wall time. All temp data is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.e2e_backup import sha256_file
from bench.e2e_tools import ROOT, Measured, Restic, make_tools, run
from lab import Lab, LabSpec

GiB = 1 << 30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="disk capacity")
    ap.add_argument("--dir", default=None, help="parent of the temp dir")
    args = ap.parse_args(argv)
    cap = int(args.gib * GiB) // 512 * 512
    work = Path(tempfile.mkdtemp(prefix="e2e-restore-", dir=args.dir))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    vmb = [sys.executable, "-m", "vmbackup"]
    rows: list[tuple[str, Measured, bool]] = []
    try:
        spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=1, disk_sizes=[cap])
        with Lab.start(spec) as lab:
            lab.fill_disks(seed=7)
            image = lab.local_path(lab.vms()[0]["disks"][0]["file"])
            want = sha256_file(image, cap)
            repo = work / "repo"
            run([*vmb, "repo", "init", str(repo), "--compression-level", "3"], env)
            imp = [*vmb, "repo", "import-disk", "--repo", str(repo), "--vm", "v", "--disk", "2000"]
            out = run([*imp, str(image)], env).output
            point = re.search(r"point (\S+)", out)
            if point is None:
                raise SystemExit(f"no point id in: {out}")
            restic = make_tools(work, ["restic"])[0]
            assert isinstance(restic, Restic)
            restic.init()
            restic.backup([image], "full")
            for label, extra in (("vmbackup restore", []), ("... --no-fsync", ["--no-fsync"])):
                dst = work / "restored.img"
                cmd = [*vmb, "restore", "--repo", str(repo), "--point", point.group(1)]
                m = run([*cmd, "--disk", "2000", "--out", str(dst), *extra], env)
                rows.append((label, m, sha256_file(dst, cap) == want))
                dst.unlink()
            target = work / "restic-restore"
            m = restic.restore(image, target)
            got = target / image.relative_to("/")
            rows.append(("restic restore (no fsync)", m, sha256_file(got, cap) == want))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"restore of one {cap / GiB:.2f} GiB disk (lab fill, seed 7)")
    print("| restore | s | MB/s | CPU s | bit-exact | load |")
    print("|---|---|---|---|---|---|")
    for label, m, ok in rows:
        print(
            f"| {label} | {m.wall:.1f} | {cap / m.wall / 1e6:.0f} | {m.cpu:.1f} | {ok} | "
            f"{m.load_before:.2f}→{m.load_after:.2f} |"
        )
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
