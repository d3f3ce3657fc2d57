"""Durable file-system primitives: temp + fsync + rename + directory fsync.

Every object of the repository is written through these helpers so that a crash
leaves either the old state or the new one, never a half-written object under
its final name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repository.errors import RepositoryError, RepositoryFullError

TMP_PREFIX = ".tmp-"
_FULL = (errno.ENOSPC, errno.EDQUOT)

# Set by the writer service to feed its fsync latency histogram.
fsync_observer: Callable[[float], None] | None = None


# Handing an fsync to a pool thread costs tens of microseconds of CPU (a wake-up and a
# switch each way); it pays only when fsync waits on a device, where concurrent fsyncs
# share one journal commit. Storage that answers faster than this (tmpfs, a write cache
# with power-loss protection) gets its fsyncs in the calling thread, one after another.
INLINE_FSYNC_S = 0.0002
_FSYNC_EWMA_WEIGHT = 0.1
# Recent fsync latency (seconds, moving average over every thread; a lost update under a
# race only delays the switch). Starts slow: the first batch goes to the pool and measures.
_fsync_latency = 1.0


def _fsync(fd: int) -> None:
    global _fsync_latency
    t0 = time.perf_counter()
    os.fsync(fd)
    dt = time.perf_counter() - t0
    _fsync_latency += (dt - _fsync_latency) * _FSYNC_EWMA_WEIGHT
    if fsync_observer is not None:
        fsync_observer(dt)


def fsyncs_inline() -> bool:
    """True when fsync is currently fast enough to run in the caller's thread."""
    return _fsync_latency < INLINE_FSYNC_S


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to drop a durable range of a file from the page cache (a hint:
    pages still dirty stay, and an error changes nothing)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def tmp_path(final: Path) -> Path:
    """A unique temporary name in the same directory (same file system for rename)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(paths: Iterable[Path]) -> None:
    """fsync several directories concurrently (see :func:`write_files_durable`)."""
    dirs = list(paths)
    if len(dirs) <= 1 or fsyncs_inline():
        for d in dirs:
            fsync_dir(d)
        return
    for fut in [_pool().submit(fsync_dir, d) for d in dirs]:
        fut.result()


def os_error(exc: OSError, what: str) -> RepositoryError:
    """Translate an OSError into a repository error that names the object."""
    if exc.errno in _FULL:
        return RepositoryFullError(f"no space left on device while writing {what}")
    return RepositoryError(f"cannot write {what}: {exc.strerror or exc}")


def write_file_durable(
    path: Path, parts: Iterable[bytes | bytearray | memoryview], what: str, *, mode: int = 0o644
) -> None:
    """Write ``parts`` to ``path`` (must not be visible yet to readers) and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise os_error(exc, what) from exc
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        _fsync(fd)
    except OSError as exc:
        os.close(fd)
        unlink_quiet(path)
        raise os_error(exc, what) from exc
    except BaseException:  # from ``parts`` (the caller's data): no fd, no file left
        os.close(fd)
        unlink_quiet(path)
        raise
    os.close(fd)


_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()
SYNC_THREADS = 4


def _pool() -> ThreadPoolExecutor:
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")
        return _sync_pool


def write_files_durable(items: Sequence[tuple[Path, Iterable[bytes | bytearray], str]]) -> None:
    """:func:`write_file_durable` for several new files: all are written, then fsynced
    together from a few threads (fsync releases the GIL), so the file system can
    commit them in one journal transaction instead of one per file; in this thread
    when fsync is fast (:func:`fsyncs_inline`). When this returns every file is
    durable; on error none is left behind."""
    if len(items) <= 1:
        for path, parts, what in items:
            write_file_durable(path, parts, what)
        return
    opened: list[tuple[int, Path, str]] = []
    try:
        for path, parts, what in items:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise os_error(exc, what) from exc
            opened.append((fd, path, what))
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
            except OSError as exc:
                raise os_error(exc, what) from exc
        if fsyncs_inline():
            for fd, _, what in opened:
                try:
                    _fsync(fd)
                except OSError as exc:
                    raise os_error(exc, what) from exc
        else:
            futures = [(what, _pool().submit(_fsync, fd)) for fd, _, what in opened]
            for what, fut in futures:
                try:
                    fut.result()
                except OSError as exc:
                    raise os_error(exc, what) from exc
    except BaseException:
        for _, path, _ in opened:
            unlink_quiet(path)
        raise
    finally:
        for fd, _, _ in opened:
            os.close(fd)


def write_atomic(
    path: Path,
    parts: Iterable[bytes | bytearray | memoryview],
    what: str,
    *,
    sync_dir: bool = True,
    mode: int = 0o644,
) -> None:
    """Replace ``path`` atomically and durably with the concatenation of ``parts``
    (created with ``mode``, less the umask)."""
    tmp = tmp_path(path)
    write_file_durable(tmp, parts, what, mode=mode)
    try:
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        unlink_quiet(tmp)
        raise os_error(exc, what) from exc


def create_atomic(
    path: Path, parts: Iterable[bytes | bytearray | memoryview], what: str, *, mode: int = 0o644
) -> bool:
    """Create ``path`` with the concatenation of ``parts`` only if nothing is there:
    True when this call made it (atomically and durably: a temp, fsynced, then link(2),
    which fails with EEXIST rather than replace), False when ``path`` existed."""
    tmp = tmp_path(path)
    write_file_durable(tmp, parts, what, mode=mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            unlink_quiet(tmp)
        fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, what) from exc
    return True


def makedirs_durable(path: Path) -> None:
    """Create ``path`` (and parents); fsync each parent whose entry list changed."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def unlink_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def lock_file(path: Path, *, wait: bool) -> Iterator[bool]:
    """flock() ``path`` exclusively (created if missing) for the ``with`` block; yields
    whether it was taken (always True when ``wait``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
