"""``vmbackup restore-vm`` run: config, repository, vCenter, then the mode; errors as exit
codes (cli.py has its arguments)."""

from __future__ import annotations

import argparse
import dataclasses
import ssl
import sys
from pathlib import Path

from pyVmomi import vim

from common.command_result import CommandResult
from common.progress import Progress
from coordinator.restore.cli import in_place_usage, usage_problem
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.instant_cli import run_instant
from coordinator.restore.recreate import load_point, restore_vm
from coordinator.restore.rollback_cli import run_in_place
from coordinator.vcenter import Connection
from export.nbdkit_server import ExportSpec
from repository.errors import RepositoryError
from repository.repo_location import is_s3
from repository.repository import Repository


def export_source(
    path: str, passphrase: str | None, s3_config: str, cache_dir: str, point_id: str
) -> ExportSpec:
    """What --instant's exports read: the repository as configured (``s3_config`` and
    ``cache_dir`` "" when not on S3), its point. On S3 they share a cache of their own
    beside the command's (read-only: no open packs)."""
    cache = Path(cache_dir) / "restore-vm-exports" if s3_config and cache_dir else None
    return ExportSpec(
        repo=path,
        point=point_id,
        disk=-1,  # each disk's export sets its own
        passphrase=passphrase,
        s3_config=Path(s3_config) if s3_config else None,
        cache_dir=cache,
    )


def cmd_restore_vm(args: argparse.Namespace) -> CommandResult:
    from common.config import ConfigError
    from common.logging import setup_logging
    from coordinator.vcenter import VCenterError

    def fail(msg: str, code: int = 1, cause: str = "refused") -> CommandResult:
        return CommandResult.failed(code, msg, cause)

    if args.upload_attempts < 1:
        return fail("--upload-attempts must be at least 1", 2, "usage")
    if args.point and args.point_opt and args.point != args.point_opt:
        return fail(f"two points given: {args.point} and --point {args.point_opt}", 2, "usage")
    point_id = args.point or args.point_opt
    if not point_id:
        return fail("give the restore point: POINT or --point POINT", 2, "usage")
    misuse = in_place_usage(args)
    if misuse:
        return fail(misuse, 2, "usage")
    args.point = point_id  # the instant path reads it there
    if usage_problem(args):
        return fail(usage_problem(args), 2, "usage")
    try:
        cfg = args.load_config(args.config)
    except ConfigError as exc:  # one reason per problem, each naming file and key
        return CommandResult(
            2,
            result={"errors": [{"key": p.key, "error": p.error} for p in exc.problems]},
            reasons=str(exc).splitlines(),
            cause="config",
        )
    except ValueError as exc:
        return fail(str(exc), 2, "config")
    # The result (text or --json) is stdout; logs go to stderr.
    setup_logging(cfg.log.level, cfg.log.format, role="restore-vm", stream=sys.stderr)
    repo_path = args.repo or cfg.repository.path
    if not repo_path:
        return fail(
            f"no repository: give --repo or set repository.path in {args.config}", 2, "config"
        )
    passphrase = cfg.repository.passphrase.value if cfg.repository.passphrase else None
    # on S3 with the config's s3_config and cache_dir (--repo may name another prefix)
    repo_cfg = dataclasses.replace(cfg.repository, path=repo_path)
    try:
        if is_s3(repo_path):
            repo = repo_cfg.open("restore-vm", read_only=True)
        else:
            repo = Repository.open(repo_path, passphrase)
        # bad point: fail before touching vCenter
        point = repo.get_point(point_id) if args.in_place else load_point(repo, point_id)[0]
    except RepositoryError as exc:
        return fail(str(exc), cause="repository")
    except RestoreVmError as exc:
        return fail(str(exc))
    to = args.to or point.vcenter  # --in-place: the point's vCenter by default
    vcs = [vc for vc in cfg.vcenters if vc.name == to]
    if not vcs:
        names = ", ".join(vc.name for vc in cfg.vcenters) or "none"
        return fail(f"no vCenter named {to!r} in {args.config} (configured: {names})", 2, "config")
    try:
        conn = Connection(vcs[0]).connect()
    except (VCenterError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, VCenterError) else exc
        down = isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
        why = f"vCenter {to} {'unreachable' if down else 'refused us'}: {exc}"
        return fail(why, cause="vcenter")
    if args.in_place:
        return run_in_place(args, cfg, conn, repo, point_id)
    if args.instant:
        try:
            source = export_source(
                repo_path, passphrase, repo_cfg.s3_config, repo_cfg.cache_dir, point_id
            )
            return run_instant(args, conn, repo, source)
        finally:
            conn.close()
    nbd_target = None
    if args.transport == "nbd":
        from coordinator.restore.nbd_write import NbdTarget

        nbd_target = NbdTarget.from_config(cfg.proxy, vcs[0])
    bars: dict[str, Progress] = {}  # a bar per disk, on the command's progress board

    def progress(what: str, done: int, total: int) -> None:
        if what not in bars:
            bars[what] = args.progress.task(f"restore-vm {what}")
        bars[what](done, total)

    try:
        res = restore_vm(
            conn,
            repo,
            point_id,
            datastore=args.datastore,
            name=args.name,
            host=args.host,
            folder=args.folder,
            keep_failed=args.keep_failed,
            upload_attempts=args.upload_attempts,
            nbd=nbd_target,
            progress=progress,
        )
    except (RestoreVmError, RepositoryError) as exc:
        return fail(str(exc))
    except VCenterError as exc:
        return fail(str(exc), cause="vcenter")
    except vim.fault.VimFault as exc:
        why = f"vCenter refused: {type(exc).__name__}: {getattr(exc, 'msg', exc)}"
        return fail(why, cause="vcenter")
    finally:
        conn.close()
        if nbd_target is not None:
            nbd_target.transport.close()  # its private copy of the password, if any
    return CommandResult(0, text=res.to_text(), result=res.as_dict())
