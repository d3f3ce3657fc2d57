"""NBD transport: libnbd reading an export that nbdkit serves.

Production: nbdkit's vddk plugin (see vddk.py). Where a datastore is mounted locally the
file plugin serves the flat file (tests use it over the lab's frozen snapshot files).
Block status (base:allocation) reports holes, which are then never read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator

import nbd

from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import DiskNotFoundError, ShortReadError, TransportError
from proxy_worker.settings import NbdSettings, ProxySettings, VCenterAccess, VCenterDirectory
from proxy_worker.transports.base import (
    DiskReader,
    Extent,
    check_range,
    normalize_extents,
)
from proxy_worker.transports.file import local_flat_path
from proxy_worker.transports.read_buffers import ReadBuffers
from proxy_worker.transports.vddk import vddk_command

_BLOCK_STATUS_MAX = 1 << 30  # servers may refuse >= 4 GiB per request; stay well below


def file_command(path: str, settings: NbdSettings, *, write: bool = False) -> list[str]:
    # One connection never has more than in_flight requests: more server threads only add
    # wake-ups (1 GiB read: nbdkit 0.50 CPU s with its default 16 threads, 0.38 with 2).
    threads = f"--threads={max(2, settings.in_flight)}"
    mode = [] if write else ["-r"]
    return [settings.nbdkit, "-s", "--exit-with-parent", threads, *mode, "file", path]


def close_nbd_handle(h: nbd.NBD) -> None:
    """Close now, not at garbage collection: the handle owns the nbdkit child process."""
    if hasattr(h, "_o"):
        h.__del__()
        del h._o


def _collect(out: list[Extent], metacontext: str, off: int, entries: list[int], err: int) -> int:
    """block_status callback: entries are (length, flags) pairs starting at ``off``."""
    if metacontext != nbd.CONTEXT_BASE_ALLOCATION:
        return 0
    p = off
    for i in range(0, len(entries) - 1, 2):
        ln, flags = entries[i], entries[i + 1]
        out.append(Extent(p, ln, not (flags & nbd.STATE_ZERO)))
        p += ln
    return 0


class NbdReader(DiskReader):
    transport = "nbd"

    def __init__(
        self,
        argv: list[str],
        capacity: int,
        settings: NbdSettings,
        buffers: ReadBuffers | None = None,
    ) -> None:
        super().__init__(capacity)
        self.settings = settings
        # on its own: enough for the requests in flight and the chunks being looked at
        self._buffers = buffers or ReadBuffers(2 * settings.in_flight * (4 << 20))
        self._h = nbd.NBD()
        # libnbd zeroes every read buffer first unless told not to; a failed read's buffer
        # is never handed on (read_many raises), so that memset is pure cost.
        self._h.set_pread_initialize(False)
        try:
            self._h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            self._h.connect_command(argv)
            size = self._h.get_size()
            self._meta = bool(self._h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        except nbd.Error as exc:
            close_nbd_handle(self._h)
            raise TransportError(f"nbd connect ({shlex.join(argv)[:300]}): {exc}") from exc
        if size < capacity:
            close_nbd_handle(self._h)
            raise ShortReadError(f"NBD export holds {size} bytes, less than capacity {capacity}")

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.capacity)
        try:
            return self._h.pread(length, offset)
        except nbd.Error as exc:
            raise TransportError(f"nbd read at {offset}+{length}: {exc}") from exc

    def read_many(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bytearray]]:
        """Keep up to ``in_flight`` aio reads queued on the one connection; yield in order.

        Each range is read into a buffer from the transport's ReadBuffers and that buffer is
        what the caller gets: it is reused only once the caller and everyone it handed the
        chunk to have dropped it. (Buffers are plain bytearrays: libnbd 1.14's Python
        binding never frees an ``nbd.Buffer`` given to ``aio_pread``, but takes any other
        buffer object and lets go of it when the command completes.)
        """
        h = self._h
        window = self.settings.in_flight
        pending: deque[tuple[int, bytearray, int]] = deque()
        it = iter(ranges)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    off, ln = nxt
                    check_range(off, ln, self.capacity)
                    buf = self._buffers.take(ln)
                    pending.append((off, buf, h.aio_pread(buf, off)))
                if not pending:
                    return
                off, buf, cookie = pending[0]
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
                pending.popleft()
                yield off, buf
        except nbd.Error as exc:
            raise TransportError(f"nbd aio read: {exc}") from exc
        finally:
            # A consumer that stops early must not leave requests that still write into
            # buffers the pool would lend again.
            while pending:
                _, _, cookie = pending.popleft()
                with contextlib.suppress(nbd.Error):
                    while not h.aio_command_completed(cookie):
                        h.poll(-1)

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(offset, length, self.capacity)
        if not self._meta or length == 0:
            return super().extents(offset, length)
        found: list[Extent] = []
        pos, end = offset, offset + length
        while pos < end:
            got: list[Extent] = []
            start = pos
            try:
                self._h.block_status(
                    min(end - pos, _BLOCK_STATUS_MAX), pos, functools.partial(_collect, got)
                )
            except nbd.Error as exc:
                raise TransportError(f"nbd block status at {pos}: {exc}") from exc
            if not got or got[-1].end <= start:
                break  # no progress: the rest counts as data (normalize fills it)
            found.extend(got)
            pos = got[-1].end
        return normalize_extents(found, offset, length)

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
            close_nbd_handle(h)


class NbdTransport:
    name = "nbd"

    def __init__(
        self,
        settings: ProxySettings,
        vcenters: VCenterDirectory | None = None,
        buffers: ReadBuffers | None = None,
    ) -> None:
        self.settings = settings
        self.vcenters = vcenters or VCenterDirectory([])
        self._pwdir: str | None = None
        self._lock = threading.Lock()
        self.buffers = buffers or ReadBuffers(settings.memory_limit_mib << 20)

    def _password_file(self, vc: VCenterAccess) -> str:
        """The file nbdkit reads the password from: the config's secret file when there is
        one, else a private 0600 copy removed when the transport closes."""
        if vc.password_file or not vc.password:
            return vc.password_file
        with self._lock:
            if self._pwdir is None:
                self._pwdir = tempfile.mkdtemp(prefix="vmbackup-proxy-")
            path = os.path.join(self._pwdir, f"{vc.name}.pw")
            if not os.path.exists(path):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(vc.password)
        return path

    def command(self, source: SnapshotDisk, *, write: bool = False) -> list[str]:
        """nbdkit's argv for the disk: read-only for backups; ``write`` for restore-vm,
        which fills the disk of a VM it has just created."""
        if self.settings.nbd.server == "file":
            path = local_flat_path(source, self.settings)
            if not os.path.exists(path):
                raise DiskNotFoundError(f"disk data {path!r} not found")
            return file_command(path, self.settings.nbd, write=write)
        vc = self.vcenters.get(source.vcenter)
        return vddk_command(source, vc, self.settings.nbd, self._password_file(vc), write=write)

    def open(self, source: SnapshotDisk) -> NbdReader:
        return NbdReader(self.command(source), source.capacity, self.settings.nbd, self.buffers)

    def close(self) -> None:
        if self._pwdir is not None:
            shutil.rmtree(self._pwdir, ignore_errors=True)
            self._pwdir = None
