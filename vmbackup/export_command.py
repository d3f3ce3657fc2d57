"""`vmbackup export`: serve one disk of a restore point over NBD until stopped.

nbdkit does the serving (export/nbdkit_server.py starts it with our plugin); this
command checks what it is asked before anything starts (repository, passphrase, point,
VM, disk: the same errors as `vmbackup restore`), prints the address to connect to and
waits for SIGINT or SIGTERM, then stops nbdkit and removes its overlay.

Exit status: 0 served and stopped cleanly by a signal; 1 not started, or nbdkit ended
on its own or failed (the reason on stderr); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from repository.errors import RepositoryError
from vmbackup.repo_commands import _human, _repo_arg, _repo_passphrase
from vmbackup.restore_command import no_such_disk

EXAMPLES = """\
examples:
  vmbackup export --repo /backup/repo --point 20240501T220012Z-1a2b3c4d --disk 2000
      # serving ... at nbd://127.0.0.1:10809/   (Ctrl-C stops it)
  nbdinfo nbd://127.0.0.1:10809/                        # size, extents
  nbdcopy nbd://127.0.0.1:10809/ disk.raw               # copy it out (zero chunks skipped)
  nbd-client -N '' 127.0.0.1 10809 /dev/nbd0 && mount -o ro /dev/nbd0p1 /mnt
  vmbackup export --repo /backup/repo --point ID --disk 2000 --socket /run/web1.sock \\
      --writable                                     # writes kept in a throw-away overlay
  vmbackup export --repo /backup/repo --point ID --vm web1 --disk 2000 --json
"""


def _vm_mismatch(point: Any, vm: str | None) -> str:
    """Why ``--vm`` does not name the point's VM ("" when it does or is not given)."""
    if vm is None or vm in (point.vm_name, point.vm_uuid):
        return ""
    return (
        f"point {point.id} is of VM {point.vm_name!r} (uuid {point.vm_uuid}), not {vm!r}:"
        " `vmbackup repo list` shows each point's VM"
    )


def _spec(args: argparse.Namespace, passphrase: str | None) -> Any:
    from export.nbdkit_server import ExportSpec, parse_listen

    host, port = "127.0.0.1", 10809
    if args.listen is not None:
        try:
            host, port = parse_listen(args.listen)
        except ValueError as exc:
            raise RepositoryError(f"--listen: {exc}") from None
    return ExportSpec(
        repo=str(args.repo),
        s3_config=Path(args.s3_config) if args.s3_config else None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        point=args.point,
        disk=args.disk,
        passphrase=passphrase,
        writable=args.writable,
        cache_mib=args.cache_mib,
        host=host,
        port=port,
        socket=Path(args.socket) if args.socket else None,
        overlay_dir=Path(args.overlay_dir) if args.overlay_dir else None,
        threads=args.threads,
        metrics_port=args.metrics_port,
    )


def _say(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc) if args.json else text, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    from export.nbdkit_server import start_export
    from repository.repository import Repository

    passphrase = _repo_passphrase(args)
    repo = Repository.open(  # every error before nbdkit starts
        str(args.repo), passphrase, s3_config=args.s3_config, cache_dir=args.cache_dir
    )
    point = repo.get_point(args.point)
    refusal = _vm_mismatch(point, args.vm) or no_such_disk(point, args.disk)
    if refusal:
        raise RepositoryError(refusal)
    repo.load_map(point, args.disk)  # a damaged map refuses the export, naming the file
    size = point.disk(args.disk).capacity
    spec = _spec(args, passphrase)
    # Signals before nbdkit exists: a SIGTERM during its start still stops it.
    stop: list[Any] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop:
            stop[0].request_stop()
        else:
            stop.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        running = start_export(spec)
        if stop:  # signalled while starting
            running.stop()
            return 0
        stop.append(running)
        mode = "read-write (writes kept in a temporary overlay)" if spec.writable else "read-only"
        _say(
            args,
            {
                "event": "serving",
                "uri": running.uri,
                "point": point.id,
                "vm": point.vm_name,
                "disk": args.disk,
                "size": size,
                "writable": spec.writable,
                "pid": running.pid,
            },
            f"serving disk {args.disk} of {point.id} ({point.vm_name}, {_human(size)},"
            f" {mode}) at {running.uri}\n"
            f"connect with: nbdinfo {running.uri}  |  stop with Ctrl-C or SIGTERM",
        )
        t0 = time.monotonic()
        rc = running.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    signalled = running.stop_requested
    st = running.stats or {}
    _say(
        args,
        {"event": "stopped", "signalled": signalled, "nbdkit_status": rc, **st},
        f"stopped after {time.monotonic() - t0:.0f} s: served {_human(st.get('bytes_read', 0))}"
        f" in {st.get('reads', 0)} reads, cache {st.get('cache_hits', 0)} hits"
        f" / {st.get('cache_misses', 0)} misses, {st.get('read_errors', 0)} read errors",
    )
    if not signalled or rc != 0:
        how = "on its own" if not signalled else "while stopping"
        print(f"vmbackup: error: nbdkit ended {how} (status {rc})", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="serve one disk of a point over NBD (read-only, or with a throw-away overlay)",
        description="Serve one disk of a restore point as an NBD export through nbdkit,"
        " reading chunks on demand (each checked against its id; a damaged one answers EIO,"
        " never wrong bytes) with a bounded cache of decoded chunks. The repository is only"
        " read; --writable keeps writes in a temporary copy-on-write overlay, dropped at"
        " stop. Runs until SIGINT or SIGTERM.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _repo_arg(p)
    p.add_argument("--point", required=True, metavar="ID", help="restore point id")
    p.add_argument(
        "--vm",
        metavar="NAME|UUID",
        help="the point's VM: the export is refused if the point is another VM's",
    )
    p.add_argument(
        "--disk", required=True, type=int, metavar="KEY", help="disk key within the point"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="TCP address to listen on (default 127.0.0.1:10809); NBD has no authentication:"
        " listen beyond localhost only on a trusted network",
    )
    where.add_argument("--socket", metavar="PATH", help="listen on this Unix socket instead")
    p.add_argument(
        "--writable",
        action="store_true",
        help="accept writes into a temporary overlay (nbdkit's cow filter); never the repository",
    )
    p.add_argument(
        "--overlay-dir",
        metavar="DIR",
        help="where the writable overlay grows (default $TMPDIR or /var/tmp)",
    )
    p.add_argument(
        "--cache-mib",
        type=_positive,
        default=128,
        metavar="N",
        help="decoded chunks kept in memory, in MiB (default 128)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=4,
        metavar="N",
        help="requests nbdkit serves at once (default 4)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="PORT",
        help="serve Prometheus /metrics of the export on 127.0.0.1:PORT (default: none)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON line when serving ({"event": "serving", "uri": ...}) and one at stop',
    )
    p.set_defaults(func=cmd_export)
