"""Instant VM recovery: run a point's VM from its backup at once, then move it to a
production datastore while it runs.

Steps: check the point, the production datastore (--datastore: the host must mount it,
Storage vMotion needs that) and the name; serve each disk writable from the repository
as a flat file (instant_datastore.py) and mount that directory on the host as an NFS
datastore; create the VM from the point's saved configuration with its disks on those
files (no copy: the disks exist already) and power it on. `migrate` is one
RelocateVM_Task to the production datastore; the host copies the disks, the guest's
writes included (they live in the export's overlay), and the VM then no longer touches
the export. `close` undoes what is left: a VM still on the export is powered off and
unregistered (its files are the export's), the datastore unmounted, the exports stopped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from common.logging import get_logger
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.instant_datastore import ExportDatastore, ServedDisk
from coordinator.restore.recreate import TASK_TIMEOUT_S, check_free_name, load_point
from coordinator.restore.spec import SpecPlan, build_spec
from coordinator.restore.target import Target, find_target
from coordinator.vcenter import Connection, VCenterError
from export.nbdkit_server import ExportSpec
from repository.interfaces import PointSource

log = get_logger(__name__)

MIGRATE_TIMEOUT_S = 24 * 3600.0  # a Storage vMotion of large disks takes hours


class Cancelled(RestoreVmError):
    """SIGINT or SIGTERM while starting."""


class MigrationError(RestoreVmError):
    """The relocation failed; the VM still runs from the export."""


@dataclass
class InstantVm:
    point_id: str
    vcenter: str
    vm_name: str
    host: str
    datacenter: str
    export_datastore: str
    export_dir: str
    target_datastore: str
    vm_moref: str = ""
    power_state: str = ""
    migrated: bool = False
    disks: list[dict[str, Any]] = field(default_factory=list)  # key, capacity, file
    metrics: list[str] = field(default_factory=list)  # each disk export's /metrics URL
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dir_name(name: str) -> str:
    """The VM's folder on the export datastore: its name, kept to safe characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "vm"


def _point_disks_at(plan: SpecPlan, store: ExportDatastore, served: dict[int, ServedDisk]) -> None:
    """Make the spec's new disks the served files (existing: no fileOperation)."""
    by_temp = {dp.temp_key: dp.saved_key for dp in plan.disks}
    for change in plan.spec.deviceChange:
        dev: Any = change.device
        if isinstance(dev, vim.vm.device.VirtualDisk) and dev.key in by_temp:
            backing: Any = dev.backing
            backing.fileName = store.ds_path(served[by_temp[dev.key]])
            change.fileOperation = None


