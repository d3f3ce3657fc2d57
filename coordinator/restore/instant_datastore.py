"""The datastore an instant VM runs from: each disk of a point served writable and seen
by the host as a flat VMDK, without copying it first.

Per disk: `vmbackup export`'s nbdkit (our plugin under the cow filter: the guest's writes
land in an overlay, never in the repository) on a Unix socket, and nbdfuse presenting
that export as ``<vm>/disk-<key>-flat.vmdk`` beside a monolithic-flat descriptor
``<vm>/disk-<key>.vmdk``, in a directory laid out as a datastore. The host mounts that
directory as an NFS datastore (HostDatastoreSystem.CreateNasDatastore): on real vSphere an
NFS server on this machine exports it (Veeam's vPower NFS works this way); the lab's host
is this machine and mounts it directly (lab/vcsim/instant.go).

Layout (one private directory, removed at close)::

    vmbackup-instant-XXXX/
      datastore/          what the host mounts (remotePath)
        <vm>/disk-2000.vmdk, disk-2000-flat.vmdk (nbdfuse), <vm>.vmx (written by the host)
      run/                the cow overlays, never exported

and the nbdkit sockets in a short private directory of their own (a Unix socket's path
has at most 107 bytes), removed with it.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from common.logging import get_logger
from coordinator.restore.errors import RestoreVmError
from export.nbdfuse import MountedFile, mount_file
from export.nbdkit_server import ExportSpec, RunningExport, start_export

log = get_logger(__name__)


def descriptor(capacity: int, flat_name: str) -> str:
    """A monolithic-flat VMDK descriptor for ``flat_name`` (the lab writes the same)."""
    sectors = (capacity + 511) // 512
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="vmfs"\n\n# Extent description\nRW {sectors} VMFS "{flat_name}"\n'
    )


@dataclass
class ServedDisk:
    key: int
    capacity: int
    vmdk: str  # path inside the datastore: "<vm>/disk-2000.vmdk"
    export: RunningExport
    mount: MountedFile | None = None


@dataclass
class ExportDatastore:
    name: str
    workdir: Path
    sockets: Path
    disks: list[ServedDisk] = field(default_factory=list)
    datastore: Any = None  # the vim.Datastore once a host mounted it
    host: Any = None

    @property
    def root(self) -> Path:
        return self.workdir / "datastore"

    @classmethod
    def create(cls, base: Path | None, point_id: str) -> ExportDatastore:
        parent = base or Path(tempfile.gettempdir())
        try:
            workdir = Path(tempfile.mkdtemp(prefix="vmbackup-instant-", dir=parent))
        except OSError as exc:
            raise RestoreVmError(f"cannot create the export directory in {parent}: {exc}") from None
        workdir.chmod(0o755)  # an NFS server must reach datastore/ below it
        (workdir / "datastore").mkdir()
        (workdir / "run").mkdir(mode=0o700)
        name = f"vmbackup-instant-{point_id[-8:]}-{secrets.token_hex(2)}"
        return cls(name, workdir, Path(tempfile.mkdtemp(prefix="vmbackup-nbd-")))

    def ds_path(self, disk: ServedDisk) -> str:
        return f"[{self.name}] {disk.vmdk}"

    def serve_disk(
        self,
        source: ExportSpec,
        key: int,
        capacity: int,
        vm_dir: str,
        metrics_port: int = 0,
    ) -> ServedDisk:
        """Start the writable export of disk ``key`` of ``source``'s point (its
        repository, passphrase and S3 settings) and mount it as its flat file; its
        /metrics on 127.0.0.1:``metrics_port`` unless 0."""
        (self.root / vm_dir).mkdir(exist_ok=True)
        socket = self.sockets / f"disk-{key}.sock"
        spec = dataclasses.replace(
            source,
            disk=key,
            writable=True,
            socket=socket,
            overlay_dir=self.workdir / "run",
            metrics_port=metrics_port,
        )
        disk = ServedDisk(key, capacity, f"{vm_dir}/disk-{key}.vmdk", start_export(spec))
        self.disks.append(disk)
        flat = self.root / vm_dir / f"disk-{key}-flat.vmdk"
        (self.root / disk.vmdk).write_text(descriptor(capacity, flat.name))
        disk.mount = mount_file(flat, socket)
        log.info("instant_disk_served", disk=key, file=str(flat), nbdkit=disk.export.pid)
        return disk

    def mount_on(self, host: Any, nfs_host: str) -> Any:
        """Mount the directory on ``host`` as the NFS datastore ``self.name``."""
        spec = vim.host.NasVolume.Specification(
            remoteHost=nfs_host,
            remotePath=str(self.root),
            localPath=self.name,
            accessMode="readWrite",
            type="NFS",
        )
        self.datastore = host.configManager.datastoreSystem.CreateNasDatastore(spec)
        self.host = host
        log.info("instant_datastore_mounted", datastore=self.name, remote=f"{nfs_host}:{self.root}")
        return self.datastore

    def close(self) -> list[str]:
        """Unmount the datastore from the host, then the files, stop the exports and
        remove the directory (overlays included). What could not be undone, each said."""
        problems: list[str] = []
        if self.datastore is not None:
            try:
                self.host.configManager.datastoreSystem.RemoveDatastore(self.datastore)
                self.datastore = None
            except Exception as exc:
                problems.append(f"datastore {self.name} not removed from its host: {exc}")
        for d in self.disks:
            if d.mount is not None:
                d.mount.unmount()
            d.export.stop()
        self.disks.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)
        if self.workdir.exists():
            problems.append(f"{self.workdir} not removed (a mount still busy?)")
        return problems
