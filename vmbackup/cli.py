"""The ``vmbackup`` console script: one subcommand per role and operation.

The composition root: each role package contributes its subcommands through
``<package>.cli.register``, imported here by name in the import graph (no registry), and
every command gets the config loader as ``args.load_config`` (common knows no role).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import coordinator.cli
import proxy_worker.cli
import repository_writer.cli
from common.broker_tls import BrokerCertificateError
from common.version import package_version
from vmbackup import export_command, repo_commands
from vmbackup.config_schema import ROLES, Config, check_config, load_config

DESCRIPTION = """\
vmbackup: agentless, image-level backup for VMware vSphere.

Roles (long-running processes):
  coordinator   talk to vCenter, snapshot VMs, plan and publish block-range tasks
  proxy         read snapshot disks and send new chunks to the writers
  writer        store chunks in the repository and commit restore points

Start with `vmbackup repo init PATH`, write a config (see examples/vmbackup.toml),
then run `vmbackup backup --config FILE --policy NAME`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmbackup",
        description=DESCRIPTION,
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
    export_command.register(sub)
    return parser


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


def _register_config_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a config file or list every config key")
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
        help='print {"ok": BOOL, "errors": [{"key": KEY, "error": WHAT}]} on stdout',
    )
    check.set_defaults(func=_config_check)
    keys = csub.add_parser("keys", help="print every key with its type, default and meaning")
    keys.set_defaults(func=_config_keys)


def _config_check(args: argparse.Namespace) -> int:
    import json

    # no secret without a role: they are on the machines the roles run on, not here
    secrets = args.role is not None and not args.no_secrets
    found = check_config(args.config, role=args.role, secrets=secrets)
    if args.json:
        errors = [{"key": p.key, "error": p.error} for p in found.problems]
        print(json.dumps({"ok": not errors, "errors": errors}))
    elif found.problems:
        for p in found.problems:
            print(f"vmbackup: config error: {args.config}: {p}", file=sys.stderr)
    else:
        what = f"ok for the {args.role}" if args.role else "ok for every role"
        print(f"{args.config}: {what}{'' if secrets else ' (secrets not read)'}")
    return 2 if found.problems else 0


def _config_keys(_args: argparse.Namespace) -> int:
    from common.config import describe

    for key, tp, default, doc in describe(Config):
        print(f"{key}\t{tp}\t{default}\t{doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokerCertificateError as exc:  # a config error: say it, no traceback
        print(f"vmbackup {args.command}: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
