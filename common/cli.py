"""The ``vmbackup`` console script: one subcommand per role and operation.

Each role package contributes its subcommands through ``<package>.cli.register``
so that this module stays a thin composition root.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from common.broker_tls import BrokerCertificateError

ROLE_CLI_MODULES = (
    "coordinator.cli",
    "proxy_worker.cli",
    "repository_writer.cli",
)

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _register_config_commands(sub)
    for name in ROLE_CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module
                raise
            continue
        module.register(sub)
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

    load_or_exit(args.config)
    print(f"{args.config}: ok")
    return 0


def _config_keys(_args: argparse.Namespace) -> int:
    from common.config import describe
    from common.settings import config_class

    for key, tp, default, doc in describe(config_class()):
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
