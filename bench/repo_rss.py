"""Peak RSS of a process ingesting a large image with `import-disk` (the writer's
store path, no broker). Goal: <= 256 MiB at 20 GiB.

    .venv/bin/python -m bench.repo_rss [--gib 2]     (--gib 20 for the full run)

The image and the repository live in a temp dir (under --dir, else $TMPDIR or /tmp),
removed at the end even on failure; --gib 20 needs ~30 GiB free there.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.repo_data import MiB, write_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=int, default=2)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repo-rss-", dir=args.dir))
    try:
        write_image(work / "img", args.gib * 1024)
        vmb = [sys.executable, "-m", "common.cli"]
        subprocess.run([*vmb, "repo", "init", str(work / "repo")], check=True)
        subprocess.run(
            [
                *vmb,
                "repo",
                "import-disk",
                "--repo",
                str(work / "repo"),
                "--vm",
                "big",
                "--disk",
                "2000",
                str(work / "img"),
            ],
            check=True,
        )
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"import-disk of {args.gib} GiB mixed data: peak RSS {peak_kib * 1024 / MiB:.0f} MiB")


if __name__ == "__main__":
    main()
