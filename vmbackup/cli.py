"""The ``vmbackup`` console script: one subcommand per role and operation.

The composition root: each role package contributes its subcommands through
``<package>.cli.register``, imported here by name in the import graph (no registry), and
every command gets the config loader as ``args.load_config`` (common knows no role).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import coordinator.cli
import proxy_worker.cli
import repository_writer.cli
from common.broker_tls import BrokerCertificateError
from common.command_result import CommandResult
from common.role_startup import ConfigRejected
from common.version import package_version
from repository.errors import RepositoryError
from vmbackup import export_command, files_command, jobs_command, repo_commands
from vmbackup.config_schema import ROLES, Config, check_config, load_config
from vmbackup.json_output import emit, wants_json
from vmbackup.progress import progress_board

DESCRIPTION = """\
vmbackup: agentless, image-level backup for VMware vSphere.

Roles (long-running processes):
  coordinator   talk to vCenter, snapshot VMs, plan and publish block-range tasks
  proxy         read snapshot disks and send new chunks to the writers
  writer        store chunks in the repository and commit restore points

Start with `vmbackup repo init PATH`, write a config (see examples/vmbackup.toml),
then run `vmbackup backup --config FILE --policy NAME`. Every command that reports
something takes --json: one document on stdout, errors included (docs/cli-json.md);
on a terminal, long operations show their progress on stderr.
"""

EPILOG = """\
examples:
  vmbackup repo init /backup/repo
  vmbackup config check -c /etc/vmbackup/vmbackup.toml
  vmbackup backup -c /etc/vmbackup/vmbackup.toml --policy nightly
  vmbackup repo list --repo /backup/repo --json
  vmbackup COMMAND --help                          # each command's options and examples
"""


class UsageError(SystemExit):
    """argparse rejected the command line (printed as argparse prints it; exit 2): kept
    apart from other exits so that main can print it under --json as a document too."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(2)
        self.parser, self.message = parser, message


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vmbackup",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmbackup {package_version()}")
    parser.set_defaults(load_config=load_config)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _register_config_commands(sub)
    coordinator.cli.register(sub)
    proxy_worker.cli.register(sub)
    repository_writer.cli.register(sub)
    repo_commands.register(sub)
    jobs_command.register(sub)
    export_command.register(sub)
    files_command.register(sub)
    for name, p in commands(parser):
        if not _groups(p):
            p.set_defaults(command_name=name)  # "repo list": the JSON document's "command"
    return parser


