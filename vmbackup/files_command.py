"""`vmbackup files ls|get|mount`: the files of one disk of a restore point.

The disk is opened by file_restore/session.py (our read-only NBD export, nbdfuse, a
read-only loop device and mount per partition) and everything is torn down when the
command ends: on success, on an error, on SIGTERM or Ctrl-C. ``ls`` lists the partitions
or a directory, ``get`` copies a file or tree out with its modes and times, ``mount``
keeps every partition mounted read-only under a directory until SIGTERM or SIGINT.

Exit status (docs/operations.md): 0 done (``mount``: stopped by a signal); 1 not done
(no such point, disk, partition or path; no known filesystem; one that does not mount;
the output exists); 2 usage; 130 stopped by a signal before done (``mount``: before it
mounted).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.command_result import CommandResult
from repository.errors import RepositoryError
from vmbackup.repo_commands import _human, _repo_arg, _repo_passphrase
from vmbackup.restore_command import no_such_disk

if TYPE_CHECKING:
    from export.nbdkit_server import ExportSpec
    from file_restore.partitions import Partition
    from repository.points import Point

EXAMPLES = """\
examples:
  vmbackup files ls --repo /backup/repo --point ID --disk 2000          # partitions
  vmbackup files ls --repo /backup/repo --point ID --disk 2000 --partition 1 /etc
  vmbackup files get --repo /backup/repo --point ID --disk 2000 --partition 1 \\
      /home/user/notes.txt --out /tmp/restored/            # file or tree, modes and times
  vmbackup files mount --repo /backup/repo --point ID --disk 2000 --at /mnt/web1
      # every partition read-only at /mnt/web1/p1, /mnt/web1/p2 ... until Ctrl-C
