"""``vmbackup backup`` (one job, exit status for a scheduler) and ``vmbackup coordinator``
(daemon: a cron schedule per policy, orphan sweeps, resume after a restart).

``vmbackup restore-vm`` is added by the end-to-end work (register it next to these).
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from common.command_result import CommandResult
from common.logging import get_logger
from coordinator import report
from coordinator.notify.notifier import Notifier

log = get_logger(__name__)

BACKUP_EXAMPLES = """\
examples:
  vmbackup backup -c /etc/vmbackup/vmbackup.toml --policy nightly
  vmbackup backup -c /etc/vmbackup/vmbackup.toml --policy nightly --ignore-window \\
      --report /var/log/vmbackup/last.json
  vmbackup backup -c site.toml --policy gold --json | jq '.result.counts'
"""

COORDINATOR_EXAMPLES = """\
examples:
  vmbackup coordinator -c /etc/vmbackup/vmbackup.toml
  vmbackup config check -c /etc/vmbackup/vmbackup.toml --role coordinator  # before
"""


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "backup",
        help="run one backup job for a policy and exit (0 every selected VM backed up,"
        " 1 some were not, 2 the job could not do all of its work)",
        description="Run one job of a policy and exit. Exit status: 0 every VM the policy"
        " selected has a new complete point; 1 some have not (each named on stderr with"
        " why); 2 the job could not do all of its work: a vCenter not reached, nothing"
        " selected although the policy's last job backed VMs up, outside its window, a"
        " config error (docs/operations.md, 'Exit codes'). On a terminal, VMs done and"
        " data read show on stderr as they go.",
        epilog=BACKUP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--config", "-c", required=True, help="vmbackup TOML config file")
    b.add_argument("--policy", required=True, help="policy name from the config")
    b.add_argument(
        "--ignore-window", action="store_true", help="run even outside the policy's window"
    )
    b.add_argument(
        "--report",
        metavar="FILE",
        help="also write the JSON report to this file ('-' = stdout, not with --json)",
    )
    b.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout, the report its result (docs/cli-json.md)",
    )
    b.set_defaults(func=cmd_backup)

    d = sub.add_parser(
        "coordinator",
        help="run the coordinator daemon (cron schedule per policy)",
        epilog=COORDINATOR_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--config", "-c", required=True, help="vmbackup TOML config file")
    d.set_defaults(func=cmd_coordinator)

    from coordinator.restore.cli import register_restore_vm

    register_restore_vm(sub)


def _load(args: argparse.Namespace, one_shot: bool = False) -> Any:
    from common.role_startup import start_role
    from coordinator import metrics

    # every problem at once: the file, what a coordinator needs of it, its secrets
    return start_role(
        "coordinator",
        args.load_config,
        args.config,
        role_families=[metrics.REGISTRY],
        one_shot=one_shot,
    )


def open_runtime(cfg: Any, *, connect: bool = True) -> Any:
    """The repository, the broker and the vCenters: each one is logged in to now when
    ``connect`` (the daemon: its first sweep needs them; those that fail are tried again
    by the jobs), else by the first job that needs it (one job: one try, not two)."""
    from common.amqp import BrokerParams
    from coordinator.job_runtime import Runtime, connect_vcenters
    from coordinator.previous_points import History

    # [repository] as configured (on S3: the coordinator's own cache, nothing to recover)
    rs = cfg.repository
    history = History(rs.open("coordinator", read_only=bool(rs.s3_config)))
    connections, offline = connect_vcenters(cfg.vcenters) if connect else ({}, {})
    return Runtime.start(
        cfg.coordinator,
        connections,
        history,
        BrokerParams.from_settings(cfg.broker),
        vcenters=cfg.vcenters,
        offline=offline,
    )


def _start(cfg: Any, *, connect: bool = True) -> tuple[Any, str]:
    """(open_runtime, "") or (None, why the coordinator cannot start)."""
    try:
        return open_runtime(cfg, connect=connect), ""
    except Exception as exc:
        return None, f"cannot start: {type(exc).__name__}: {exc}"


def _close(rt: Any) -> None:
    rt.close()
    for c in list(rt.connections.values()):
        c.close()


def cmd_backup(args: argparse.Namespace) -> CommandResult:
    from coordinator.job import Job
    from coordinator.job_progress import JobProgress
    from coordinator.settings import find_policy

    if args.json and args.report == "-":
        return CommandResult.failed(
            2, "--report - and --json both print on stdout: the report is --json's result", "usage"
        )
    cfg = _load(args, one_shot=True)  # a config error exits 2 here, naming every key
    notifier = Notifier(cfg.coordinator.webhooks)
    try:
        policy = find_policy(list(cfg.policies), args.policy)
    except KeyError as exc:
        return _finish(args, _not_run(cfg, args.policy, exc.args[0]), notifier, cause="config")
    rt, why = _start(cfg, connect=False)
    if rt is None:
        return _finish(args, _not_run(cfg, policy.name, why), notifier)
    board = args.progress  # common.progress.ProgressBoard
    progress = JobProgress(
        board.task(f"backup {policy.name}: VMs", "items"),
        board.task(f"backup {policy.name}: data read"),
        board.note,
    )
    try:
        job = Job(rt, policy, ignore_window=args.ignore_window, progress=progress)
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.warning("signal_received_cancelling_job", signal=signum)
            job.cancel.set()
            stop.set()

        import signal

        # Ctrl-C cancels like SIGTERM: snapshots removed, nothing half-committed.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        rep = job.run()
    finally:
        _close(rt)
    return _finish(args, rep, notifier)


def _not_run(cfg: Any, policy: str, why: str) -> report.JobReport:
    """The report of a job that could not start: a --report file must never keep an
    earlier run's "ok" when this one did nothing."""
    from common.job_ids import new_job_id

    rep = report.JobReport(job_id=new_job_id(policy), policy=policy, coordinator=cfg.coordinator.id)
    rep.error = why
    rep.finish()
    return rep


