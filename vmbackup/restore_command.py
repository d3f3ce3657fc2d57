"""`vmbackup restore`: one disk of a point to a new file, a block device or stdout.

An existing file or block device at ``--out`` is never overwritten without ``--force``:
a restore is often run in a hurry, and a mistyped path would otherwise replace a good
image, or a disk, with another one. A disk key the point does not hold is answered with
the keys it does.

Exit status: 0 restored; 1 not restored (the reason on stderr); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import stat
from dataclasses import asdict

from common.command_result import CommandResult
from repository.points import Point
from vmbackup.repo_commands import _human, _repo_arg, add_command, json_arg, open_repo

EXAMPLES = """\
  vmbackup repo list --repo /backup/repo                  # find the point and its disks
  vmbackup restore --repo /backup/repo --point 20240501T220012Z-1a2b3c4d \\
      --disk 2000 --out /restore/web1-disk0.img
  vmbackup restore --repo /backup/repo --point ID --disk 2000 --out - | qemu-img ...
  vmbackup restore --repo /backup/repo --point ID --disk 2000 --out /dev/sdb --force
  vmbackup restore --repo /backup/repo --point ID --disk 2000 --out disk.img --json
"""


def overwrite_refusal(path: str, mode: int | None, force: bool) -> str:
    """Why a restore to ``path`` (``mode``: its st_mode, None when nothing is there)
    must not go ahead: "" when it may. A pipe, a terminal or /dev/null holds nothing a
    restore could destroy; a regular file or a block device does."""
    if force or path == "-" or mode is None:
        return ""
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISBLK(mode):
        kind = "block device"
    else:
        return ""
    return (
        f"restore target {path} is an existing {kind}: not overwritten;"
        " give --force to overwrite it, or another --out"
    )


def target_mode(path: str) -> int | None:
    """st_mode of what ``path`` names now (links followed), None when nothing."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def no_such_disk(point: Point, key: int) -> str:
    """Why ``--disk key`` cannot be restored from ``point``, naming the disks it holds
    (and those its backup failed): "" when it holds that disk."""
    keys = [d.key for d in point.disks]
    if key in keys:
        return ""
    held = ", ".join(f"{d.key} ({_human(d.capacity)})" for d in point.disks) or "none"
    msg = f"point {point.id} has no disk {key}; its disks: {held}"
    failed = [f"{k} ({why})" for k, why in point.failed_disks if k not in keys]
    if failed:
        msg += f"; failed in that backup: {', '.join(failed)}"
    return msg


def cmd_restore(args: argparse.Namespace) -> CommandResult:
    from repository.restore import restore_disk

    if args.json and args.out == "-":  # stdout is the image: no room for a document
        return CommandResult.failed(
            2, "--json needs --out FILE or DEVICE: with --out - stdout is the image", "usage"
        )
    # Before the repository is opened (no passphrase prompt for a restore refused); a
    # target created between this check and the restore's rename is still replaced.
    refusal = overwrite_refusal(args.out, target_mode(args.out), args.force)
    if refusal:
        return CommandResult.failed(1, refusal, "refused")
    repo = open_repo(args)
    missing = no_such_disk(repo.get_point(args.point), args.disk)
    if missing:
        return CommandResult.failed(1, missing, "refused")
    progress = args.progress.task(f"restore disk {args.disk}")
    st = restore_disk(
        repo, args.point, args.disk, args.out, sync=not args.no_fsync, progress=progress
    )
    text = ""
    if args.out != "-":
        text = (
            f"restored disk {args.disk} of {args.point} to {args.out}: "
            f"{_human(st.bytes_written)}, {st.chunks_read} chunks read, "
            f"{st.zero_chunks} zero, {st.seconds:.2f} s"
        )
    return CommandResult(
        0,
        text=text,
        result={"point": args.point, "disk": args.disk, "out": args.out, **asdict(st)},
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "restore",
        "restore one disk of a point to a file, device or stdout",
        EXAMPLES,
        description="Restore one disk of a restore point, every chunk checked against its"
        " id. A file target is written under a temporary name and renamed when complete;"
        " a block device is overwritten in place, zeros included.",
    )
    _repo_arg(p)
    p.add_argument(
        "--point",
        required=True,
        metavar="ID",
        help="restore point id, as `vmbackup repo list` shows it",
    )
    p.add_argument(
        "--disk",
        required=True,
        type=int,
        metavar="KEY",
        help="disk key within the point (e.g. 2000: the first disk); `vmbackup repo list"
        " --json` lists each point's disks",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE|DEVICE|-",
        help="raw image file (created), block device, or - for stdout; an existing file or"
        " device is refused without --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing file or block device at --out",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not fsync a file or device target before exiting (scratch copies only)",
    )
    json_arg(p)
    p.set_defaults(func=cmd_restore)
