"""One disk of a point into the new VM's disk through NBD: nbdkit's vddk plugin opening
that disk writable (production), or its file plugin on the flat file where the datastore
is mounted (``proxy.nbd.server = "file"``; the lab). Unlike the /folder upload, only chunks
with data travel, each written at its offset: the new thin disk already reads zeros
everywhere else, so it stays thin and a mostly empty disk restores in the time its data
takes. ``--in-place`` rollback (rollback.py) writes through the same path into an
existing disk: only the chunks it chose, and zeros too (``zeros``), since an existing disk
holds old data where the point has zero chunks."""

from __future__ import annotations

import shlex
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import nbd

from common.chunk import zero_bytes
from common.snapshot_disk import SnapshotDisk
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.target import Target
from coordinator.settings import VCenterSettings
from proxy_worker.errors import ProxyError
from proxy_worker.settings import ProxySettings, VCenterAccess, VCenterDirectory
from proxy_worker.transports.nbd import NbdTransport, close_nbd_handle
from repository.errors import RepositoryError
from repository.interfaces import PointSource
from repository.points import Point
from repository.restore import Buf, restore_disk_positional

Put = Callable[[int, Buf | None, int], None]
# ``source(put, start)`` calls ``put(offset, data or None for a zero chunk, length)`` for
# every chunk to write at or after ``start``, in offset order (a resume gives a later start).
ChunkSource = Callable[[Put, int], None]


@dataclass(frozen=True)
class NbdTarget:
    """How restore-vm reaches a new VM's disk over NBD: the config's ``proxy.nbd`` (the
    vddk plugin with the vCenter's credentials, or the file plugin through
    ``proxy.datastore_mounts``), as a proxy would read a disk, but writable."""

    transport: NbdTransport
    vcenter: str

    @classmethod
    def from_config(cls, proxy: ProxySettings, vcenter: VCenterSettings) -> NbdTarget:
        """``proxy.nbd`` of the config, with the vCenter's account for the vddk plugin
        (``vddk_command`` applies ``nbd.vddk_thumbprints``). ``close()`` the transport."""
        access = VCenterAccess.from_config(vcenter)
        return cls(NbdTransport(proxy, VCenterDirectory([access])), vcenter.name)

    @property
    def in_flight(self) -> int:
        return self.transport.settings.nbd.in_flight

    def command(self, disk_file: str, vm_moref: str, target: Target, capacity: int) -> list[str]:
        return self.live_disk_command(
            SnapshotDisk(
                vcenter=self.vcenter,
                datacenter=target.dc_path,
                host=target.host_name,
                datastore=target.datastore_name,
                vm_moref=vm_moref,
                snapshot_moref="",
                disk_file=disk_file,
                capacity=capacity,
            )
        )

    def live_disk_command(self, disk: SnapshotDisk) -> list[str]:
        """nbdkit's argv opening a VM's live disk (no snapshot) writable."""
        try:
            return self.transport.command(disk, write=True)
        except ProxyError as exc:
            raise RestoreVmError(f"cannot open {disk.disk_file} over NBD: {exc}") from exc


class _NbdFailed(Exception):
    """The NBD connection or a write failed: a new connection can resume."""


@dataclass(frozen=True)
class NbdWriteStats:
    seconds: float
    data_bytes: int  # what travelled, data sent again after a failure included
    zero_bytes: int  # zeroed with NBD_CMD_WRITE_ZEROES (nothing travels but the range)
    attempts: int  # connections used


