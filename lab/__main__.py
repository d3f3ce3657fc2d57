"""`python -m lab build` builds the simulator; `python -m lab serve [flags]` runs it;
`python -m lab rgw start|stop|status` drives the lab's Ceph RADOS Gateway (S3)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lab import ceph_rgw
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
    r = sub.add_parser(
        "rgw",
        help="a one-node Ceph RADOS Gateway (S3): start (idempotent), stop, status;"
        " prints one JSON line",
    )
    r.add_argument("action", choices=["start", "stop", "status"])
    r.add_argument("--data-dir", type=Path, default=ceph_rgw.DEFAULT_DIR, help="its one directory")
    r.add_argument(
        "--objectstore",
        choices=["memstore", "bluestore"],
        default="memstore",
        help="memstore (RAM, kept on a clean stop) or bluestore on a sparse file",
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
    if ns.command == "rgw":
        return _rgw(ns.action, ns.data_dir, ns.objectstore)
    try:
        path = build(force=ns.force)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _rgw(action: str, data_dir: Path, objectstore: str) -> int:
    try:
        if action == "start":
            info = ceph_rgw.start(data_dir, objectstore=objectstore)
        elif action == "stop":
            info = ceph_rgw.stop(data_dir)
        else:
            info = ceph_rgw.status(data_dir)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    print(info.json())
    return 0 if info.running or action == "stop" else 1


if __name__ == "__main__":
    sys.exit(main())
