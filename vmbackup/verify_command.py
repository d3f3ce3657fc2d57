"""`vmbackup verify`: re-hash chunks, check every map; damage named, non-zero exit.

Exit status: 0 nothing wrong; 1 damage found (each damaged object named) or the
repository does not open; 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses

from common.command_result import CommandResult
from vmbackup.repo_commands import _repo_arg, add_command, json_arg, open_repo

EXAMPLES = """\
  vmbackup verify --repo /backup/repo                 # every chunk re-hashed (weekly)
  vmbackup verify --repo /backup/repo --sample 1000   # 1000 random chunks (daily)
  vmbackup verify --repo /backup/repo --json | jq '.result.problems'
"""


def cmd_verify(args: argparse.Namespace) -> CommandResult:
    from repository.verify import verify

    repo = open_repo(args)
    report = verify(repo, sample=args.sample, progress=args.progress.task("verify chunks read"))
    lines = [str(p) for p in report.problems]
    lines += [f"quarantined: chunk {h}" for h in report.quarantined]
    what = "sampled" if args.sample is not None else "checked"
    lines.append(
        f"{report.points} points, {report.maps} maps, {report.references} references; "
        f"{report.chunks_checked} of {report.chunks_total} chunks {what}: "
        f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}; "
        f"{len(report.quarantined)} chunk(s) quarantined"
    )
    doc = dataclasses.asdict(report) | {"ok": report.ok}
    res = CommandResult(0, text="\n".join(lines), result=doc)
    if report.ok:
        return res
    found = [f"{len(report.problems)} problem(s) found", *lines[: len(report.problems)]]
    return res.found(1, "damage", found)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "verify",
        "check maps and re-hash chunks; non-zero exit on damage",
        EXAMPLES,
        description="Check that every map names only existing chunks and re-hash every "
        "chunk (or a sample); a damaged chunk is moved to the quarantine and every point "
        "using it is named (docs/operations.md, 'Verify').",
    )
    _repo_arg(p)
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="re-hash N random chunks instead of all",
    )
    json_arg(p)
    p.set_defaults(func=cmd_verify)