def _groups(p: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command below ``parser`` ("repo", "repo list", ...), depth first."""
    for group in _groups(parser):
        for p in group.choices.values():
            yield p.prog.removeprefix("vmbackup "), p
            yield from commands(p)


CONFIG_CHECK_EPILOG = """\
Every problem is listed at once, one line each: FILE: KEY.PATH: WHAT IS WRONG.
Exit status: 0 the file is valid (for ROLE, with --role), 2 it is not.

Without --role the file is checked for every role, anywhere (CI, a laptop): secrets are
not read, as they are on the machines the roles run on. With --role the check is the
one that role makes at start, on this machine: also the keys it needs (the writer
repository.path, the proxy proxy.queues, the coordinator repository.path and
[[vcenters]]) and its secrets read (--no-secrets: not them).

examples:
  vmbackup config check -c /etc/vmbackup/vmbackup.toml
  vmbackup config check -c /etc/vmbackup/vmbackup.toml --role writer
  vmbackup config check -c site.toml --role proxy --no-secrets --json
"""

CONFIG_EPILOG = """\
examples:
  vmbackup config check -c /etc/vmbackup/vmbackup.toml --role coordinator
  vmbackup config keys | grep ^proxy.throttle
"""

CONFIG_KEYS_EPILOG = """\
One line per key: KEY, TYPE, DEFAULT and what it means, tab-separated (docs/configuration.md
is generated from the same schema).

examples:
  vmbackup config keys
  vmbackup config keys --json | jq '.result.keys[] | select(.key | startswith("broker."))'
"""


def _register_config_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="check a config file or list every config key",
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser(
        "check",
        help="validate a config file: every problem at once (exit 2 if any)",
        description="Validate a config file as every role does at start.",
        epilog=CONFIG_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--config", "-c", required=True, help="TOML config file")
    check.add_argument(
        "--role", choices=sorted(ROLES), help="also what this role needs, as it checks at start"
    )
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="with --role: do not read the role's secrets (their files are elsewhere)",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help='one JSON document on stdout, result {"errors": [{"key": KEY, "error": WHAT}]}',
    )
    check.set_defaults(func=_config_check)
    keys = csub.add_parser(
        "keys",
        help="print every key with its type, default and meaning",
        epilog=CONFIG_KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys.add_argument("--json", action="store_true", help=JSON_HELP)
    keys.set_defaults(func=_config_keys)


JSON_HELP = "one JSON document on stdout, errors included (docs/cli-json.md)"


def _config_check(args: argparse.Namespace) -> CommandResult:
    # no secret without a role: they are on the machines the roles run on, not here
    secrets = args.role is not None and not args.no_secrets
    found = check_config(args.config, role=args.role, secrets=secrets)
    doc = {"errors": [{"key": p.key, "error": p.error} for p in found.problems]}
    if found.problems:
        reasons = [f"{args.config}: {p}" for p in found.problems]
        return CommandResult(2, result=doc, reasons=reasons, cause="config")
    what = f"ok for the {args.role}" if args.role else "ok for every role"
    text = f"{args.config}: {what}{'' if secrets else ' (secrets not read)'}"
    return CommandResult(0, text=text, result=doc)


def _config_keys(_args: argparse.Namespace) -> CommandResult:
    from common.config import describe

    rows = list(describe(Config))
    return CommandResult(
        0,
        text="".join(f"{key}\t{tp}\t{default}\t{doc}\n" for key, tp, default, doc in rows),
        result={
            "keys": [
                {"key": key, "type": tp, "default": default, "doc": doc}
                for key, tp, default, doc in rows
            ]
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        if not wants_json(argv):
            return 2
        command = exc.parser.prog.removeprefix("vmbackup").strip() or "vmbackup"
        usage = CommandResult.failed(2, exc.message, "usage")
        return emit(command, usage, as_json=True, reasons_printed=True)
    as_json = bool(getattr(args, "json", False))
    with progress_board(quiet=as_json) as board:
        args.progress = board
        res, printed = _run(args, as_json)
    if isinstance(res, CommandResult):
        return emit(args.command_name, res, as_json=as_json, reasons_printed=printed)
    return res


def _run(args: argparse.Namespace, as_json: bool) -> tuple[CommandResult | int, bool]:
    """What the command returned, or the error it raised as a result; and whether the
    reasons are on stderr already."""
    try:
        out: Any = args.func(args)
    except KeyboardInterrupt:
        return CommandResult.failed(130, "interrupted", "interrupted"), False
    except ConfigRejected as exc:  # printed, every problem naming its key
        errors = [{"key": p.key, "error": p.error} for p in exc.problems]
        reasons = [f"{exc.source}: {p}" for p in exc.problems]
        return CommandResult(2, result={"errors": errors}, reasons=reasons, cause="config"), True
    except SystemExit as exc:  # a command that exits with the reason printed
        code = exc.code if isinstance(exc.code, int) else 1
        if not as_json or not code:
            raise
        reason = f"exited with status {code} (the reason is on stderr)"
        return CommandResult.failed(code, reason, "error"), True
    except BrokerCertificateError as exc:  # a config error: say it, no traceback
        return CommandResult.failed(2, str(exc), "config"), False
    except RepositoryError as exc:
        return CommandResult.failed(1, str(exc), "repository"), False
    except BrokenPipeError:  # the reader of stdout went away: nobody to tell
        return 1, True
    if isinstance(out, CommandResult):
        return out, False
    return int(out or 0), True


if __name__ == "__main__":
    sys.exit(main())
