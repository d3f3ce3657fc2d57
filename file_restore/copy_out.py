"""Copy a file or a tree out of a read-only mount, keeping what the guest had: content,
mode bits, modification and access times (and owners when run as root, as ``cp -a``
does). Links are copied as links, never followed; devices, FIFOs and sockets are not
copied (listed as skipped). Nothing that exists is overwritten.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from common.progress import Progress, no_progress
from file_restore.partitions import FileRestoreError

BLOCK = 1 << 20


@dataclass
class CopyStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # special files, not copied


def tree_bytes(src: Path) -> int:
    """Bytes of the regular files at or under ``src`` (the progress total)."""
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISDIR(st.st_mode):
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(src):  # does not follow links to directories
        for name in files:
            fst = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(fst.st_mode):
                total += fst.st_size
    return total


def _keep_metadata(dst: Path, st: os.stat_result, *, link: bool = False) -> None:
    if os.geteuid() == 0:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src: Path, dst: Path, st: os.stat_result, tick: Progress) -> int:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        n = 0
        try:
            while block := os.read(fd, BLOCK):
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view) :]
                n += len(block)
                tick(len(block), 0)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    _keep_metadata(dst, st)
    return n


def copy_out(src: Path, dst: Path, progress: Progress = no_progress) -> CopyStats:
    """Copy ``src`` (a file, link or directory) to the new path ``dst``."""
    if os.path.lexists(dst):
        raise FileRestoreError(f"{dst} exists: give a new path (nothing is overwritten)")
    total = tree_bytes(src)
    stats = CopyStats()
    done = [0]

    def tick(n: int, _total: int) -> None:
        done[0] += n
        progress(done[0], total)

    progress(0, total)
    try:
        _copy(src, dst, stats, tick)
    except OSError as exc:
        raise FileRestoreError(
            f"copying {exc.filename or src} failed: {exc.strerror or exc}"
            " (what was copied so far stays)"
        ) from None
    progress(done[0], total)
    return stats


def _copy(src: Path, dst: Path, stats: CopyStats, tick: Progress) -> None:
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        _keep_metadata(dst, st, link=True)
        stats.symlinks += 1
    elif stat.S_ISREG(st.st_mode):
        stats.bytes += _copy_file(src, dst, st, tick)
        stats.files += 1
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)
        with os.scandir(src) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            _copy(src / name, dst / name, stats, tick)
        _keep_metadata(dst, st)  # after its entries: they changed its mtime
        stats.dirs += 1
    else:
        stats.skipped.append(str(src))
