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
from vmbackup import repo_commands
from vmbackup.config_schema import Config, load_config

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
    return parser


def _register_config_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a config file or list every config key")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a config file (exit 2 on the first problem)")
    check.add_argument("--config", "-c", required=True, help="TOML config file")
    check.set_defaults(func=_config_check)
    keys = csub.add_parser("keys", help="print every key with its type, default and meaning")
    keys.set_defaults(func=_config_keys)


def _config_check(args: argparse.Namespace) -> int:
    from common.role_startup import load_or_exit

    load_or_exit(load_config, args.config)
    print(f"{args.config}: ok")
    return 0


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
