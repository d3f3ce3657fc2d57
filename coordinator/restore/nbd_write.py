"""One disk of a point into the new VM's disk through NBD: nbdkit's vddk plugin opening
that disk writable (production), or its file plugin on the flat file where the datastore
is mounted (``proxy.nbd.server = "file"``; the lab). Unlike the /folder upload, only chunks
with data travel, each written at its offset: the new thin disk already reads zeros
everywhere else, so it stays thin and a mostly empty disk restores in the time its data
takes."""

from __future__ import annotations

import shlex
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import nbd

from common.snapshot_disk import SnapshotDisk
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.target import Target
from proxy_worker.errors import ProxyError
from proxy_worker.transports.nbd import NbdTransport, close_nbd_handle
from repository.errors import RepositoryError
from repository.interfaces import PointSource
from repository.points import Point
from repository.restore import Buf, restore_disk_positional


@dataclass(frozen=True)
class NbdTarget:
    """How restore-vm reaches a new VM's disk over NBD: the config's ``proxy.nbd`` (the
    vddk plugin with the vCenter's credentials, or the file plugin through
    ``proxy.datastore_mounts``), as a proxy would read a disk, but writable."""

    transport: NbdTransport
    vcenter: str

    @property
    def in_flight(self) -> int:
        return self.transport.settings.nbd.in_flight

    def command(self, disk_file: str, vm_moref: str, target: Target, capacity: int) -> list[str]:
        source = SnapshotDisk(
            vcenter=self.vcenter,
            datacenter=target.dc_path,
            host=target.host_name,
            datastore=target.datastore_name,
            vm_moref=vm_moref,
            snapshot_moref="",
            disk_file=disk_file,
            capacity=capacity,
        )
        try:
            return self.transport.command(source, write=True)
        except ProxyError as exc:
            raise RestoreVmError(f"cannot open {disk_file} over NBD: {exc}") from exc


class _NbdFailed(Exception):
    """The NBD connection or a write failed: a new connection can resume."""


class _NbdPass:
    """One connection's writes, and where a failure leaves the disk: the server has
    taken every byte before the oldest write not yet confirmed (writes are confirmed in
    order), so a new connection resumes there; after a failed flush, from byte 0."""

    def __init__(self, argv: list[str], disk_key: int, in_flight: int) -> None:
        self.argv, self.disk_key, self.in_flight = argv, disk_key, in_flight
        self.h = nbd.NBD()
        self.pending: deque[tuple[int, int, Buf]] = deque()  # (cookie, offset, buffer)
        self.handed = 0  # end of the last chunk given to put
        self.written = 0
        self.flushing = False

    def run(
        self,
        repo: PointSource,
        point: Point,
        start: int,
        capacity: int,
        progress: Callable[[int], None],
    ) -> None:
        self.handed = start
        try:
            self.h.connect_command(self.argv)
            size = self.h.get_size()
            read_only = self.h.is_read_only()
        except nbd.Error as exc:
            raise _NbdFailed(f"nbd connect ({shlex.join(self.argv)[:300]}): {exc}") from exc
        if read_only:
            raise RestoreVmError(f"disk {self.disk_key}: the NBD export is read-only")
        if size != capacity:
            raise RestoreVmError(
                f"disk {self.disk_key}: the NBD export holds {size} bytes, the disk {capacity}"
            )

        def put(off: int, data: Buf | None, n: int) -> None:
            if data is not None:
                view = memoryview(data)[:n]  # past n: beyond a disk that ends mid-chunk
                while len(self.pending) >= self.in_flight:
                    self._complete_oldest()
                self.pending.append((self.h.aio_pwrite(view, off), off, view))
                self.written += len(view)
                # shorter than n: the disk grew after the chunk was stored; rest is zeros
            self.handed = off + n
            progress(off + n)

        try:
            restore_disk_positional(
                repo, point.id, self.disk_key, put, f"disk {self.disk_key} over NBD", start=start
            )
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
) -> tuple[float, int, int]:
    """Write the disk's data chunks into the export ``argv`` serves; returns (seconds,
    bytes written, connections used). Up to ``in_flight`` writes are queued at once; the
    export is flushed before this returns, so the data is on the datastore when the VM is
    reported. A failed connection or write is resumed on a new connection from the first
    write not confirmed, up to ``attempts`` connections with a doubling pause; a damaged
    chunk or an export of the wrong size fails at once."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    capacity = point.disk(disk_key).capacity
    t0 = time.monotonic()
    start = written = 0
    attempt = 1
    while True:
        one = _NbdPass(argv, disk_key, in_flight)
        try:
            one.run(repo, point, start, capacity, progress)
            return time.monotonic() - t0, written + one.written, attempt
        except _NbdFailed as exc:
            written += one.written  # what travelled, the part sent again included
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
