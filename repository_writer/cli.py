"""`vmbackup writer`: run the writer service (chunk shards and commits)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  vmbackup writer --config /etc/vmbackup/vmbackup.toml
  VMBACKUP_WRITER__SHARDS=0-63 vmbackup writer --config /etc/vmbackup/vmbackup.toml
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "writer",
        help="run the writer service (chunk shards and commits)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", default=None, help="vmbackup TOML config")
    p.set_defaults(func=cmd_writer)


def cmd_writer(args: argparse.Namespace) -> int:
    from repository.errors import RepositoryError
    from repository_writer.service import main as service_main

    try:
        return service_main(args)
    except RepositoryError as exc:
        print(f"vmbackup: error: {exc}", file=sys.stderr)
        return 1