class InstantSession:
    """One instant VM and the export it runs from."""

    def __init__(self, conn: Connection, store: ExportDatastore, info: InstantVm) -> None:
        self.conn = conn
        self.store = store
        self.info = info
        self.vm: Any = None

    @classmethod
    def start(
        cls,
        conn: Connection,
        repo: PointSource,
        source: ExportSpec,
        *,
        datastore: str,
        name: str = "",
        host: str = "",
        folder: str = "",
        nfs_host: str = "127.0.0.1",
        export_dir: Path | None = None,
        metrics_port: int = 0,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> InstantSession:
        """Serve the point's disks from exports, register the VM on them and power it on.
        ``metrics_port``: the first disk's export serves /metrics there, the next disk's
        on the port after it (one nbdkit per disk); 0 = none. ``source``: the exports'
        repository (a directory or s3://, with its passphrase and S3 settings) and point."""
        point_id = source.point
        point, cfg = load_point(repo, point_id)
        name = name or cfg.name or point.vm_name
        if not name:
            raise RestoreVmError(f"point {point_id} names no VM: give --name")
        prod = find_target(conn, datastore, host, folder)  # also: the host sees --datastore
        check_free_name(name, prod)
        wanted = build_spec(cfg, point, name, prod).disks  # the disks the VM will have
        store = ExportDatastore.create(export_dir, point_id)
        info = InstantVm(
            point_id=point_id,
            vcenter=conn.name,
            vm_name=name,
            host=prod.host_name,
            datacenter=prod.dc_path,
            export_datastore=store.name,
            export_dir=str(store.root),
            target_datastore=datastore,
        )
        self = cls(conn, store, info)
        try:
            self._start(
                dataclasses.replace(source, point=point.id),
                point,
                cfg,
                wanted,
                prod,
                folder,
                nfs_host,
                metrics_port,
                cancelled,
            )
        except BaseException as exc:
            log.warning("instant_start_failed", vm=name, error=str(exc))
            problems = self.close()
            if problems and isinstance(exc, RestoreVmError):
                raise RestoreVmError(f"{exc}; clean-up: {'; '.join(problems)}") from exc
            raise
        return self

    def _start(
        self,
        source: ExportSpec,
        point: Any,
        cfg: Any,
        wanted: list[Any],
        prod: Target,
        folder: str,
        nfs_host: str,
        metrics_port: int,
        cancelled: Callable[[], bool],
    ) -> None:
        def step() -> None:
            if cancelled():
                raise Cancelled("cancelled: everything started was removed")

        vm_dir = _dir_name(self.info.vm_name)
        served: dict[int, ServedDisk] = {}
        for n, dp in enumerate(wanted):
            step()
            port = metrics_port + n if metrics_port else 0
            sd = self.store.serve_disk(source, dp.saved_key, dp.capacity, vm_dir, port)
            served[dp.saved_key] = sd
            if port:
                self.info.metrics.append(f"http://127.0.0.1:{port}/metrics")
        step()
        self.store.mount_on(prod.host, nfs_host)
        step()
        target = find_target(self.conn, self.store.name, prod.host_name, folder)
        plan = build_spec(cfg, point, self.info.vm_name, target)
        _point_disks_at(plan, self.store, served)
        plan.spec.files = vim.vm.FileInfo(vmPathName=f"[{self.store.name}] {vm_dir}/{vm_dir}.vmx")
        self.info.notes = list(plan.notes)
        task = target.folder.CreateVM_Task(config=plan.spec, pool=target.pool, host=target.host)
        self.vm = self.conn.wait_task(task, f"create VM {self.info.vm_name!r}", TASK_TIMEOUT_S)
        self.info.vm_moref = self.vm._moId
        step()
        self.conn.wait_task(self.vm.PowerOnVM_Task(), f"power on {self.info.vm_name!r}", 600)
        self.info.power_state = "poweredOn"
        self.info.disks = self._disk_files()
        log.info("instant_vm_running", vm=self.info.vm_name, moref=self.info.vm_moref)

    def _disk_files(self) -> list[dict[str, Any]]:
        props = self.conn.get_properties(self.vm, ["config.hardware.device"])
        devices: list[Any] = props.get("config.hardware.device", [])
        out: list[dict[str, Any]] = []
        for d in devices:
            if isinstance(d, vim.vm.device.VirtualDisk):
                disk: Any = d  # the stubs' backing is a bare BackingInfo
                out.append(
                    {
                        "key": disk.key,
                        "capacity": disk.capacityInBytes,
                        "file": disk.backing.fileName,
                    }
                )
        return out

    def on_export(self) -> bool:
        """Whether any disk or the VM's home is still on the export datastore."""
        prefix = f"[{self.store.name}]"
        home = self.conn.get_properties(self.vm, ["config.files.vmPathName"])
        files = [str(home.get("config.files.vmPathName", ""))]
        files += [d["file"] for d in self._disk_files()]
        return any(f.startswith(prefix) for f in files)

    def migrate(self) -> None:
        """RelocateVM_Task to the production datastore, checked; MigrationError when it
        fails (the VM keeps running from the export)."""
        name, ds = self.info.vm_name, self.info.target_datastore
        try:
            target = find_target(self.conn, ds, self.info.host)
            spec = vim.vm.RelocateSpec(datastore=target.datastore)
            log.info("instant_migrate", vm=name, datastore=ds)
            task = self.vm.RelocateVM_Task(spec=spec, priority="defaultPriority")
            self.conn.wait_task(task, f"migrate {name!r} to {ds!r}", MIGRATE_TIMEOUT_S)
            if self.on_export():
                raise RestoreVmError(f"the relocation ended, yet {name!r} still uses the export")
        except (RestoreVmError, VCenterError, vmodl.MethodFault) as exc:
            why = getattr(exc, "msg", None) or str(exc)
            raise MigrationError(
                f"migration of {name!r} to datastore {ds!r} failed: {why}"
            ) from exc
        self.info.migrated = True
        self.info.disks = self._disk_files()

    def close(self) -> list[str]:
        """Remove what runs from the export: the VM if it is still on it (a VM moved
        away, by us or anyone, stays), the datastore, mounts and exports."""
        problems: list[str] = []
        if self.vm is not None:
            try:
                if self.on_export():
                    self._remove_vm()
                    self.info.power_state = "removed"
            except Exception as exc:
                problems.append(f"VM {self.info.vm_name!r} not removed: {exc}")
        problems += self.store.close()
        for p in problems:
            log.error("instant_cleanup_incomplete", problem=p)
        return problems

    def _remove_vm(self) -> None:
        name = self.info.vm_name
        state = self.conn.get_properties(self.vm, ["runtime.powerState"]).get("runtime.powerState")
        if state != "poweredOff":
            self.conn.wait_task(self.vm.PowerOffVM_Task(), f"power off {name!r}", 600)
        # Unregister, not Destroy: its files are the export's, removed with it.
        self.vm.UnregisterVM()
