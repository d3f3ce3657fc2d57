"""The whole restore: create the VM, fill its disks, destroy it again if anything fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyVmomi import vim

from common.logging import get_logger
from coordinator import vm_config
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.nbd_write import NbdTarget, write_disk_nbd
from coordinator.restore.result import RestoredDisk, RestoreVmResult
from coordinator.restore.spec import DiskPlan, SpecPlan, build_spec
from coordinator.restore.target import Target, find_target
from coordinator.restore.upload import upload_disk
from coordinator.vcenter import (
    Connection,
)
from coordinator.vm_config import VmConfig
from repository.interfaces import PointSource
from repository.points import Point

log = get_logger(__name__)

TASK_TIMEOUT_S = 600.0  # create and destroy of the VM


def load_point(repo: PointSource, point_id: str) -> tuple[Point, VmConfig]:
    point = repo.get_point(point_id)  # PointNotFoundError names an unknown point
    if not point.vm_config:
        raise RestoreVmError(
            f"point {point_id} has no saved VM configuration (made by import-disk?):"
            " restore its disks to files with `vmbackup restore` instead"
        )
    try:
        cfg = vm_config.parse(point.vm_config)
    except vm_config.VmConfigError as exc:
        raise RestoreVmError(f"point {point_id}: {exc}") from None
    return point, cfg


def check_free_name(name: str, target: Target) -> None:
    if name in target.vm_names:
        raise RestoreVmError(
            f"a VM named {name!r} already exists in datacenter {target.dc_path!r}:"
            " give another name with --name"
        )


def restore_vm(
    conn: Connection,
    repo: PointSource,
    point_id: str,
    *,
    datastore: str,
    name: str = "",
    host: str = "",
    folder: str = "",
    keep_failed: bool = False,
    upload_attempts: int = 3,
    nbd: NbdTarget | None = None,
    progress: Callable[[str, int, int], None] = lambda _d, _n, _t: None,
) -> RestoreVmResult:
    """Recreate the point's VM on ``conn`` and fill its disks: with /folder uploads, or
    through NBD when ``nbd`` says how to reach a new disk (``--transport nbd``)."""
    t0 = time.monotonic()
    point, cfg = load_point(repo, point_id)
    name = name or cfg.name or point.vm_name
    if not name:
        raise RestoreVmError(f"point {point_id} names no VM: give --name")
    target = find_target(conn, datastore, host, folder)
    check_free_name(name, target)
    plan = build_spec(cfg, point, name, target)
    log.info("restore_vm_create", point=point_id, vm=name, host=target.host_name, ds=datastore)
    task = target.folder.CreateVM_Task(config=plan.spec, pool=target.pool, host=target.host)
    vm = conn.wait_task(task, f"create VM {name!r}", TASK_TIMEOUT_S)
    result = RestoreVmResult(
        point_id=point_id,
        vcenter=conn.name,
        vm_name=name,
        vm_moref=vm._moId,
        datacenter=target.dc_path,
        datastore=datastore,
        host=target.host_name,
        power_state="",
        notes=list(plan.notes),
    )
    try:
        files = _created_disks(conn, vm, plan)
        for dp in plan.disks:
            key, file, ctrl = files[dp.saved_key]

            def report(n: int, dp: DiskPlan = dp) -> None:
                progress(f"disk {dp.saved_key}", n, dp.capacity)

            def retry(attempt: int, why: str, dp: DiskPlan = dp) -> None:
                log.warning(
                    "restore_vm_upload_retry", disk=dp.saved_key, attempt=attempt, error=why
                )

            if nbd is None:
                secs, used = upload_disk(
                    conn,
                    repo,
                    point,
                    dp.saved_key,
                    target,
                    file,
                    report,
                    attempts=upload_attempts,
                    on_retry=retry,
                )
                sent = dp.capacity  # zeros included: /folder takes the whole file
            else:
                argv = nbd.command(file, vm._moId, target, dp.capacity)
                secs, sent, used = write_disk_nbd(
                    argv,
                    repo,
                    point,
                    dp.saved_key,
                    in_flight=nbd.in_flight,
                    attempts=upload_attempts,
                    on_retry=retry,
                    progress=report,
                )
            result.disks.append(
                RestoredDisk(
                    dp.saved_key,
                    key,
                    dp.label,
                    file,
                    dp.capacity,
                    ctrl,
                    dp.unit_number,
                    secs,
                    attempts=used,
                    bytes_sent=sent,
                )
            )
            result.bytes_uploaded += sent
            log.info(
                "restore_vm_disk", disk=dp.saved_key, file=file, seconds=round(secs, 3), sent=sent
            )
        state = conn.get_properties(vm, ["runtime.powerState"]).get("runtime.powerState")
        result.power_state = str(state)
        if state != "poweredOff":
            raise RestoreVmError(f"the new VM is {state}, expected poweredOff")
    except BaseException as exc:
        if not keep_failed:
            _destroy(conn, vm, name, exc)
        raise
    result.seconds = time.monotonic() - t0
    return result


def _created_disks(conn: Connection, vm: Any, plan: SpecPlan) -> dict[int, tuple[int, str, str]]:
    """saved disk key -> (new key, "[ds] file.vmdk", "type bus") as vCenter created them."""
    devices = conn.get_properties(vm, ["config.hardware.device"]).get("config.hardware.device", [])
    ctrls = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    out: dict[int, tuple[int, str, str]] = {}
    for dp in plan.disks:
        want_type = vm_config.CONTROLLER_TYPES[dp.controller_type][0]
        found = None
        for d in disks:
            c: Any = ctrls.get(d.controllerKey) if d.controllerKey is not None else None
            if c is None or d.unitNumber != dp.unit_number or c.busNumber != dp.controller_bus:
                continue
            ctype = type(c).__name__.rsplit(".", 1)[-1]
            file = str(getattr(d.backing, "fileName", "") or "")
            if vm_config.CONTROLLER_TYPES.get(ctype, ("", ""))[0] == want_type and file:
                found = (int(d.key), file, f"{ctype} {c.busNumber}")
                break
        if found is None:
            raise RestoreVmError(
                f"the new VM has no disk at {dp.controller_type} bus {dp.controller_bus}"
                f" unit {dp.unit_number} (for saved disk {dp.saved_key})"
            )
        out[dp.saved_key] = found
    return out


def _destroy(conn: Connection, vm: Any, name: str, why: BaseException) -> None:
    log.warning("restore_vm_failed_destroying", vm=name, error=str(why))
    try:
        conn.wait_task(vm.Destroy_Task(), f"destroy half-restored VM {name!r}", TASK_TIMEOUT_S)
    except Exception as exc:  # report the original failure, not this one
        log.error("restore_vm_destroy_failed", vm=name, error=str(exc))
