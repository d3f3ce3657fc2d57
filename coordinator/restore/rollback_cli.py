"""``restore-vm --in-place``: the confirmation, the run, errors as exit codes.

cli.py has its options; restore_vm_command.py loads the config, opens the repository and
connects; this runs the rest.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from pyVmomi import vim, vmodl

from common.command_result import CommandResult
from common.progress import Progress
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.nbd_write import NbdTarget
from coordinator.restore.rollback import prepare, rollback_vm
from coordinator.restore.rollback_result import RollbackFailed
from coordinator.vcenter import Connection, VCenterError
from repository.errors import RepositoryError
from repository.interfaces import PointSource


def confirm(question: str, vm_name: str, stdin: TextIO, stderr: TextIO) -> bool | None:
    """Ask on the terminal; None when there is none to ask on. The VM's name must be
    typed: a habit of pressing "y" should not overwrite a VM."""
    if not stdin.isatty():
        return None
    stderr.write(f"{question}\nType the VM's name ({vm_name}) to go on: ")
    stderr.flush()
    return stdin.readline().strip() == vm_name


def _cause(exc: BaseException) -> str:
    root = exc.__cause__ or exc
    vc = (VCenterError, vmodl.MethodFault, OSError)
    return "vcenter" if isinstance(root, vc) and not isinstance(root, RestoreVmError) else "refused"


def run_in_place(
    args: argparse.Namespace, cfg: Any, conn: Connection, repo: PointSource, point_id: str
) -> CommandResult:
    prefix = cfg.coordinator.snapshot_prefix
    nbd = NbdTarget.from_config(cfg.proxy, conn.settings)
    bars: dict[str, Progress] = {}

    def progress(what: str, done: int, total: int) -> None:
        if what not in bars:
            bars[what] = args.progress.task(f"rollback {what}")
        bars[what](done, total)

    try:
        try:
            rb = prepare(conn, repo, point_id, vm=args.vm, snapshot_prefix=prefix)
        except RepositoryError as exc:
            return CommandResult.failed(1, str(exc), "repository")
        if not args.yes:
            ok = confirm(rb.question(), rb.vm.name, sys.stdin, sys.stderr)
            if ok is None:
                why = f"{rb.question()} No terminal to confirm on: give --yes; nothing changed"
                return CommandResult.failed(1, why, "refused")
            if not ok:
                return CommandResult.failed(1, "not confirmed: nothing changed", "refused")
        res = rollback_vm(
            conn,
            repo,
            rb,
            nbd,
            snapshot_prefix=prefix,
            timeout_s=cfg.coordinator.snapshot_timeout_s,
            attempts=args.upload_attempts,
            power_on=args.power_on,
            progress=progress,
        )
    except RollbackFailed as exc:
        return CommandResult(1, result=exc.result.as_dict(), reasons=[str(exc)], cause=_cause(exc))
    except (RestoreVmError, RepositoryError) as exc:
        return CommandResult.failed(1, str(exc), "refused")
    except VCenterError as exc:
        return CommandResult.failed(1, str(exc), "vcenter")
    except vim.fault.VimFault as exc:
        why = f"vCenter refused: {type(exc).__name__}: {getattr(exc, 'msg', exc)}"
        return CommandResult.failed(1, why, "vcenter")
    finally:
        conn.close()
        nbd.transport.close()
    return CommandResult(0, text=res.to_text(), result=res.as_dict())
