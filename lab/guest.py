"""Guest data: writes into VM disk files and seeded, realistic disk contents.

A disk backing "[ds] dir/x.vmdk" keeps its bytes in "dir/x-flat.vmdk" on that
datastore's directory: a sparse file the size of the disk.

Every write to a disk file goes through :class:`DiskWriter` (``write_at`` and ``fill``
use it), the lab's guest I/O path: it moves the disk off a live snapshot's frozen file
first (:func:`make_private`) and logs each write in "dir/x-flat.vmdk.writes", from which
the lab's CBT re-hashes only the written blocks at the next snapshot, as ESXi's CBT
tracks writes in the I/O path. A write that bypasses it is still found (the file's
inode and mtime no longer chain up with the log, and the lab re-hashes the whole disk),
unless it lands within the same kernel clock tick as a logged one: do not bypass it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.spec import MIB, LabError

DEFAULT_BLOCK = MIB


def parse_ds_path(ds_path: str) -> tuple[str, str]:
    """Split "[ds] dir/x.vmdk" into ("ds", "dir/x.vmdk")."""
    if not ds_path.startswith("[") or "]" not in ds_path:
        raise LabError(f"not a datastore path: {ds_path!r} (expected '[datastore] path')")
    ds, rest = ds_path[1:].split("]", 1)
    return ds, rest.lstrip(" ")


def flat_path(datastores: Mapping[str, str], ds_path: str) -> Path:
    ds, rel = parse_ds_path(ds_path)
    if ds not in datastores:
        raise LabError(f"unknown datastore {ds!r} in {ds_path!r}")
    if not rel.endswith(".vmdk"):
        raise LabError(f"not a disk path: {ds_path!r} (expected a .vmdk file)")
    if not rel.endswith("-flat.vmdk"):
        rel = rel[: -len(".vmdk")] + "-flat.vmdk"
    root = Path(datastores[ds]).resolve()
    path = (root / rel).resolve()
    if root not in path.parents:
        raise LabError(f"{ds_path!r} points outside its datastore")
    return path


def _check_range(capacity: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > capacity:
        raise LabError(
            f"range offset={offset} length={length} is outside the disk (capacity {capacity})"
        )


def make_private(path: Path) -> None:
    """Give a disk file that a live snapshot shares its own copy before it is written.

    The lab freezes a disk for a snapshot as a second hard link to its flat file (no
    copy: ESXi's snapshots are redirect-on-write and cost nothing either). A write to
    the disk while the file has other links would change the snapshot too, so the
    data extents are first copied into a new sparse file that replaces the disk's
    name; the snapshot keeps the old one. A no-op when nothing shares the file.
    :class:`DiskWriter` calls it first.
    """
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one copier per disk; others then see nlink 1
            st = os.fstat(fd)
            if os.stat(path).st_ino != st.st_ino:
                continue  # another writer replaced it meanwhile: look at the new file
            if st.st_nlink <= 1:
                return
            tmp = path.with_name(path.name + ".private-tmp")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(out, st.st_size)
                for start, end in data_extents(fd, st.st_size):
                    while start < end:
                        start += os.copy_file_range(fd, out, end - start, start, start)
            except BaseException:
                os.close(out)
                os.unlink(tmp)
                raise
            os.close(out)
            os.replace(tmp, path)
            _log_write(path, 0, 0, st, os.stat(path))  # same bytes, a new inode
            return
        finally:
            os.close(fd)


WRITE_LOG_SUFFIX = ".writes"


def _log_write(
    path: Path, offset: int, length: int, pre: os.stat_result, post: os.stat_result
) -> None:
    """One line of the disk's write log: range, then inode and mtime before and after.

    The lab accepts the log only as an unbroken chain from the identity it last hashed to
    the file's current one (lab/vcsim/sparse.go, writeLog).
    """
    line = f"{offset} {length} {pre.st_ino} {pre.st_mtime_ns} {post.st_ino} {post.st_mtime_ns}\n"
    fd = os.open(f"{path}{WRITE_LOG_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class DiskWriter:
    """Writes into one disk's flat file as the guest's I/O path: off any live snapshot
    first, every write logged for CBT (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_private(self.path)
        self._fd = os.open(self.path, os.O_RDWR)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        pre = os.fstat(self._fd)
        view, off = memoryview(data), offset
        while view:
            n = os.pwrite(self._fd, view, off)
            view, off = view[n:], off + n
        _log_write(self.path, offset, len(data), pre, os.fstat(self._fd))

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DiskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The allocated [start, end) ranges of an open file below size (SEEK_DATA/HOLE)."""
    out: list[tuple[int, int]] = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data past off
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        off = end
    return out


def write_at(path: Path, capacity: int, offset: int, data: bytes) -> None:
    _check_range(capacity, offset, len(data))
    with DiskWriter(path) as w:
        w.pwrite(data, offset)


def read_at(path: Path, capacity: int, offset: int, length: int) -> bytes:
    _check_range(capacity, offset, length)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@dataclass(frozen=True)
class FillMix:
    """Shares of each kind of block; the rest of the disk stays unallocated."""

    template: float = 0.25  # same bytes in every VM cloned from the template
    compressible: float = 0.20  # text-like, compresses several-fold, unique per VM
    unique: float = 0.15  # random bytes
    zeros: float = 0.05  # zeros the guest wrote (allocated, unlike holes)

    def __post_init__(self) -> None:
        shares = (self.template, self.compressible, self.unique, self.zeros)
        if any(s < 0 for s in shares) or sum(shares) > 1.0 + 1e-9:
            raise ValueError(f"FillMix shares must be >= 0 and add up to at most 1: {self!r}")


@dataclass
class FillReport:
    """Bytes written per kind, plus per-disk layouts for checks."""

    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    # (vm name, disk key) -> list of (offset, length, kind)
    layout: dict[tuple[str, int], list[tuple[int, int, str]]] = field(default_factory=dict)

    def add(self, vm: str, key: int, offset: int, length: int, kind: str) -> None:
        self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + length
        self.layout.setdefault((vm, key), []).append((offset, length, kind))


_WORDS = [
    *("INFO", "WARN", "DEBUG", "ERROR", "request", "served", "user", "session", "cache"),
    *("miss", "hit", "backend", "database", "query", "commit", "rollback", "GET", "POST"),
    *("/api/v1/items", "latency", "ms", "bytes", "worker", "thread", "started", "stopped"),
    *("retry", "timeout", "connection", "pool", "config", "reload"),
]


def _text_pool(seed: int) -> bytes:
    rng = random.Random(f"text:{seed}")
    lines = []
    for i in range(6000):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
        lines.append(f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z {words} id={i}")
    return ("\n".join(lines) + "\n").encode()


def _compressible(rng: random.Random, pool: bytes, n: int) -> bytes:
    """Pieces of a log-like text with unique numbers stamped in: compresses well, dedups not."""
    out = bytearray()
    while len(out) < n:
        start = rng.randrange(len(pool) - 4096)
        out += pool[start : start + rng.randint(512, 4096)]
        out += b"seq=%d\n" % rng.getrandbits(48)
    return bytes(out[:n])


def _template_block(seed: int, disk_index: int, block: int, n: int) -> bytes:
    return random.Random(f"template:{seed}:{disk_index}:{block}").randbytes(n)


def _vm_rng(seed: int, vm: str, key: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{vm}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _template_set(
    listing: Sequence[Mapping[str, Any]], template_vms: int | list[str] | None
) -> set[str]:
    names = [v["name"] for v in listing]
    if template_vms is None:
        return set(names)
    if isinstance(template_vms, int):
        if template_vms < 0:
            raise LabError(f"template_vms must be >= 0, got {template_vms}")
        return set(names[:template_vms])
    unknown = set(template_vms) - set(names)
    if unknown:
        raise LabError(f"template_vms names VMs that are not being filled: {sorted(unknown)!r}")
    return set(template_vms)


def fill(
    datastores: Mapping[str, str],
    listing: Sequence[Mapping[str, Any]],
    seed: int,
    template_vms: int | list[str] | None,
    mix: FillMix | None,
    block_size: int,
) -> FillReport:
    """Write a seeded mix of block kinds into every disk of the listed VMs.

    VMs in `template_vms` (default: all) are clones of one template: where they
    hold template blocks, the bytes at a given disk index and offset are the same
    in all of them. The others get unique data in place of template blocks.
    """
    if block_size <= 0 or block_size % 512:
        raise LabError(f"block_size must be a positive multiple of 512, got {block_size}")
    mix = mix or FillMix()
    clones = _template_set(listing, template_vms)
    pool = _text_pool(seed)
    report = FillReport()
    kinds = ("template", "compressible", "unique", "zeros", "unallocated")
    for vm in listing:
        for disk_index, disk in enumerate(vm["disks"]):
            path = flat_path(datastores, disk["file"])
            capacity = int(disk["capacity"])
            rng = _vm_rng(seed, vm["name"], disk["key"])
            weights = [mix.template, mix.compressible, mix.unique, mix.zeros]
            weights.append(max(0.0, 1.0 - sum(weights)))
            with DiskWriter(path) as w:
                for block, offset in enumerate(range(0, capacity, block_size)):
                    n = min(block_size, capacity - offset)
                    kind = rng.choices(kinds, weights)[0]
                    if kind == "template" and vm["name"] not in clones:
                        kind = "unique"
                    if kind == "unallocated":
                        continue
                    if kind == "template":
                        data = _template_block(seed, disk_index, block, n)
                    elif kind == "compressible":
                        data = _compressible(rng, pool, n)
                    elif kind == "unique":
                        data = rng.randbytes(n)
                    else:
                        data = bytes(n)
                    w.pwrite(data, offset)
                    report.add(vm["name"], disk["key"], offset, n, kind)
    return report