def _finish(
    args: argparse.Namespace, rep: report.JobReport, notifier: Notifier, cause: str = ""
) -> CommandResult:
    """The report (text, or --json's result) and --report; the reasons, for stderr (a
    scheduler's mail or a Job's log shows stderr first) or --json's error; the
    notifications (a failed one is a warning: the exit status is the backup's); the status."""
    code = report.exit_status(rep)
    reasons = report.failure_lines(rep)
    text = rep.to_text()
    if args.report == "-":  # the text, then the report's JSON, both on stdout
        text += rep.to_json() + "\n"
    elif args.report:
        try:
            with open(args.report, "w", encoding="utf-8") as fh:
                fh.write(rep.to_json())
        except OSError as exc:  # whoever reads it would find nothing, or an old one
            reasons.append(f"cannot write the report {args.report}: {exc.strerror}")
            code, cause = report.EXIT_ERROR, cause or "error"
    warnings = []
    if rep.retention is not None and rep.retention.error:  # the backup's status stands
        warnings.append(f"retention {report.retention_summary(rep.retention)}")
    warnings.extend(notifier.notify(rep))
    return CommandResult(
        code,
        text=text,
        result=rep.to_dict(),
        reasons=reasons if code else [],
        cause=cause or rep.cause or ("job" if code == report.EXIT_SOME_FAILED else "error"),
        warnings=warnings,
    )


def cmd_coordinator(args: argparse.Namespace) -> int:
    from coordinator.daemon import Daemon

    cfg = _load(args)  # a config error exits 2 here, naming every key
    rt, why = _start(cfg)
    if rt is None:
        print(f"vmbackup coordinator: {why}", file=sys.stderr)
        return report.EXIT_ERROR
    daemon = Daemon(rt, list(cfg.policies), notifier=Notifier(cfg.coordinator.webhooks))
    import signal

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("signal_received_stopping", signal=signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run()
    finally:
        _close(rt)
    return 0
