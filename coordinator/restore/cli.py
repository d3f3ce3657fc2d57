"""``vmbackup restore-vm``: its arguments (whole VM, --instant, --in-place) and the checks
on them; restore_vm_command.py runs it, imported when the command runs (pyVmomi and the
restore modules are not every `vmbackup` process's start-up cost)."""

from __future__ import annotations

import argparse

from common.command_result import CommandResult

EXAMPLES = """\
examples:
  vmbackup repo list --repo /backup/repo                     # find the point
  vmbackup restore-vm 20240501T220012Z-1a2b3c4d -c /etc/vmbackup/vmbackup.toml \\
      --to vc1 --datastore ds-restore --name web1-restored
  vmbackup restore-vm ID -c site.toml --to vc1 --datastore ds1 --transport nbd --json
  vmbackup restore-vm ID -c site.toml --to vc1 --datastore ds1 --name web1-now \\
      --instant --migrate      # runs from the backup at once, then moves to ds1
  vmbackup restore-vm --in-place --point ID -c site.toml             # roll the VM back
  vmbackup restore-vm --in-place --point ID -c site.toml --vm web1 --yes --power-on --json
"""


def register_restore_vm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore-vm",
        help="recreate the VM of a restore point on a vCenter (registered, powered off)",
        description="Create the point's VM from its saved configuration on a vCenter, fill"
        " its disks from the repository, and leave it registered and powered off; or, with"
        " --in-place, roll the existing VM back to the point, writing only the chunks CBT"
        " says changed since (docs/restore.md). On a terminal each disk's bytes, rate and"
        " ETA show on stderr.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "point", metavar="POINT", nargs="?", help="restore point id (see `vmbackup repo list`)"
    )
    p.add_argument("--point", dest="point_opt", metavar="POINT", help="the same, as an option")
    p.add_argument(
        "--config", "-c", required=True, help="vmbackup TOML config (vCenters, repository)"
    )
    p.add_argument(
        "--to",
        metavar="VCENTER",
        help="vCenter name from the config (required; --in-place: default the point's)",
    )
    p.add_argument(
        "--datastore", metavar="DS", help="datastore for files and disks (required, not --in-place)"
    )
    p.add_argument("--name", default="", help="name of the new VM (default: the saved name)")
    p.add_argument("--host", default="", help="host to register the VM on (default: any)")
    p.add_argument("--folder", default="", help="VM folder path below the datacenter")
    p.add_argument("--repo", default="", metavar="PATH", help="repository (default: config)")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="keep the new VM when an upload fails (default: destroy it)",
    )
    p.add_argument(
        "--transport",
        choices=("http", "nbd"),
        default=None,
        help="how disks are written: http = one PUT of each whole flat file on /folder;"
        " nbd = only the chunks with data, through nbdkit as set in proxy.nbd (vddk, or the"
        " file plugin with proxy.datastore_mounts): the disks stay thin",
    )
    p.add_argument(
        "--upload-attempts",
        type=int,
        default=3,
        metavar="N",
        help="tries per disk when the connection drops, vCenter answers 5xx or an NBD"
        " write fails (default 3): http starts the disk again from its first byte, nbd"
        " resumes at the first write not confirmed",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout, errors included; no progress (docs/cli-json.md)",
    )
    add_instant_args(p)
    add_in_place_arguments(p)
    p.set_defaults(func=_cmd_restore_vm)


def _cmd_restore_vm(args: argparse.Namespace) -> CommandResult:
    from coordinator.restore.restore_vm_command import cmd_restore_vm

    return cmd_restore_vm(args)


def add_instant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instant recovery (docs/restore.md, 'Instant VM recovery')")
    g.add_argument(
        "--instant",
        action="store_true",
        help="run the VM from the backup now (disks served from the repository through an"
        " NFS datastore, writes kept in a throw-away overlay); serves until SIGINT/SIGTERM,"
        " which removes the VM; --datastore is where --migrate moves it",
    )
    g.add_argument(
        "--migrate",
        action="store_true",
        help="with --instant: once it runs, move it to --datastore while it runs"
        " (RelocateVM_Task), then stop the export and exit; SIGUSR1 does the same later",
    )
    g.add_argument(
        "--nfs-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the ESXi host mounts the export's NFS share from (default 127.0.0.1:"
        " the lab; on vSphere this machine's address, with an NFS server exporting"
        " --export-dir)",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="PORT",
        help="with --instant: each disk's export serves Prometheus /metrics on 127.0.0.1,"
        " the first disk on PORT, the next on PORT+1, ... (default: none)",
    )
    g.add_argument(
        "--export-dir",
        default="",
        metavar="DIR",
        help="where the export's directory (datastore files, overlays) goes (default $TMPDIR)",
    )


def usage_problem(args: argparse.Namespace) -> str:
    if args.migrate and not args.instant:
        return "--migrate needs --instant"
    if args.instant and args.in_place:
        return (
            "--instant and --in-place do not go together: one runs a new VM, the other rolls back"
        )
    if args.metrics_port and not args.instant:
        return "--metrics-port needs --instant"
    if not 0 <= args.metrics_port < 65536:
        return f"--metrics-port {args.metrics_port}: not a port (1..65535)"
    if args.instant and (args.transport not in (None, "http") or args.keep_failed):
        return "--instant copies nothing: --transport and --keep-failed do not apply"
    return ""


def add_in_place_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("in-place rollback")
    g.add_argument(
        "--in-place",
        action="store_true",
        help="roll the point's existing VM back to it: power off, snapshot, ask CBT what"
        " changed since the point, remove the snapshot, write those chunks from the point"
        " through NBD (proxy.nbd); the whole disk when CBT cannot answer",
    )
    g.add_argument(
        "--vm",
        default="",
        metavar="VM",
        help="--in-place: the VM, by name or moref (default: the point's, by its uuid)",
    )
    g.add_argument(
        "--yes",
        action="store_true",
        help="--in-place: do not ask before powering off and overwriting (without a"
        " terminal the command refuses unless given)",
    )
    g.add_argument(
        "--power-on", action="store_true", help="--in-place: power the VM on once rolled back"
    )


def in_place_usage(args: argparse.Namespace) -> str:
    """What is wrong with the options for the mode asked ("" when nothing)."""
    if args.in_place:
        given = [
            ("--datastore", args.datastore),
            ("--name", args.name),
            ("--host", args.host),
            ("--folder", args.folder),
            ("--keep-failed", args.keep_failed),
            ("--transport http", args.transport == "http"),
        ]
        bad = [opt for opt, v in given if v]
        if bad:
            return (
                f"{', '.join(bad)}: not with --in-place, which writes the VM's own disks"
                " through NBD (proxy.nbd)"
            )
        return ""
    bad = [
        o for o, v in (("--vm", args.vm), ("--yes", args.yes), ("--power-on", args.power_on)) if v
    ]
    if bad:
        return f"{', '.join(bad)}: only with --in-place"
    missing = [o for o, v in (("--to", args.to), ("--datastore", args.datastore)) if not v]
    if missing:
        return f"restore-vm needs {' and '.join(missing)} (or --in-place)"
    return ""
