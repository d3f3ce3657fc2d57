"""`vmbackup gc`: remove the chunks no point uses (mark and sweep).

Exit status: 0 done; 1 a point names a missing or quarantined chunk, another gc runs,
a map fails its check, or a repository error; 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses

from common.command_result import CommandResult
from vmbackup.repo_commands import _human, _repo_arg, _ts, add_command, json_arg, open_repo

EXAMPLES = """\
  vmbackup gc --repo /backup/repo --dry-run          # what would be freed
  vmbackup gc --repo /backup/repo                    # after prune: free the chunks
  vmbackup gc --repo /backup/repo --grace 3600 --json
"""


def cmd_gc(args: argparse.Namespace) -> CommandResult:
    from repository.gc import gc

    repo = open_repo(args)
    r = gc(repo, grace=args.grace, dry_run=args.dry_run)
    missing = [f"missing chunk: {m}" for m in r.missing]
    lines = missing[:]
    verb = "would free" if r.dry_run else "freed"
    lines.append(
        f"{r.points} points mark {r.referenced} chunks; {r.chunks_removed} of {r.chunks_seen} "
        f"chunks removed, {verb} {_human(r.bytes_freed)} ({r.bytes_freed} bytes); "
        f"{r.chunks_kept_young} unreferenced kept (younger than cutoff {_ts(r.cutoff)})"
    )
    if r.bytes_deleted:
        lines.append(f"deleted {_human(r.bytes_deleted)} of pack files an earlier gc unindexed")
    if r.bytes_pending:
        lines.append(
            f"{_human(r.bytes_pending)} of pack files this gc unindexed stay on disk (a restore"
            f" may still be reading them) until a gc started after {_ts(r.pending_until)}"
            " deletes them: run gc again then to return that space"
        )
    lines += [f"locked until {k['retain_until']}, kept: {k['object']}" for k in r.locked_kept]
    if r.locked_kept_total > len(r.locked_kept):
        lines.append(f"... {r.locked_kept_total - len(r.locked_kept)} more kept by Object Lock")
    if r.retention is not None:
        ext = r.retention
        lines.append(
            f"Object Lock: {ext['extended']} of {ext['checked']} needed objects extended;"
            f" soonest retain-until {ext['min_retain_until'] or '-'};"
            f" {r.versions_purged} old versions purged"
        )
    warnings = [f"ignoring stale running-backup marker {m}" for m in r.stale_markers]
    if r.retention is not None and (r.retention["hidden"] or r.retention["overwritten"]):
        warnings.append(
            "objects kept points need were deleted or overwritten: see"
            " `vmbackup repo extend-retention`, repair with `vmbackup repo undelete`"
        )
    verb_h = "would remove" if r.dry_run else "removed"
    warnings += [f"{verb_h} stale hold on point {h}" for h in r.stale_holds_removed]
    res = CommandResult(0, text="\n".join(lines), result=dataclasses.asdict(r), warnings=warnings)
    if not r.missing:
        return res
    return res.found(
        1, "damage", [f"{len(r.missing)} chunk(s) named by points are missing", *missing]
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "gc",
        "remove chunks no point uses (mark and sweep)",
        EXAMPLES,
        description="Mark every chunk a point's map names, then remove the others older "
        "than --grace and than the oldest running backup; only one gc runs at a time.",
    )
    _repo_arg(p)
    p.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="never remove chunks touched less than this long ago (default 300)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be freed; remove nothing"
    )
    json_arg(p)
    p.set_defaults(func=cmd_gc)