class _NbdPass:
    """One connection's writes, and where a failure leaves the disk: the server has
    taken every byte before the oldest write not yet confirmed (writes are confirmed in
    order), so a new connection resumes there; after a failed flush, from byte 0."""

    def __init__(self, argv: list[str], disk_key: int, in_flight: int, zeros: bool) -> None:
        self.argv, self.disk_key, self.in_flight, self.zeros = argv, disk_key, in_flight, zeros
        self.h = nbd.NBD()
        self.pending: deque[tuple[int, int, Buf | None]] = deque()  # (cookie, offset, buffer)
        self.handed = 0  # end of the last chunk given to put
        self.written = 0
        self.zeroed = 0
        self.flushing = False

    def run(
        self,
        source: ChunkSource,
        start: int,
        capacity: int,
        progress: Callable[[int], None],
    ) -> None:
        self.handed = start
        try:
            self.h.connect_command(self.argv)
            size = self.h.get_size()
            read_only = self.h.is_read_only()
            can_zero = self.h.can_zero()
        except nbd.Error as exc:
            raise _NbdFailed(f"nbd connect ({shlex.join(self.argv)[:300]}): {exc}") from exc
        if read_only:
            raise RestoreVmError(f"disk {self.disk_key}: the NBD export is read-only")
        if size != capacity:
            raise RestoreVmError(
                f"disk {self.disk_key}: the NBD export holds {size} bytes, the disk {capacity}"
            )

        def queue(cookie_of: Callable[[], int], off: int, buf: Buf | None) -> None:
            while len(self.pending) >= self.in_flight:
                self._complete_oldest()
            self.pending.append((cookie_of(), off, buf))

        def zero(off: int, n: int) -> None:
            if can_zero:
                queue(lambda: self.h.aio_zero(n, off), off, None)
            else:  # a server without WRITE_ZEROES: the zeros travel
                z = zero_bytes(n)
                queue(lambda: self.h.aio_pwrite(z, off), off, z)
            self.zeroed += n

        def put(off: int, data: Buf | None, n: int) -> None:
            if data is not None:
                view = memoryview(data)[:n]  # past n: beyond a disk that ends mid-chunk
                queue(lambda: self.h.aio_pwrite(view, off), off, view)
                self.written += len(view)
                # shorter than n: the disk grew after the chunk was stored; rest is zeros
                if self.zeros and len(view) < n:
                    zero(off + len(view), n - len(view))
            elif self.zeros:
                zero(off, n)
            self.handed = off + n
            progress(off + n)

        try:
            source(put, start)
            while self.pending:
                self._complete_oldest()
            self.flushing = True
            if self.h.can_flush():
                self.h.flush()
            self.h.shutdown()
        except nbd.Error as exc:
            raise _NbdFailed(str(exc)) from exc

    def _complete_oldest(self) -> None:
        cookie = self.pending[0][0]
        while not self.h.aio_command_completed(cookie):  # raises nbd.Error if it failed
            self.h.poll(-1)
        self.pending.popleft()

    def resume_at(self) -> int:
        if self.flushing:
            # A failed flush may have dropped any write not flushed yet, of this
            # connection or an earlier one (nothing is flushed before the end): all again.
            return 0
        return self.pending[0][1] if self.pending else self.handed

    def close(self) -> None:
        # what is still queued completes or fails with the connection; never reported
        close_nbd_handle(self.h)


def write_disk_nbd(
    argv: list[str],
    repo: PointSource,
    point: Point,
    disk_key: int,
    *,
    in_flight: int = 4,
    attempts: int = 3,
    backoff_s: float = 2.0,
    on_retry: Callable[[int, str], None] = lambda _attempt, _why: None,
    progress: Callable[[int], None] = lambda _n: None,
    zeros: bool = False,
) -> tuple[float, int, int]:
    """Write the disk's data chunks into the export ``argv`` serves; returns (seconds,
    bytes written, connections used). Up to ``in_flight`` writes are queued at once; the
    export is flushed before this returns, so the data is on the datastore when the VM is
    reported. A failed connection or write is resumed on a new connection from the first
    write not confirmed, up to ``attempts`` connections with a doubling pause; a damaged
    chunk or an export of the wrong size fails at once. ``zeros``: zero the zero chunks
    too (a disk that is not new)."""

    def source(put: Put, start: int) -> None:
        restore_disk_positional(
            repo, point.id, disk_key, put, f"disk {disk_key} over NBD", start=start
        )

    st = write_chunks_nbd(
        argv,
        disk_key,
        point.disk(disk_key).capacity,
        source,
        zeros=zeros,
        in_flight=in_flight,
        attempts=attempts,
        backoff_s=backoff_s,
        on_retry=on_retry,
        progress=progress,
    )
    return st.seconds, st.data_bytes, st.attempts


def write_chunks_nbd(
    argv: list[str],
    disk_key: int,
    capacity: int,
    source: ChunkSource,
    *,
    zeros: bool,
    in_flight: int = 4,
    attempts: int = 3,
    backoff_s: float = 2.0,
    on_retry: Callable[[int, str], None] = lambda _attempt, _why: None,
    progress: Callable[[int], None] = lambda _n: None,
) -> NbdWriteStats:
    """The chunks ``source`` gives into the export ``argv`` serves, with the resume rules
    of :func:`write_disk_nbd`; zero chunks are zeroed when ``zeros``, else skipped."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    t0 = time.monotonic()
    start = written = zeroed = 0
    attempt = 1
    while True:
        one = _NbdPass(argv, disk_key, in_flight, zeros)
        try:
            one.run(source, start, capacity, progress)
            return NbdWriteStats(
                time.monotonic() - t0, written + one.written, zeroed + one.zeroed, attempt
            )
        except _NbdFailed as exc:
            written += one.written  # what travelled, the part sent again included
            zeroed += one.zeroed
            start = one.resume_at()
            why = (
                f"NBD flush failed, so the disk is written again from byte 0: {exc}"
                if one.flushing
                else f"NBD write failed at byte {start}: {exc}"
            )
            if attempt >= attempts:
                raise RestoreVmError(
                    f"disk {disk_key}: {why} (after {attempts} attempts)"
                ) from exc.__cause__
        except RepositoryError as exc:  # a chunk missing or damaged: stop before the end
            raise RestoreVmError(f"disk {disk_key}: {exc}") from exc
        finally:
            one.close()
        on_retry(attempt, why)
        time.sleep(backoff_s * 2 ** (attempt - 1))
        attempt += 1
