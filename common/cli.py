"""The ``vmbackup`` console script: one subcommand per role and operation.

Each role package contributes its subcommands through ``<package>.cli.register``
so that this module stays a thin composition root.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    for name in ROLE_CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