"""
KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "link"}


def _open_args(args: argparse.Namespace) -> tuple[Point, ExportSpec]:
    """The export of the asked disk, every refusal before anything starts."""
    from export.nbdkit_server import ExportSpec
    from repository.repository import Repository
    from vmbackup.export_command import _vm_mismatch

    passphrase = _repo_passphrase(args)
    s3_config = Path(args.s3_config) if args.s3_config else None
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    repo = Repository.open(str(args.repo), passphrase, s3_config=s3_config, cache_dir=cache_dir)
    point = repo.get_point(args.point)
    refusal = _vm_mismatch(point, args.vm) or no_such_disk(point, args.disk)
    if refusal:
        raise RepositoryError(refusal)
    repo.load_map(point, args.disk)  # a damaged map refuses here, naming its file
    return point, ExportSpec(
        repo=str(args.repo),
        point=point.id,
        disk=args.disk,
        passphrase=passphrase,
        s3_config=s3_config,
        cache_dir=cache_dir,
    )


def _part_doc(p: Partition) -> dict[str, Any]:
    return {
        "number": p.number,
        "start": p.start,
        "size": p.size,
        "type": p.type,
        "fstype": p.fstype,
        "label": p.label,
    }


def _entry(path: Path, name: str) -> dict[str, Any]:
    st = os.lstat(path)
    doc: dict[str, Any] = {
        "name": name,
        "type": KINDS.get(stat.S_IFMT(st.st_mode), "other"),
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "mtime": st.st_mtime,
    }
    if stat.S_ISLNK(st.st_mode):
        doc["link"] = os.readlink(path)
    return doc


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _interrupted(exc: BaseException) -> CommandResult:
    return CommandResult.failed(130, f"stopped by {exc}; everything unmounted", "interrupted")


def cmd_ls(args: argparse.Namespace) -> CommandResult:
    from file_restore.inner_path import inner_parts, resolve_inside
    from file_restore.partitions import choose_partition
    from file_restore.session import Stopped, open_disk, stop_on_signals

    inner_parts(args.path or "/")  # a bad path refused before anything starts
    point, spec = _open_args(args)
    base = {"point": point.id, "vm": point.vm_name, "disk": args.disk}
    try:
        with stop_on_signals(), open_disk(spec) as disk:
            if args.path is None and args.partition is None:
                parts = [_part_doc(p) for p in disk.partitions]
                lines = [f"{'#':>2}  {'start':>10}  {'size':>10}  {'fs':<6} label"] + [
                    f"{p['number']:>2}  {p['start']:>10}  {_human(p['size']):>10}"
                    f"  {p['fstype'] or '-':<6} {p['label']}"
                    for p in parts
                ]
                return CommandResult(
                    0,
                    "\n".join(lines),
                    {**base, "table": disk.table or "none", "partitions": parts},
                )
            part = choose_partition(disk.partitions, args.partition)
            mp = disk.mount(part)
            target = resolve_inside(mp.root, args.path or "/")
            if target.is_dir() and not target.is_symlink():
                entries = [_entry(target / n, n) for n in sorted(os.listdir(target))]
            else:
                entries = [_entry(target, target.name)]
            text = "\n".join(
                f"{e['mode']} {e['type']:<4} {e['size']:>12} {_stamp(e['mtime'])}  {e['name']}"
                + (f" -> {e['link']}" if "link" in e else "")
                for e in entries
            )
            return CommandResult(
                0,
                text,
                {
                    **base,
                    "partition": part.number,
                    "fstype": part.fstype,
                    "engine": mp.engine,
                    "path": args.path or "/",
                    "entries": entries,
                },
            )
    except Stopped as exc:
        return _interrupted(exc)


def cmd_get(args: argparse.Namespace) -> CommandResult:
    from file_restore.copy_out import copy_out
    from file_restore.inner_path import inner_parts, resolve_inside
    from file_restore.partitions import choose_partition
    from file_restore.session import Stopped, open_disk, stop_on_signals

    parts = inner_parts(args.path)  # a bad path refused before anything starts
    point, spec = _open_args(args)
    out = Path(args.out)
    if out.is_dir():  # into it, under the file's own name (the root: its partition's)
        out = out / (parts[-1] if parts else f"partition-{args.partition or 0}")
    t0 = time.monotonic()
    try:
        with stop_on_signals(), open_disk(spec) as disk:
            part = choose_partition(disk.partitions, args.partition)
            mp = disk.mount(part)
            src = resolve_inside(mp.root, args.path)
            progress = args.progress.task(f"files get {args.path}")
            stats = copy_out(src, out, progress)
    except Stopped as exc:
        return _interrupted(exc)
    doc = {
        "point": point.id,
        "vm": point.vm_name,
        "disk": args.disk,
        "partition": part.number,
        "fstype": part.fstype,
        "engine": mp.engine,
        "path": args.path,
        "out": str(out),
        "files": stats.files,
        "dirs": stats.dirs,
        "symlinks": stats.symlinks,
        "bytes": stats.bytes,
        "skipped": stats.skipped,
        "seconds": round(time.monotonic() - t0, 3),
    }
    text = (
        f"restored {args.path} of partition {part.number} ({part.fstype}) to {out}:"
        f" {stats.files} files, {stats.dirs} directories, {stats.symlinks} links,"
        f" {_human(stats.bytes)}"
    )
    warnings = [f"not copied (a device, FIFO or socket): {s}" for s in stats.skipped]
    return CommandResult(0, text, doc, warnings=warnings)


def cmd_mount(args: argparse.Namespace) -> CommandResult:
    from file_restore.partitions import FileRestoreError, choose_partition
    from file_restore.session import Stopped, open_disk, stop_on_signals

    point, spec = _open_args(args)
    at = Path(args.at)
    if not at.is_dir() or any(at.iterdir()):
        raise FileRestoreError(f"--at {at}: give an existing empty directory")
    t0 = time.monotonic()
    mounted: list[dict[str, Any]] = []
    warnings: list[str] = []
    try:
        with stop_on_signals(), open_disk(spec) as disk:
            if args.partition is not None:
                wanted = [choose_partition(disk.partitions, args.partition)]
            else:  # a BIOS boot or reserved partition has nothing to browse
                wanted = [p for p in disk.partitions if p.fstype]
            for p in wanted:
                try:
                    mp = disk.mount(p, at / f"p{p.number}")
                except FileRestoreError as exc:
                    if args.partition is not None:
                        raise
                    warnings.append(str(exc))  # the others still mount
                    continue
                mounted.append({**_part_doc(p), "path": str(mp.root), "engine": mp.engine})
            if not mounted:
                raise FileRestoreError(
                    "; ".join(warnings) or "no partition of this disk holds a known filesystem"
                )
            for w in warnings:
                print(f"vmbackup files mount: warning: {w}", file=sys.stderr)
            print(
                "mounted read-only: "
                + ", ".join(f"{m['path']} ({m['fstype']})" for m in mounted)
                + "; stop with Ctrl-C or SIGTERM",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(3600)  # a signal raises Stopped out of this
    except Stopped as exc:
        stopped_by = str(exc)
        if not mounted:  # before it served
            return _interrupted(exc)
    doc = {
        "point": point.id,
        "vm": point.vm_name,
        "disk": args.disk,
        "at": str(at),
        "partitions": mounted,
        "not_mounted": warnings,
        "stopped_by": stopped_by,
        "seconds": round(time.monotonic() - t0, 3),
    }
    text = f"unmounted {at} (stopped by {stopped_by})"
    return CommandResult(0, text, doc)  # not_mounted went to stderr when it mounted


def _common(p: argparse.ArgumentParser) -> None:
    _repo_arg(p)
    p.add_argument("--point", required=True, metavar="ID", help="restore point id")
    p.add_argument("--vm", metavar="NAME|UUID", help="refuse the point if it is another VM's")
    p.add_argument("--disk", required=True, type=int, metavar="KEY", help="disk key in the point")
    p.add_argument(
        "--partition",
        type=int,
        metavar="N",
        help="partition number as `files ls` shows it (default: the only one"
        " with a filesystem; 0 is a disk without a partition table)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document (docs/cli-json.md)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "files",
        help="list, copy out or mount the files of a point's disk (ext4, XFS, NTFS, FAT)",
        description="File-level restore from one disk of a restore point, read-only:"
        " its partitions (MBR, GPT), their directories and files. Needs root (loop"
        ' devices, mounts) and nbdkit, nbdfuse. docs/restore.md, "Files".',
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    files = p.add_subparsers(dest="files_command", metavar="COMMAND")
    files.required = True
    ls = _subcommand(files, "ls", "the partitions, or a directory of one", cmd_ls)
    ls.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="a directory or file from the filesystem's root (default: partitions)",
    )
    get = _subcommand(files, "get", "copy a file or a tree out, with its modes and times", cmd_get)
    get.add_argument("path", metavar="PATH", help="file or directory from the filesystem's root")
    get.add_argument(
        "--out",
        required=True,
        metavar="DEST",
        help="a new path, or an existing directory to copy into (nothing is overwritten)",
    )
    mnt = _subcommand(files, "mount", "mount every partition read-only until Ctrl-C", cmd_mount)
    mnt.add_argument(
        "--at",
        required=True,
        metavar="DIR",
        help="an empty directory: partition N is mounted at DIR/pN",
    )


def _subcommand(
    files: argparse._SubParsersAction, name: str, text: str, func: Callable[..., CommandResult]
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = files.add_parser(
        name, help=text, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _common(p)
    p.set_defaults(func=func)
    return p
