"""Files and directories in the repository after the demo's backups, per repository format.

    .venv/bin/python -m bench.repo_files [--variants chunk-files,32M,128M] [--out DIR]

Runs ``python -m lab.demo --keep DIR`` (the full and the incremental backup of the demo
datacenter, restores and verify) once per variant, then counts every file and directory
under the repository (the repository directory itself not counted), split into the
chunk storage (``chunks/`` for format 2; ``packs/``, ``index/`` and ``touched/`` for 3)
and the rest (points, running, staging, locks, keys, jobs, config: the same in both
formats). Prints a Markdown table with the load average of the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK_STORAGE = ("chunks", "packs", "index", "touched")


def count(repo: Path) -> tuple[int, int, int]:
    """(chunk storage entries, other entries, bytes of regular files) under ``repo``."""
    chunk = other = size = 0
    for dirpath, dirnames, filenames in os.walk(repo):
        rel = Path(dirpath).relative_to(repo)
        top = rel.parts[0] if rel.parts else ""
        for name in dirnames + filenames:
            in_chunks = (top or name) in CHUNK_STORAGE
            chunk += in_chunks
            other += not in_chunks
        size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in filenames)
    return chunk, other, size


def run(variant: str, work: Path) -> dict[str, float]:
    keep = work / variant
    cmd = [sys.executable, "-m", "lab.demo", "--keep", str(keep)]
    if variant == "chunk-files":
        cmd.append("--chunk-files")
    else:
        from vmbackup.repo_commands import parse_size

        cmd += ["--pack-size", str(parse_size(variant))]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    chunk, other, size = count(keep / "repo")
    return {
        "chunk": chunk,
        "other": other,
        "bytes": size,
        "seconds": time.monotonic() - t0,
        "load": (load + os.getloadavg()[0]) / 2,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="chunk-files,32M,128M")
    ap.add_argument("--out", default=None, help="keep the demo directories here")
    args = ap.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="repo-files-"))
    rows = {v: run(v, work) for v in args.variants.split(",")}
    base = rows.get("chunk-files")
    print(
        "| repository | chunk storage entries | other entries | all entries | "
        "x fewer (chunk storage) | x fewer (all) | bytes | demo wall s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for v, r in rows.items():
        total = r["chunk"] + r["other"]
        ratio_c = f"{base['chunk'] / r['chunk']:.0f}" if base else "-"
        ratio_a = f"{(base['chunk'] + base['other']) / total:.1f}" if base else "-"
        name = "format 2, a file per chunk" if v == "chunk-files" else f"format 3, {v} packs"
        print(
            f"| {name} | {r['chunk']:.0f} | {r['other']:.0f} | {total:.0f} | {ratio_c} | "
            f"{ratio_a} | {r['bytes']:.0f} | {r['seconds']:.0f} | {r['load']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
