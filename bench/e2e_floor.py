"""The CPU of the work this design cannot skip, on the e2e benchmark's own images, in one
thread of one process: what a full could shrink to with no process, message, thread or
bookkeeping cost (``bench.e2e_backup --floor``), to check a CPU goal against.

Per chunk of every image, as the stack does it:

- read: ``preadv`` into one reused buffer (the proxy's file transport), of the chunks
  that hold data (holes skipped, as the stack's plan from CBT and borg ``--sparse`` do);
- proxy: the zero check and the BLAKE3 id; for an id not seen before (the have-query's
  "no"), the compression probe and zstd;
- writer: the hostile-input check of every new chunk (decompress, BLAKE3 again);
- store: the payload appended to one pack file, an ``fdatasync`` per 64 MiB and the
  synced range dropped from the page cache (what an open pack does).

Left out, so the floor is if anything low: the sockets between proxy and writer (a copy
each way), framing, the pack index and maps, AMQP, the broker and the coordinator's
vSphere calls. Unkeyed ids (the bench's repositories are not encrypted).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.chunk import chunk_id, compress, decompress, is_zero

SYNC_EVERY = 64 << 20


@dataclass
class Floor:
    """CPU seconds (user + system) per part, and what went through it."""

    read: float = 0.0
    proxy: float = 0.0
    check: float = 0.0
    store: float = 0.0
    writer_sys: float = 0.0  # of check + store: system time
    chunks: int = 0
    new_chunks: int = 0
    stored_bytes: int = 0

    @property
    def writer_kernel_share(self) -> float:
        """What a writer doing only the check and the store spends in the kernel."""
        return self.writer_sys / max(1e-9, self.check + self.store)

    @property
    def total(self) -> float:
        return self.read + self.proxy + self.check + self.store

    def as_detail(self) -> dict[str, float | int]:
        return {
            "floor_read": round(self.read, 3),
            "floor_proxy": round(self.proxy, 3),
            "floor_check": round(self.check, 3),
            "floor_store": round(self.store, 3),
            "floor_total": round(self.total, 3),
            "floor_writer_kernel_share": round(self.writer_kernel_share, 3),
            "floor_chunks": self.chunks,
            "floor_new_chunks": self.new_chunks,
            "floor_stored_bytes": self.stored_bytes,
        }


def _cpu() -> float:
    return time.thread_time()  # user + system of this thread, ns resolution


def _sys() -> float:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_stime


def _data_chunks(fd: int, chunk_size: int) -> Iterator[int]:
    """Offsets of the chunks that hold data (SEEK_DATA / SEEK_HOLE), in order: the stack
    reads only a disk's allocated areas, and borg ``--sparse`` skips holes too."""
    end = os.fstat(fd).st_size
    pos = 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        stop = os.lseek(fd, start, os.SEEK_HOLE)
        first = max(pos, start - start % chunk_size)
        yield from range(first, stop, chunk_size)
        pos = -(-stop // chunk_size) * chunk_size  # the chunk the extent ends in is read


def measure_floor(images: Sequence[Path], chunk_size: int, level: int, out_dir: Path) -> Floor:
    """Run every image's chunks through the work above; the pack file is removed after."""
    f = Floor()
    seen: set[bytes] = set()
    buf = bytearray(chunk_size)
    pack = out_dir / "floor.pack"
    fd = os.open(pack, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = synced = 0
    try:
        for image in images:
            src = os.open(image, os.O_RDONLY)
            try:
                for off in _data_chunks(src, chunk_size):
                    t0 = _cpu()
                    n = os.preadv(src, [buf], off)
                    t1 = _cpu()
                    f.read += t1 - t0
                    if n == 0:
                        break
                    f.chunks += 1
                    data = bytes(buf[:n])  # the pipeline hands each chunk on as its own bytes
                    if is_zero(data):
                        f.proxy += _cpu() - t1
                        continue
                    cid = chunk_id(data)
                    if cid in seen:
                        f.proxy += _cpu() - t1
                        continue
                    seen.add(cid)
                    payload, compressed = compress(data, level)
                    t2, s2 = _cpu(), _sys()
                    f.proxy += t2 - t1
                    plain = decompress(payload, n) if compressed else payload
                    if chunk_id(plain) != cid:
                        raise AssertionError(f"{image}@{off}: the check disagrees")
                    t3 = _cpu()
                    f.check += t3 - t2
                    written += os.pwrite(fd, payload, written)
                    if written - synced >= SYNC_EVERY:
                        os.fdatasync(fd)
                        os.posix_fadvise(fd, synced, written - synced, os.POSIX_FADV_DONTNEED)
                        synced = written
                    f.store += _cpu() - t3
                    f.writer_sys += _sys() - s2
                    f.new_chunks += 1
            finally:
                os.close(src)
        t4, s4 = _cpu(), _sys()
        os.fdatasync(fd)
        f.store += _cpu() - t4
        f.writer_sys += _sys() - s4
        f.stored_bytes = written
    finally:
        os.close(fd)
        pack.unlink(missing_ok=True)
    return f


def floor_table(floor: Floor, ours_cpu: float | None, peers: dict[str, float]) -> list[str]:
    """Lines of the floor's table: its parts, and the floor against each peer's full."""
    lines = [
        "\nThe design's floor (bench/e2e_floor.py: one thread, no process, message or index):",
        "| read | proxy (zero, BLAKE3, zstd) | writer check (unzstd, BLAKE3) | store | floor CPU s"
        " | writer kernel share | chunks new / all | ours / floor |",
        "|---|---|---|---|---|---|---|---|",
        f"| {floor.read:.2f} | {floor.proxy:.2f} | {floor.check:.2f} | {floor.store:.2f} | "
        f"{floor.total:.2f} | {100 * floor.writer_kernel_share:.0f} % | "
        f"{floor.new_chunks} / {floor.chunks} | "
        + (f"{ours_cpu / floor.total:.2f} |" if ours_cpu else "- |"),
    ]
    for name, cpu in peers.items():
        lines.append(
            f"  floor / {name}'s full CPU: {floor.total / cpu:.2f} "
            f"({floor.total:.2f} / {cpu:.2f} s)"
        )
    return lines


if __name__ == "__main__":  # a quick look at files given on the command line
    import sys

    t = time.monotonic()
    fl = measure_floor([Path(p) for p in sys.argv[1:]], 1 << 20, 3, Path("/tmp"))
    print("\n".join(floor_table(fl, None, {})), f"\n{time.monotonic() - t:.1f} s wall")
