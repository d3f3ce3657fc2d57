"""Appending to an open pack with O_DIRECT: no copy into the page cache.

A buffered pwritev copies every byte of a batch into page-cache pages, which on the
writer hosts measured was most of the writers' kernel time (bench/RESULTS.md, "Writers'
kernel time"). With O_DIRECT the device reads the bytes from the process's own memory,
but every write must start and end on a block boundary and come from an aligned buffer.
So the batch is copied (in user space) into a page-aligned mmap buffer behind the file's
unaligned tail, which is kept in memory and written again, the same bytes, with the
next batch; the last block is padded with zeros. The file is thus longer than the pack
by less than a block until :meth:`DirectAppender.finish` cuts it to its length. Zeros
past the last record are no record (its CRC fails), so an abandoned pack is recovered to
exactly its durable records, as a torn buffered write is.

Where the file system refuses O_DIRECT (tmpfs before Linux 6.6: EINVAL) the caller
falls back to buffered writes; :func:`enable` says so in one log line per process.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Sequence

from common.logging import get_logger

# The alignment of offsets, lengths and buffers: 4 KiB covers 512-byte and 4K devices.
BLOCK = 4096
# The aligned staging buffer of one open pack; a bigger batch is written in pieces.
BUFFER = 4 << 20

log = get_logger(__name__)
_refused_logged = False


def enable(fd: int, what: str) -> bool:
    """Switch ``fd`` to O_DIRECT; False (logged once per process) where it is refused."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        refused(what, exc)
        return False
    return True


def refused(what: str, exc: OSError) -> None:
    """Log (once per process) that O_DIRECT was refused and buffered writes are used."""
    global _refused_logged
    if not _refused_logged:
        _refused_logged = True
        log.warning(
            "pack_direct_io_refused",
            pack=what,
            error=os.strerror(exc.errno or 0),
            fallback="buffered pack writes (a page-cache copy) in this process",
        )


def disable(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)


class DirectAppender:
    """Appends at a file's end through an O_DIRECT ``fd``; ``head`` is the file's
    current content (all of it is below one block: the pack's header)."""

    def __init__(self, fd: int, head: bytes) -> None:
        if len(head) >= BLOCK:
            raise ValueError(f"head of {len(head)} bytes: must be under {BLOCK}")
        self.fd = fd
        self.size = len(head)  # the logical end (the file may be longer, zero padded)
        self._tail = bytes(head)  # the bytes from the last block boundary to ``size``
        self._buf: mmap.mmap | None = None

    def append(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write ``parts`` at the logical end. The caller fdatasyncs; on an error nothing
        of it counts (the in-memory tail is the old one)."""
        if self._buf is None:
            self._buf = mmap.mmap(-1, BUFFER)  # anonymous: page aligned
        buf = self._buf
        start = self.size - len(self._tail)  # block aligned
        fill = len(self._tail)
        buf[:fill] = self._tail
        for part in parts:
            view = memoryview(part).cast("B")
            while len(view):
                n = min(len(view), BUFFER - fill)
                buf[fill : fill + n] = view[:n]
                fill += n
                view = view[n:]
                if fill == BUFFER:
                    _pwrite_all(self.fd, buf, BUFFER, start)
                    start += BUFFER
                    fill = 0
        whole = fill - fill % BLOCK
        tail = bytes(buf[whole:fill])
        if fill:
            padded = whole + (BLOCK if fill % BLOCK else 0)
            buf[fill:padded] = bytes(padded - fill)
            _pwrite_all(self.fd, buf, padded, start)
        self._tail = tail
        self.size = start + fill

    def finish(self) -> None:
        """Cut the file to its logical length (the caller fdatasyncs) and free the buffer."""
        os.ftruncate(self.fd, self.size)
        self.close()

    def close(self) -> None:
        if self._buf is not None:
            self._buf.close()
            self._buf = None


def _pwrite_all(fd: int, buf: mmap.mmap, length: int, offset: int) -> None:
    view = memoryview(buf)
    try:
        done = 0
        while done < length:
            n = os.pwritev(fd, [view[done:length]], offset + done)
            if n <= 0 or n % BLOCK:
                raise OSError(errno.EIO, f"short O_DIRECT write: {n} bytes at {offset + done}")
            done += n
    finally:
        view.release()
