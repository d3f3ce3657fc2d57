"""`make bench`: every benchmark at its quick default size, one after the other.

Each benchmark prints its own table (the figures in RESULTS.md come from the commands
written there, some at larger sizes). ``--only NAME`` runs one; ``--list`` names them.

    .venv/bin/python -m bench.run_all [--only amqp_throughput] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# (module, arguments): quick sizes, so that the whole set fits in a coffee break.
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("amqp_throughput", ["--small", "5000", "--large", "200", "--repeat", "2"]),
    ("lab_startup", ["--sizes", "100", "--repeat", "2"]),
    ("repo_ingest", ["--mib", "256"]),
    ("repo_restore", ["--mib", "256", "--repeat", "3"]),
    ("repo_rss", ["--gib", "2"]),
    ("repo_vs_restic_borg", ["--scale", "1"]),
    ("coordinator_scale", ["--vms", "1000"]),
    ("proxy_throughput", ["--size-mib", "512"]),
    ("e2e_backup", ["--scale", "dev"]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", metavar="NAME", help="run only these")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, extra in BENCHMARKS:
            print(f"{name} {' '.join(extra)}")
        return 0
    unknown = set(args.only or []) - {name for name, _ in BENCHMARKS}
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    failed = []
    for name, extra in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", f"bench.{name}", *extra]
        print(f"\n== {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
