"""`vmbackup jobs list|show`: the job history, read from the repository.

A writer keeps each finished job's report there when the coordinator sends it
(repository/job_history.py); these commands only read it, as text or JSON. Exit status:
0 shown; 1 a repository error or no such job; 2 usage or a config error.
"""

from __future__ import annotations

import argparse
from typing import Any

from common.command_result import CommandResult
from coordinator.report import FAILED, OK, PARTIAL, SKIPPED, JobReport, size_text
from repository.errors import InvalidRequestError
from repository.interfaces import JobReports
from vmbackup.repo_commands import (
    _ts,
    add_command,
    json_arg,
    open_repo,
    repo_of_config,
    repo_or_config_args,
)

EXAMPLES = """\
  vmbackup jobs list --config /etc/vmbackup/vmbackup.toml            # every recorded job
  vmbackup jobs list --repo /backup/repo --policy nightly --last 7   # the policy's last week
  vmbackup jobs list --repo /backup/repo --last 1 --json             # the newest, for a tool
  vmbackup jobs show --repo /backup/repo nightly-20260101T220000Z-1a2b3c
  vmbackup jobs show --repo /backup/repo nightly-20260101T220000Z-1a2b3c --json
"""

# What `jobs list --json` gives of each report (`jobs show --json`: all of it).
SUMMARY_KEYS = (
    "job_id",
    "policy",
    "coordinator",
    "status",
    "started",
    "finished",
    "seconds",
    "counts",
    "bytes_read",
    "bytes_sent",
    "error",
    "cause",
)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A job of `jobs list --json`."""
    return {k: report.get(k) for k in SUMMARY_KEYS}


def _history(args: argparse.Namespace) -> JobReports:
    cfg = None
    if args.config:
        from common.role_startup import load_or_exit

        cfg = load_or_exit(args.load_config, args.config)  # the file alone: no role
    repo_of_config(args, cfg)
    history: JobReports = open_repo(args)
    return history


def cmd_list(args: argparse.Namespace) -> CommandResult:
    if args.last is not None and args.last < 1:
        raise InvalidRequestError(f"--last {args.last}: must be at least 1")
    history = _history(args)
    ids = history.job_ids(args.policy)
    if args.last is not None:
        ids = ids[-args.last :]
    reports = [history.job_report(j) for j in ids]
    lines = [
        f"{'JOB':40} {'STATUS':8} {'STARTED (UTC)':19} {'SECONDS':>8} "
        f"{'OK':>4} {'PART':>4} {'FAIL':>4} {'SKIP':>4} {'READ':>10} {'SENT':>10}"
    ]
    for r in reports:
        c = r.get("counts", {})
        lines.append(
            f"{r['job_id']:40} {r.get('status', '?'):8} {_ts(r.get('started', 0)):19}"
            f" {r.get('seconds', 0):>8.1f} {c.get(OK, 0):>4} {c.get(PARTIAL, 0):>4}"
            f" {c.get(FAILED, 0):>4} {c.get(SKIPPED, 0):>4}"
            f" {size_text(r.get('bytes_read', 0)):>10} {size_text(r.get('bytes_sent', 0)):>10}"
        )
        if r.get("error"):
            lines.append(f"    error: {r['error']}")
    scope = f" of policy {args.policy!r}" if args.policy else ""
    lines.append(f"\n{len(reports)} job(s){scope}")
    return CommandResult(
        0, text="\n".join(lines) + "\n", result={"jobs": [summary(r) for r in reports]}
    )


def cmd_show(args: argparse.Namespace) -> CommandResult:
    doc = _history(args).job_report(args.job_id)
    return CommandResult(0, text=JobReport.from_dict(doc).to_text(), result=doc)


def _common(p: argparse.ArgumentParser) -> None:
    repo_or_config_args(p, "config: its repository")
    json_arg(p)


def register(sub: argparse._SubParsersAction) -> None:
    jobs = add_command(
        sub,
        "jobs",
        "the job history: every finished backup job's report, from the repository",
        EXAMPLES,
        description="Each finished job's report (the one `backup --report` writes) is kept"
        " in the repository by a writer; list them or show one.",
    )
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True

    p = add_command(jsub, "list", "recorded jobs, oldest first: status, VMs, bytes", EXAMPLES)
    _common(p)
    p.add_argument("--policy", metavar="NAME", help="only this policy's jobs")
    p.add_argument("--last", type=int, metavar="N", help="only the N newest (after --policy)")
    p.set_defaults(func=cmd_list)

    p = add_command(
        jsub, "show", "one job's whole report: every VM and disk, why not ok, retention", EXAMPLES
    )
    p.add_argument("job_id", metavar="JOB_ID", help="as `jobs list` shows it")
    _common(p)
    p.set_defaults(func=cmd_show)
