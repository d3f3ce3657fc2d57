"""`python -m lab build` builds the simulator; `python -m lab serve [flags]` runs it."""

from __future__ import annotations

import argparse
import os
import sys

from lab.build import build
from lab.spec import LabError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="The vSphere lab: VMware's vcsim with Changed Block Tracking.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build lab/vcsim/bin/vcsim-lab if a source is newer")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sub.add_parser(
        "serve",
        help="run the lab in the foreground; flags go to vcsim-lab (see `serve --help`)",
        add_help=False,
    )
    if args[:1] == ["serve"]:
        try:
            binary = build()
        except LabError as exc:
            print(f"lab: {exc}", file=sys.stderr)
            return 2
        # exec: the ready line and SIGTERM handling are the Go program's own.
        os.execv(binary, [str(binary), *args[1:]])
    ns = parser.parse_args(args)
    try:
        path = build(force=ns.force)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
