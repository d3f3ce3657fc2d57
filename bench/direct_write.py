"""One stream of pack-sized batches, each made durable, written four ways: wall and CPU.

    .venv/bin/python -m bench.direct_write [--dir DIR] [--batches 200] [--batch-kib 4608]

Modes, alternated per round: ``buffered`` (pwritev, fdatasync, then POSIX_FADV_DONTNEED
of the batch: what repository/pack_writer.py does), ``direct`` (O_DIRECT from an aligned
buffer, fdatasync), ``direct-ahead`` (idem, the file extended ahead with ftruncate so no
write extends it) and ``direct-dsync`` (O_DIRECT|O_DSYNC, fdatasync too). The numbers
behind "O_DIRECT pack writes: measured, not kept" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import resource
import tempfile
import time
from pathlib import Path

MODES = ("buffered", "direct", "direct-ahead", "direct-dsync")


def one(path: Path, mode: str, batches: int, batch: int) -> tuple[float, float, float]:
    """(wall s, user s, sys s) of writing ``batches`` batches of ``batch`` bytes."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags | (os.O_DSYNC if mode == "direct-dsync" else 0), 0o644)
    buf = mmap.mmap(-1, batch)  # page aligned
    buf[:] = os.urandom(batch)
    try:
        if mode != "buffered":
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        size = 0
        for _ in range(batches):
            if mode in ("direct-ahead", "direct-dsync") and size + batch > os.fstat(fd).st_size:
                os.ftruncate(fd, size + 64 * batch)
            os.pwritev(fd, [buf], size)
            os.fdatasync(fd)
            if mode == "buffered":
                os.posix_fadvise(fd, size, batch, os.POSIX_FADV_DONTNEED)
            size += batch
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        buf.close()
        os.close(fd)
        path.unlink()
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=None, help="where the file goes (default: $TMPDIR)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-kib", type=int, default=4608, help="a multiple of 4")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if args.batch_kib <= 0 or args.batch_kib % 4:
        ap.error(f"--batch-kib {args.batch_kib}: must be a positive multiple of 4 (O_DIRECT)")
    work = Path(tempfile.mkdtemp(prefix="direct-write-", dir=args.dir))
    try:
        print(f"{args.batches} x {args.batch_kib} KiB in {work}, load {os.getloadavg()[0]:.2f}")
        for r in range(args.rounds):
            for mode in MODES:
                wall, user, sys_s = one(work / mode, mode, args.batches, args.batch_kib << 10)
                line = f"wall {wall:5.2f} s  user {user:4.2f}  sys {sys_s:4.2f}"
                print(f"round {r + 1} {mode:<13} {line}")
    finally:
        os.rmdir(work)
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
