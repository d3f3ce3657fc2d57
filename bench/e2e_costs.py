"""CPU cost of the per-chunk work alone, on the end-to-end benchmark's data mix.

    .venv/bin/python -m bench.e2e_costs [--mib 1024]

Fills one lab disk with lab.fill_disks (the same generator, mix and 1 MiB blocks as
bench/e2e_backup.py) and times, on one thread, what every allocated chunk costs the
proxy (zero check, BLAKE3 id, zstd compress) and the writer (decompress, BLAKE3 again to
verify the id). The result, in CPU seconds per GiB of allocated data, is the floor under
the pipeline's per-GiB CPU in the End to end section of bench/RESULTS.md: the rest is
reading, messaging, threads and bookkeeping.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from common.chunk import chunk_id, compress, decompress, is_zero
from lab import Lab, LabSpec

MiB = 1 << 20
GiB = 1 << 30


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="disk capacity (about 65 % allocated)")
    ap.add_argument("--level", type=int, default=3, help="zstd level (the stack's default: 3)")
    args = ap.parse_args(argv)
    spec = LabSpec(
        clusters=1, hosts_per_cluster=1, vms_per_host=3, disk_sizes=[args.mib * MiB], power_on=False
    )
    with Lab.start(spec) as lab:
        # 1 of 3 VMs cloned from the template, as 8 of 24 in the end-to-end run.
        lab.fill_disks(seed=7, template_vms=1)
        vm = lab.vms()[1]
        path = lab.local_path(vm["disks"][0]["file"])
        with open(path, "rb") as f:
            chunks = [c for c in iter(lambda: f.read(MiB), b"")]
    data = [c for c in chunks if not is_zero(c)]
    allocated = sum(len(c) for c in data)
    t_zero = cpu(lambda: [is_zero(c) for c in chunks])
    t_id = cpu(lambda: [chunk_id(c) for c in data])
    packed: list[tuple[bytes, bool]] = []
    t_comp = cpu(lambda: packed.extend(compress(c, args.level) for c in data))
    t_dec = cpu(
        lambda: [decompress(p, len(c)) if z else p for (p, z), c in zip(packed, data, strict=True)]
    )
    stored = sum(len(p) for p, _ in packed)
    per = GiB / allocated
    print(
        f"{len(chunks)} chunks, {allocated / MiB:.0f} MiB non-zero, stored {stored / MiB:.0f} MiB "
        f"(zstd-{args.level}); CPU s per GiB of non-zero data, one thread:"
    )
    print("| zero check | BLAKE3 id | zstd compress | proxy sum | decompress | writer sum |")
    print("|---|---|---|---|---|---|")
    proxy = (t_zero + t_id + t_comp) * per
    writer = (t_dec + t_id) * per
    print(
        f"| {t_zero * per:.2f} | {t_id * per:.2f} | {t_comp * per:.2f} | {proxy:.2f} | "
        f"{t_dec * per:.2f} | {writer:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
