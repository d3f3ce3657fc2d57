"""`vmbackup files get` against the way without it: restore the whole disk, loop-mount
the partition, copy the file.

    .venv/bin/python -m bench.files_get [--disk-mib 512] [--file-mib 128] [--other-mib 0]
        [--repeat 3]

A GPT disk (lab/guest_fs.py) with one ext4 partition filling it, holding one file of
``--file-mib`` MiB, another of ``--other-mib`` MiB (the rest of the guest's data; both
bench/repo_data.py's mix: zeros, duplicates, text, random) and a few small ones, is
imported into a repository (1 MiB chunks, zstd 3). Then, alternating,
``--repeat`` rounds of:

- files get: `vmbackup files get` of the big file (a process, as an operator runs it:
  export, nbdfuse, loop device, mount, copy, teardown; only the chunks the file and the
  filesystem's metadata need are read);
- restore + mount: `vmbackup restore --no-fsync` of the whole disk to a file, then
  `losetup -r --offset`, `mount -o ro,noload`, `cp --preserve`, umount, detach;
- files ls: `vmbackup files ls` of the partitions (the cost of opening a disk alone).

Each copy is compared with the file. CPU s: user+sys of the child processes (nbdkit is
one of the command's children). Ratio = restore + mount time / files get time. Needs root.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.repo_data import MiB, mixed_chunks
from lab.guest_fs import FsPartition, GuestFile, build_image
from repository.import_disk import import_disk
from repository.repository import Repository

BIG = "/data/big.bin"
MTIME = 1_780_000_000
Step = Callable[[Path, str, Path], None]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _vmb(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vmbackup", *args], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def files_get(repo: Path, pid: str, out: Path) -> None:
    _vmb("files", "get", "--repo", str(repo), "--point", pid, "--disk", "2000", BIG,
         "--out", str(out))  # fmt: skip


def files_ls(repo: Path, pid: str, _out: Path) -> None:
    _vmb("files", "ls", "--repo", str(repo), "--point", pid, "--disk", "2000")


def restore_mount(repo: Path, pid: str, out: Path) -> None:
    disk, mnt = out.with_suffix(".disk"), out.with_suffix(".mnt")
    _vmb("restore", "--repo", str(repo), "--point", pid, "--disk", "2000", "--out", str(disk),
         "--no-fsync")  # fmt: skip
    mnt.mkdir()
    loop = subprocess.run(["losetup", "-r", "-f", "--show", "--offset", str(MiB), str(disk)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mnt)], check=True)
        try:
            subprocess.run(["cp", "--preserve=mode,timestamps", f"{mnt}{BIG}", str(out)],
                           check=True)  # fmt: skip
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        mnt.rmdir()
        disk.unlink()


def timed(fn: Step, repo: Path, pid: str, out: Path) -> tuple[float, float]:
    cpu0, t0 = _children_cpu(), time.perf_counter()
    fn(repo, pid, out)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def fill_partition(image: Path, files: dict[str, tuple[int, int]]) -> None:
    """Write files (path -> (MiB, seed) of bench/repo_data.py's mix) into the ext4 at
    1 MiB of ``image`` through a read-write loop mount: streamed, never held in memory."""
    loop = subprocess.run(["losetup", "-f", "--show", "--offset", str(MiB), str(image)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    mnt = image.with_suffix(".fill")
    mnt.mkdir()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            for path, (mib, seed) in files.items():
                dest = mnt / path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as fh:
                    for chunk in mixed_chunks(mib, MiB, seed):
                        fh.write(chunk)
                os.chmod(dest, 0o640)
                os.utime(dest, (MTIME, MTIME))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        mnt.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--disk-mib", type=int, default=512)
    ap.add_argument("--file-mib", type=int, default=128)
    ap.add_argument("--other-mib", type=int, default=0, help="other data on the disk")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.files_get needs root (loop devices, mounts)")
    work = Path(tempfile.mkdtemp(prefix="bench-files-"))
    try:
        small = tuple(GuestFile(f"/etc/f{i}.conf", b"x = %d\n" % i, MTIME) for i in range(20))
        image = work / "disk.img"
        build_image(image, [FsPartition("ext4", args.disk_mib - 2, "bench", small)], "gpt")
        fill_partition(image, {BIG: (args.file_mib, 3), "/data/other.bin": (args.other_mib, 4)})
        data = b"".join(mixed_chunks(args.file_mib, MiB, 3))
        repo = Repository.init(work / "repo", chunk_size=MiB, compression_level=3)
        pid = import_disk(repo, "bench1", 2000, image).point_id
        image.unlink()
        load0 = os.getloadavg()[0]
        runs: dict[str, list[tuple[float, float]]] = {
            "files get": [],
            "restore + mount + cp": [],
            "files ls": [],
        }
        fns: dict[str, Step] = {
            "files get": files_get,
            "restore + mount + cp": restore_mount,
            "files ls": files_ls,
        }
        for _ in range(args.repeat):
            for name, fn in fns.items():
                out = work / "out.bin"
                runs[name].append(timed(fn, work / "repo", pid, out))
                if name != "files ls":
                    assert out.read_bytes() == data, f"{name}: the copy differs"
                    assert os.stat(out).st_mtime == MTIME, f"{name}: mtime"
                    out.unlink()
        load1 = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"disk {args.disk_mib} MiB, file {args.file_mib} MiB, other data {args.other_mib} MiB,"
          f" {args.repeat} rounds;"
          f" load average {load0:.2f} -> {load1:.2f}")  # fmt: skip
    print("| run | best s | median s | CPU s (median) |")
    print("|---|---|---|---|")
    for name, rs in runs.items():
        walls = [w for w, _ in rs]
        print(f"| {name} | {min(walls):.2f} | {statistics.median(walls):.2f} |"
              f" {statistics.median(c for _, c in rs):.2f} |")  # fmt: skip
    get = [w for w, _ in runs["files get"]]
    rest = [w for w, _ in runs["restore + mount + cp"]]
    ratios = [r / g for r, g in zip(rest, get, strict=True)]
    print(f"ratio restore+mount / files get: best-of {min(rest) / min(get):.2f},"
          f" per round {min(ratios):.2f}-{max(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
