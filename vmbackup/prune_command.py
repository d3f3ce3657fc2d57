"""`vmbackup prune`: apply keep rules to the points of one policy (or of every point), per
point "keep (why)" or "remove (why)", as text or JSON.

The rules come from ``--keep-*`` or, with ``--policy`` and ``--config``, from that
policy's ``retention`` table: the same rules the coordinator has a writer apply after
each of the policy's jobs. The rules themselves: repository/retention.py.

Exit status: 0 done (or printed, with --dry-run); 1 a repository error, no rule given,
a policy without retention; 2 usage or a config error.
"""

from __future__ import annotations

import argparse
from typing import Any

from common.command_result import CommandResult
from repository.errors import InvalidRequestError
from repository.prune import PruneResult, prune
from repository.retention import RULES, KeepPolicy
from vmbackup.repo_commands import (
    _ts,
    add_command,
    json_arg,
    open_repo,
    repo_of_config,
    repo_or_config_args,
)

EXAMPLES = """\
  # what the "nightly" policy's retention (from the config) would remove, and why the rest stays
  vmbackup prune --config /etc/vmbackup/vmbackup.toml --policy nightly --dry-run
  # the same rules for that policy's points, given on the command line
  vmbackup prune --repo /backup/repo --policy nightly --keep-daily 14 --keep-weekly 8 \\
      --keep-monthly 12
  # every point of the repository, whatever its policy (the rules before policies had any)
  vmbackup prune --repo /backup/repo --keep-last 3 --json
  vmbackup gc --repo /backup/repo                            # then free the chunks
"""

KEEP_HELP = {
    "last": "keep the N newest points of each VM disk",
    "hourly": "keep the newest point of each of the N newest hours with points",
    "daily": "the same per day",
    "weekly": "the same per ISO week",
    "monthly": "the same per month",
    "yearly": "the same per year",
}
assert tuple(KEEP_HELP) == RULES


def keep_rules(args: argparse.Namespace, cfg: Any) -> tuple[KeepPolicy, str]:
    """The rules and where they came from: --keep-* when any is given, else the
    policy's retention in the config."""
    given = {k: getattr(args, f"keep_{k}") for k in RULES}
    if any(v is not None for v in given.values()):
        return KeepPolicy(**{k: v or 0 for k, v in given.items()}), "--keep-*"
    if cfg is None or not args.policy:
        raise InvalidRequestError(
            "no keep rule given: --keep-* N, or --policy NAME with --config FILE for the"
            " policy's retention"
        )
    from coordinator.settings import find_policy

    try:
        ret = find_policy(cfg.policies, args.policy).retention
    except KeyError as exc:
        raise InvalidRequestError(str(exc.args[0])) from None
    if not ret.enabled:
        raise InvalidRequestError(
            f"policy {args.policy!r} has no retention in {args.config} (policies.retention):"
            " its points are kept; give --keep-* to prune them anyway"
        )
    rules = {k: getattr(ret, k) for k in RULES}
    return KeepPolicy(**rules), f"policies.retention of {args.policy!r} in {args.config}"


def cmd_prune(args: argparse.Namespace) -> CommandResult:
    cfg = None
    if args.config:
        from common.role_startup import load_or_exit

        cfg = load_or_exit(args.load_config, args.config)  # the file alone: prune is no role
    keep, source = keep_rules(args, cfg)
    repo_of_config(args, cfg)
    progress = args.progress.task("prune points removed", "items")
    result = prune(
        open_repo(args), keep, policy=args.policy, dry_run=args.dry_run, progress=progress
    )
    warnings = [f"ignoring stale running-backup marker {m}" for m in result.stale_markers]
    warnings += [f"ignoring stale hold {h}" for h in result.stale_holds]
    doc = prune_document(result, keep)
    scope = f"points of policy {args.policy!r}" if args.policy else "every point"
    dry = " (dry run: nothing is removed)" if args.dry_run else ""
    lines = [f"{scope}, keep {keep.describe()} ({source}){dry}"]
    vm = None
    for d in result.decisions:
        p = d.point
        if (p.vm_name, p.vm_uuid) != vm:
            vm = (p.vm_name, p.vm_uuid)
            lines.append(f"{p.vm_name or p.vm_uuid} ({p.vm_uuid})")
        verb = d.verb if d.keep or args.dry_run else "removed"
        lines.append(
            f"  {verb:7} {p.id}  {_ts(p.snapshot_time)}  {p.status:8} ({'; '.join(d.reasons)})"
        )
    for lk in result.locked:
        until = lk["retain_until"]
        lines.append(f"  point {lk['point']}: hidden; Object Lock keeps its objects until {until}")
    n_keep, n_remove = len(result.keep), len(result.remove)
    if args.dry_run:
        lines.append(f"{n_keep} kept, {n_remove} would be removed")
    else:
        gc_hint = "; run gc to free their chunks" if n_remove else ""
        lines.append(f"{n_keep} kept, {n_remove} removed{gc_hint}")
    return CommandResult(0, text="\n".join(lines), result=doc, warnings=warnings)


def prune_document(result: PruneResult, keep: KeepPolicy) -> dict[str, Any]:
    """The JSON of `prune --json` (docs/operations.md "Retention")."""
    return {
        "dry_run": result.dry_run,
        "policy": result.policy,
        "keep": keep.as_dict(),
        "points": [
            {
                "id": d.point.id,
                "vm_uuid": d.point.vm_uuid,
                "vm_name": d.point.vm_name,
                "job_id": d.point.job_id,
                "status": d.point.status,
                "snapshot_time": d.point.snapshot_time,
                "decision": d.verb,
                "reasons": list(d.reasons),
            }
            for d in result.decisions
        ],
        "kept": len(result.keep),
        "removed": len(result.remove),
        "stale_markers": result.stale_markers,
        "stale_holds": result.stale_holds,
        "locked": result.locked,
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "prune",
        "remove points outside the retention rules (of one policy, or all)",
        EXAMPLES,
        description="Keeps, per VM disk, the last N points and the newest point of each of "
        "the N newest hours/days/weeks/months/years that have points (UTC); never a point "
        "of a running job or one a running job may base on; every other point of the "
        "policy is removed (its maps: gc frees the chunks). With --policy only that "
        "policy's points are looked at (their job ids name it), never another's.",
    )
    repo_or_config_args(p, "config: the policy's retention")
    p.add_argument(
        "--policy", metavar="NAME", help="only points of this policy's jobs (default: every point)"
    )
    for kind, what in KEEP_HELP.items():
        p.add_argument(f"--keep-{kind}", type=int, default=None, metavar="N", help=what)
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be removed and why; remove nothing"
    )
    json_arg(p)
    p.set_defaults(func=cmd_prune, passphrase=None)
