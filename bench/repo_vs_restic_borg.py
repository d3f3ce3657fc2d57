"""Repository size and ingest time: vmbackup `repo import-disk` vs restic and borg.

    .venv/bin/python -m bench.repo_vs_restic_borg [--scale 1] [--rounds 1]
    (--scale 5 for a ~10 GiB image set)

One image set, made in a temp dir and removed afterwards (at --scale 1, ~2 GiB):
- a VM template of 384 MiB x scale (256 KiB blocks of text-like, random and zero
  data; zero blocks are holes) and 4 VMs cloned from it, each with a few changes
  (32 scattered 4-64 KiB writes at 4 KiB-aligned offsets and 16 MiB x scale of
  new data in one place) and a 64 MiB x scale hole at the end;
- one image of unique random data and one of compressible text (256 MiB x scale each).

Each tool backs up each image as its own VM (one process per image, as a backup
of one VM disk would be), into a fresh repository per round, then the repository
size (sum of file sizes) is measured. Tools at their defaults except where noted:
vmbackup: fixed 1 MiB chunks, zstd-3, no encryption (and with --encrypt: AES-256-GCM,
keyed ids, passphrase via env); restic 0.14: repository v2,
compression auto (zstd), always encrypted (fixed passphrase via env), content-
defined chunks, all cores; borg 1.2: `--encryption=none`, content-defined chunks,
one thread, compression lz4 (its default) and zstd,3.
Time is wall time of all the processes of a tool (the images are page cached);
CPU is their user+system time. Best of --rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.repo_data import MiB, text_chunk

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 256 << 10
KiB = 1 << 10


def _write_sparse(path: Path, data: bytes | bytearray, tail_hole: int) -> None:
    """Write ``data`` skipping all-zero blocks (holes), then extend by ``tail_hole``."""
    zero = bytes(BLOCK)
    view = memoryview(data)
    with open(path, "wb") as fh:
        for off in range(0, len(data), BLOCK):
            block = view[off : off + BLOCK]
            if block == zero[: len(block)]:
                fh.seek(len(block), os.SEEK_CUR)
            else:
                fh.write(block)
        fh.truncate(len(data) + tail_hole)


def _mixed(rnd: random.Random, size: int) -> bytearray:
    """Blocks of text 40 %, random 30 %, zeros 30 % (an OS disk, roughly)."""
    out = bytearray()
    while len(out) < size:
        k = rnd.random()
        if k < 0.4:
            out += text_chunk(rnd, BLOCK)
        elif k < 0.7:
            out += rnd.randbytes(BLOCK)
        else:
            out += bytes(BLOCK)
    return out[:size]


def make_images(d: Path, scale: float, seed: int = 7) -> list[tuple[str, Path]]:
    rnd = random.Random(seed)
    tsize = int(384 * scale) * MiB
    template = _mixed(rnd, tsize)
    images: list[tuple[str, Path]] = []
    for v in range(4):
        img = bytearray(template)
        for _ in range(32):
            n = rnd.randrange(1, 17) * 4 * KiB
            off = rnd.randrange(0, (tsize - n) // (4 * KiB)) * 4 * KiB
            img[off : off + n] = rnd.randbytes(n)
        n = int(16 * scale) * MiB
        off = rnd.randrange(0, (tsize - n) // MiB) * MiB
        img[off : off + n] = _mixed(rnd, n)
        path = d / f"vm{v}.img"
        _write_sparse(path, img, int(64 * scale) * MiB)
        images.append((f"vm{v}", path))
    usize = int(256 * scale) * MiB
    path = d / "unique.img"
    with open(path, "wb") as fh:
        for _ in range(usize // MiB):
            fh.write(rnd.randbytes(MiB))
    images.append(("unique", path))
    path = d / "text.img"
    with open(path, "wb") as fh:
        for _ in range(usize // MiB):
            fh.write(text_chunk(rnd, MiB))
    images.append(("text", path))
    return images


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


def _dir_size(path: Path) -> tuple[int, int]:
    """(sum of file sizes, blocks allocated on disk: what du reports)."""
    sts = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(st.st_size for st in sts), sum(st.st_blocks * 512 for st in sts)


def vmbackup(encrypt: bool) -> Callable[..., tuple[list[list[str]], dict[str, str]]]:
    def make(work: Path, images: list[tuple[str, Path]]) -> tuple[list[list[str]], dict[str, str]]:
        repo = work / "repo"
        vmb = [sys.executable, "-m", "vmbackup", "repo"]
        cmds = [[*vmb, "init", str(repo), *(["--encrypt"] if encrypt else [])]]
        for name, path in images:
            imp = [*vmb, "import-disk", "--repo", str(repo), "--vm", name, "--disk", "2000"]
            cmds.append([*imp, str(path)])
        return cmds, {**os.environ, "VMBACKUP_PASSPHRASE": "bench"}

    return make


def restic(work: Path, images: list[tuple[str, Path]]) -> tuple[list[list[str]], dict[str, str]]:
    repo = work / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "cache")}
    cmds = [["restic", "-r", str(repo), "init", "-q"]]
    for name, path in images:
        cmds.append(["restic", "-r", str(repo), "backup", "-q", "--host", name, str(path)])
    return cmds, env


def borg(compression: str) -> Callable[..., tuple[list[list[str]], dict[str, str]]]:
    def make(work: Path, images: list[tuple[str, Path]]) -> tuple[list[list[str]], dict[str, str]]:
        repo = work / "repo"
        env = {
            **os.environ,
            "BORG_BASE_DIR": str(work / "home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        }
        cmds = [["borg", "init", "--encryption=none", str(repo)]]
        for name, path in images:
            cmds.append(["borg", "create", "-C", compression, f"{repo}::{name}", str(path)])
        return cmds, env

    return make


def measure(
    tool: Callable[..., tuple[list[list[str]], dict[str, str]]],
    tmp: Path,
    images: list[tuple[str, Path]],
) -> tuple[float, float, int, int]:
    work = Path(tempfile.mkdtemp(prefix="tool-", dir=tmp))
    try:
        cmds, env = tool(work, images)
        _run(cmds[0], env)  # init is not part of the ingest time
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        for cmd in cmds[1:]:
            _run(cmd, env)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        return (wall, cpu, *_dir_size(work / "repo"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1 = ~2 GiB image set, 5 = ~10 GiB")
    ap.add_argument("--rounds", type=int, default=1, help="fresh repositories per round; best")
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default: $TMPDIR)")
    args = ap.parse_args()
    tools = {
        "vmbackup": vmbackup(False),
        "vmbackup --encrypt": vmbackup(True),
        "restic": restic,
        "borg lz4": borg("lz4"),
        "borg zstd,3": borg("zstd,3"),
    }
    tmp = Path(tempfile.mkdtemp(prefix="repo-vs-", dir=args.dir))
    best: dict[str, tuple[float, float, int, int]] = {}
    try:
        images = make_images(tmp, args.scale)
        logical = sum(p.stat().st_size for _, p in images)
        allocated = sum(p.stat().st_blocks * 512 for _, p in images)
        for _ in range(args.rounds):
            for name, tool in tools.items():
                r = measure(tool, tmp, images)
                if name not in best or r[0] < best[name][0]:
                    best[name] = r
                print(
                    f"  {name}: {r[0]:.1f} s wall, {r[1]:.1f} s CPU, {r[2] / MiB:.0f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{len(images)} images, {logical / MiB:.0f} MiB logical ({allocated / MiB:.0f} MiB"
        f" allocated, the rest holes); best of {args.rounds} round(s)"
    )
    print("| tool | ingest s | MiB/s | CPU s | repo MiB (files) | du MiB | size vs vmbackup |")
    print("|---|---|---|---|---|---|---|")
    ours = best["vmbackup"][2]
    for name, (wall, cpu, size, du) in best.items():
        print(
            f"| {name} | {wall:.1f} | {logical / wall / MiB:.0f} | {cpu:.1f} | {size / MiB:.0f}"
            f" | {du / MiB:.0f} | {size / ours:.2f} |"
        )


if __name__ == "__main__":
    main()
