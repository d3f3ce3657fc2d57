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

from coordinator.restore.errors import RestoreVmError
from coordinator.restore.target import Target
from proxy_worker.errors import ProxyError
from proxy_worker.transports.base import DiskSource
from proxy_worker.transports.nbd import NbdTransport, close_nbd_handle
from repository_writer.errors import RepositoryError
from repository_writer.points import Point
from repository_writer.repository import Repository
from repository_writer.restore import Buf, restore_disk_positional


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
        source = DiskSource(
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


def write_disk_nbd(
    argv: list[str],
    repo: Repository,
    point: Point,
    disk_key: int,
    *,
    in_flight: int = 4,
    progress: Callable[[int], None] = lambda _n: None,
) -> tuple[float, int]:
    """Write the disk's data chunks into the export ``argv`` serves; returns (seconds,
    bytes written). Up to ``in_flight`` writes are queued at once; the export is flushed
    before this returns, so the data is on the datastore when the VM is reported."""
    capacity = point.disk(disk_key).capacity
    t0 = time.monotonic()
    h = nbd.NBD()
    try:
        h.connect_command(argv)
    except nbd.Error as exc:
        close_nbd_handle(h)
        raise RestoreVmError(
            f"disk {disk_key}: nbd connect ({shlex.join(argv)[:300]}): {exc}"
        ) from exc
    pending: deque[tuple[int, Buf]] = deque()  # (cookie, the buffer it writes from)
    written = 0

    def complete_oldest() -> None:
        cookie, _data = pending[0]
        while not h.aio_command_completed(cookie):  # raises nbd.Error if the write failed
            h.poll(-1)
        pending.popleft()

    def put(off: int, data: Buf | None, n: int) -> None:
        nonlocal written
        if data is not None:
            view = memoryview(data)[:n]  # past n: beyond a disk that ends mid-chunk
            while len(pending) >= in_flight:
                complete_oldest()
            pending.append((h.aio_pwrite(view, off), view))
            written += len(view)
            # shorter than n: the disk grew after the chunk was stored; the rest is zeros
        progress(off + n)

    try:
        size = h.get_size()
        if h.is_read_only():
            raise RestoreVmError(f"disk {disk_key}: the NBD export is read-only")
        if size != capacity:
            raise RestoreVmError(
                f"disk {disk_key}: the NBD export holds {size} bytes, the disk {capacity}"
            )
        restore_disk_positional(repo, point.id, disk_key, put, f"disk {disk_key} over NBD")
        while pending:
            complete_oldest()
        if h.can_flush():
            h.flush()
        h.shutdown()
    except nbd.Error as exc:
        raise RestoreVmError(f"disk {disk_key}: NBD write failed: {exc}") from exc
    except RepositoryError as exc:  # a chunk missing or damaged: stop before the end
        raise RestoreVmError(f"disk {disk_key}: {exc}") from exc
    finally:
        # what is still queued completes or fails with the connection; never reported
        close_nbd_handle(h)
    return time.monotonic() - t0, written
