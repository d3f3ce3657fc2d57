"""One point's disk opened for file restore, and everything torn down after.

The chain, built in this order and undone in reverse on success, error, SIGTERM or
Ctrl-C: our nbdkit export of the disk (read-only, on a private Unix socket) -> nbdfuse
presents it as a file -> a read-only loop device per partition -> each partition
mounted read-only (file_restore/fs_mount.py). Nothing writes to the repository or to
the disk: a file restore cannot change a backup.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from export.nbdfuse import MountedFile, mount_file
from export.nbdkit_server import ExportSpec, RunningExport, start_export
from file_restore.fs_mount import MountedPartition, mount_partition
from file_restore.partitions import Partition, read_partitions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):  # a signal, not an error
    """SIGTERM or SIGINT arrived: unwind, tearing everything down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread while inside."""

    def on_signal(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class OpenDisk:
    workdir: Path
    image: Path  # the disk as a file (nbdfuse)
    table: str = ""  # "dos", "gpt" or "" (none)
    partitions: list[Partition] = field(default_factory=list)
    mounted: list[MountedPartition] = field(default_factory=list)
    export: RunningExport | None = None
    fuse: MountedFile | None = None

    def mount(self, part: Partition, at: Path | None = None) -> MountedPartition:
        """Mount ``part`` read-only at ``at`` (a new directory; default: in the workdir)."""
        at = at or self.workdir / f"p{part.number}"
        at.mkdir()
        try:
            mp = mount_partition(self.image, part, at)
        except BaseException:
            if not os.path.ismount(at):
                shutil.rmtree(at, ignore_errors=True)
            raise
        self.mounted.append(mp)
        return mp

    def close(self) -> None:
        """Undo everything, signals held off meanwhile so a second Ctrl-C cannot cut the
        teardown short; idempotent."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            while self.mounted:
                mp = self.mounted.pop()
                mp.unmount()
                if not os.path.ismount(mp.root):
                    shutil.rmtree(mp.root, ignore_errors=True)
            if self.fuse is not None:
                self.fuse.unmount()
                self.fuse = None
            if self.export is not None:
                self.export.stop()
                self.export = None
            shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def open_disk(spec: ExportSpec) -> Iterator[OpenDisk]:
    """Serve ``spec``'s disk and present it as a file with its partitions read; ``spec``'s
    socket is replaced by a private one."""
    parent = Path(os.environ.get("TMPDIR") or "/var/tmp")
    workdir = Path(tempfile.mkdtemp(prefix="vmbackup-files-", dir=parent))
    disk = OpenDisk(workdir, workdir / "disk.img")
    try:
        sock = workdir / "nbd.sock"
        disk.export = start_export(replace(spec, socket=sock, writable=False))
        disk.fuse = mount_file(disk.image, sock)
        disk.table, disk.partitions = read_partitions(disk.image)
        yield disk
    finally:
        disk.close()
