"""Peak RSS of a process ingesting a large image with `import-disk` (the writer's
store path, no broker). Goal: <= 256 MiB at 20 GiB.

    .venv/bin/python -m bench.repo_rss [--gib 2]     (--gib 20 for the full run)

The image and the repository live in a temp dir (under --dir, else $TMPDIR or /tmp),
removed at the end even on failure; --gib 20 needs ~30 GiB free there.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procmem import proc_memory
from bench.repo_data import write_image


def peak_rss_kib(proc: subprocess.Popen[bytes]) -> int:
    """VmHWM of the child, read until it exits (bench.procmem: why not ru_maxrss)."""
    peak = 0
    while proc.poll() is None:
        # exiting: the /proc entry is gone, or a zombie without memory lines
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, RuntimeError):
            peak = max(peak, proc_memory(proc.pid)["VmHWM"] // 1024)
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"import-disk failed with status {proc.returncode}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=int, default=2)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repo-rss-", dir=args.dir))
    try:
        write_image(work / "img", args.gib * 1024)
        vmb = [sys.executable, "-m", "vmbackup"]
        subprocess.run([*vmb, "repo", "init", str(work / "repo")], check=True)
        cmd = [*vmb, "repo", "import-disk", "--repo", str(work / "repo")]
        cmd += ["--vm", "big", "--disk", "2000", str(work / "img")]
        peak_kib = peak_rss_kib(subprocess.Popen(cmd))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"import-disk of {args.gib} GiB mixed data: peak RSS (VmHWM) {peak_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
