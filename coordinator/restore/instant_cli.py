"""``vmbackup restore-vm --instant``: run the VM from the backup, serve until stopped.

The exports live in this process (nbdkit ends with it), so the command stays in the
foreground while the VM runs from the backup. Signals:

- SIGINT / SIGTERM: stop. A VM still on the export is powered off and unregistered, the
  datastore unmounted, the exports and their overlays removed: nothing is left behind.
  A VM already moved to production storage stays.
- SIGUSR1: migrate now to --datastore (what --migrate does at once; again after a
  failed migration).

Exit status: 0 migrated (or stopped without a migration asked); 1 not started, or a
migration failed (said at once; the VM ran from the export until the stop); 130 stopped
by a signal before the --migrate asked for was done.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pyVmomi import vmodl

from common.command_result import CommandResult
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.instant import Cancelled, InstantSession, MigrationError
from coordinator.vcenter import Connection, VCenterError
from export.nbdkit_server import ExportSpec
from repository.errors import RepositoryError
from repository.interfaces import PointSource

POLL_S = 0.2


def _say(text: str) -> None:
    print(f"vmbackup: {text}", file=sys.stderr, flush=True)


def run_instant(
    args: argparse.Namespace,
    conn: Connection,
    repo: PointSource,
    source: ExportSpec,
) -> CommandResult:
    """``source``: what the exports read (repository, passphrase, S3 settings, point)."""
    stop: list[int] = []
    migrate_now: list[int] = [1] if args.migrate else []

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    def on_migrate(signum: int, _frame: FrameType | None) -> None:
        migrate_now.append(signum)

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGUSR1: on_migrate}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        return _serve(args, conn, repo, source, stop, migrate_now)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _serve(
    args: argparse.Namespace,
    conn: Connection,
    repo: PointSource,
    source: ExportSpec,
    stop: list[int],
    migrate_now: list[int],
) -> CommandResult:
    t0 = time.monotonic()
    try:
        session = InstantSession.start(
            conn,
            repo,
            source,
            datastore=args.datastore,
            name=args.name,
            host=args.host,
            folder=args.folder,
            nfs_host=args.nfs_host,
            export_dir=Path(args.export_dir) if args.export_dir else None,
            metrics_port=args.metrics_port,
            cancelled=lambda: bool(stop),
        )
    except Cancelled as exc:
        return CommandResult.failed(130, str(exc), "interrupted")
    except (RestoreVmError, RepositoryError) as exc:
        return CommandResult.failed(1, f"instant recovery not started: {exc}", "refused")
    except (VCenterError, vmodl.MethodFault) as exc:
        why = getattr(exc, "msg", None) or str(exc)
        return CommandResult.failed(1, f"instant recovery not started: {why}", "vcenter")
    info = session.info
    _say(
        f"instant VM {info.vm_name!r} ({info.vm_moref}) is running on host {info.host}"
        f" from datastore {info.export_datastore} ({info.export_dir}); stop with Ctrl-C or"
        f" `kill -TERM {os.getpid()}` (removes it), migrate to {info.target_datastore}"
        f" with `kill -USR1 {os.getpid()}`"
        + (f"; metrics: {' '.join(info.metrics)}" if info.metrics else "")
    )
    failure = ""
    try:
        while not stop and not info.migrated:
            if migrate_now:
                migrate_now.clear()
                try:
                    session.migrate()
                    _say(f"migrated {info.vm_name!r} to {info.target_datastore}; export stopped")
                    break
                except MigrationError as exc:
                    failure = str(exc)
                    _say(
                        f"{failure}; {info.vm_name!r} ({info.vm_moref}) still runs from the"
                        f" export: retry with `kill -USR1 {os.getpid()}`, stop with Ctrl-C"
                    )
                    continue
            time.sleep(POLL_S)
    finally:
        problems = session.close()
    result: dict[str, Any] = {
        **info.as_dict(),
        "seconds": round(time.monotonic() - t0, 3),
        "migration_error": failure,
        "stopped_by": signal.Signals(stop[0]).name if stop else "",
    }
    text = (
        f"instant VM {info.vm_name!r} ({info.vm_moref}) "
        + (
            f"migrated to {info.target_datastore}: {', '.join(d['file'] for d in info.disks)}"
            if info.migrated
            else "removed: it ran from the export until stopped"
        )
        + "\n"
    )
    reasons = problems[:]
    if failure and not info.migrated:
        reasons.insert(0, f"{failure}; the instant VM ran from the export until stopped")
    if reasons:
        return CommandResult(1, text=text, result=result, reasons=reasons, cause="refused")
    if args.migrate and not info.migrated:
        why = "stopped before the migration was done: the instant VM was removed"
        return CommandResult(130, text=text, result=result, reasons=[why], cause="interrupted")
    return CommandResult(0, text=text, result=result)
