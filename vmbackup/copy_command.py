"""`vmbackup repo copy`: copy restore points from one repository to another (a second
copy at another site), sending only the chunks the target lacks; the library does the
work (repository/copy.py, its selection repository/copy_selection.py).

Either side may be ``s3://BUCKET/PREFIX``: ``--s3-config`` serves every s3:// side (one
endpoint and credentials for both buckets), ``--from-s3-config``/``--to-s3-config`` one
side each (two endpoints or two users); ``--from-cache-dir``/``--to-cache-dir`` its
local cache (the target's holds its open packs: rerun a killed copy with the same one).

Exit status: 0 every selected point is in the target; 1 a repository error (either side
does not open, a wrong passphrase, chunk sizes differ) or a point that could not be
copied (damaged in the source: each named, the others copied); 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from common.command_result import CommandResult
from repository.copy import copy_points
from repository.copy_result import CopyResult
from repository.copy_selection import CopyFilter, parse_age
from repository.errors import InvalidRequestError, RepositoryError
from repository.repo_location import is_s3
from vmbackup.repo_commands import (
    PASSPHRASE_ENV,
    _human,
    _repo_passphrase,
    _ts,
    add_command,
    json_arg,
)

TO_PASSPHRASE_ENV = "VMBACKUP_TO_PASSPHRASE"

EXAMPLES = """\
  # every point of the local repository into the second site's (a rerun continues)
  vmbackup repo copy --from /backup/repo --to /mnt/site-b/repo \\
      --from-passphrase-file /etc/vmbackup/pass --to-passphrase-file /etc/vmbackup/pass-b
  # what the nightly copy would take: the last 2 days' points of two VMs
  vmbackup repo copy --from /backup/repo --to /mnt/site-b/repo --newer-than 2d \\
      --vm web1 --vm 4210c3e1-0d3a-7c2e-9f1b-2a6c0e1d5b7a --dry-run
  # only the newest point of each VM, as one JSON document
  vmbackup repo copy --from /backup/repo --to /mnt/site-b/repo --latest 1 --json
  # into a bucket (a rerun after a kill: the same --to-cache-dir uploads what it left)
  vmbackup repo copy --from /backup/repo --to s3://backups/site-b \\
      --s3-config /etc/vmbackup/s3.toml --to-cache-dir /var/cache/vmbackup/site-b
  # between two S3 services, a config each
  vmbackup repo copy --from s3://backups/site-a --from-s3-config /etc/vmbackup/s3-a.toml \\
      --to s3://backups/site-b --to-s3-config /etc/vmbackup/s3-b.toml
"""


def age_arg(text: str) -> float:
    try:
        return parse_age(text)
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return n


def _side_s3(args: argparse.Namespace, side: str) -> tuple[Path | None, Path | None]:
    """(S3 config, cache dir) of one side ("from" or "to"): its own --SIDE-s3-config, else
    --s3-config when that side is s3://; refused where it cannot apply."""
    url = getattr(args, f"{side}_repo")
    own, cache = getattr(args, f"{side}_s3_config"), getattr(args, f"{side}_cache_dir")
    if not is_s3(url):
        for flag, given in ((f"--{side}-s3-config", own), (f"--{side}-cache-dir", cache)):
            if given is not None:
                raise InvalidRequestError(
                    f"{flag}: --{side} {url} is a directory, not an s3://BUCKET/PREFIX repository"
                )
        return None, None
    config = own if own is not None else args.s3_config
    if config is None:
        raise InvalidRequestError(
            f"--{side} {url}: an s3:// repository needs --{side}-s3-config FILE or --s3-config"
            " FILE (endpoint, region, credentials file; docs/object-storage.md)"
        )
    return config, cache


def _open(args: argparse.Namespace, side: str) -> Any:
    from repository.repository import Repository

    path = getattr(args, f"{side}_repo")
    env = PASSPHRASE_ENV if side == "from" else TO_PASSPHRASE_ENV
    name = "source (--from)" if side == "from" else "target (--to)"
    s3_config, cache_dir = _side_s3(args, side)
    ns = argparse.Namespace(
        repo=path,
        passphrase_file=getattr(args, f"{side}_passphrase_file"),
        passphrase=os.environ.get(env),
        s3_config=s3_config,
    )
    try:
        return Repository.open(
            path,
            _repo_passphrase(ns),
            read_only=side == "from",
            s3_config=s3_config,
            cache_dir=cache_dir,
        )
    except RepositoryError as exc:  # which of the two: the messages name paths, not sides
        raise _named(exc, f"{name} repository: {exc}") from None


def _named(exc: RepositoryError, message: str) -> RepositoryError:
    """``exc`` said again as ``message``, of its type where that takes one message."""
    try:
        return type(exc)(message)
    except TypeError:
        return RepositoryError(message)


def cmd_copy(args: argparse.Namespace) -> CommandResult:
    selection = CopyFilter(
        vms=tuple(args.vm or ()),
        newer_than=args.newer_than,
        older_than=args.older_than,
        latest=args.latest,
        policy=args.policy or "",
    )
    if args.s3_config is not None and not (is_s3(args.from_repo) or is_s3(args.to_repo)):
        raise InvalidRequestError("--s3-config: neither --from nor --to is an s3:// repository")
    src = _open(args, "from")
    dst = _open(args, "to")
    try:
        result = copy_points(
            src,
            dst,
            selection,
            dry_run=args.dry_run,
            recompress=args.recompress,
            progress=args.progress.task("copy points", "items"),
            note=args.progress.note,
        )
    finally:
        dst.close()  # seals the packs this process wrote (a version-3 target)
    warnings = [
        f"--vm {v}: no such VM in the source" for v in selection.unmatched_vms(src.points())
    ]
    text = "\n".join(copy_lines(result, args.from_repo, args.to_repo))
    res = CommandResult(0, text=text, result=copy_document(result), warnings=warnings)
    if not result.failed:
        return res
    reasons = [f"{len(result.failed)} point(s) not copied"]
    reasons += [f"point {f.id} ({f.vm_uuid}): {f.reason}" for f in result.failed]
    return res.found(1, "damage", reasons)


def copy_lines(r: CopyResult, src: str, dst: str) -> list[str]:
    dry = " (dry run: nothing is copied)" if r.dry_run else ""
    lines = [f"copy {src} -> {dst}: {r.selection}{dry}"]
    failed = {f.id: f.reason for f in r.failed}
    copied = {c.id: c for c in r.copied}
    planned = {p.id for p in r.to_copy}
    for p in sorted(r.present + r.to_copy, key=lambda p: (p.vm_name, p.vm_uuid, p.snapshot_time)):
        where = f"{p.id}  {_ts(p.snapshot_time)}  {p.vm_name or p.vm_uuid}"
        if p.id in failed:
            lines.append(f"  FAILED  {where}: {failed[p.id]}")
        elif p.id in copied:
            c = copied[p.id]
            lines.append(f"  copied  {where}: {c.chunks_sent} chunks, {_human(c.bytes_sent)} sent")
        elif r.dry_run and p.id in planned:
            lines.append(f"  to copy {where}")
        else:
            lines.append(f"  present {where}")
    s = r.stats
    if r.dry_run:
        lines.append(f"{len(r.to_copy)} to copy, {len(r.present)} already in the target")
    else:
        lines.append(
            f"{len(r.copied)} copied, {len(r.present)} already in the target, {len(r.failed)}"
            f" failed; {s.chunks_sent} chunks ({_human(s.bytes_sent)}) sent, {s.chunks_present}"
            f" already there, {s.chunks_read} read from the source, {s.blobs_as_stored} as"
            f" stored, {s.chunks_healed} healed"
        )
    return lines


def copy_document(r: CopyResult) -> dict[str, Any]:
    """The JSON of `repo copy --json` (docs/cli-json.md)."""
    failed = {f.id: f.reason for f in r.failed}
    copied = {c.id: c for c in r.copied}

    def entry(p: Any, state: str) -> dict[str, Any]:
        doc = {
            "id": p.id,
            "vm_uuid": p.vm_uuid,
            "vm_name": p.vm_name,
            "snapshot_time": p.snapshot_time,
            "state": state,
        }
        if p.id in copied:
            doc |= {"chunks_sent": copied[p.id].chunks_sent, "bytes_sent": copied[p.id].bytes_sent}
        if p.id in failed:
            doc["error"] = failed[p.id]
        return doc

    def state(p: Any) -> str:
        if p.id in failed:
            return "failed"
        if p.id in copied:
            return "copied"
        return "to_copy" if r.dry_run else "present"

    return {
        "source_id": r.source_id,
        "target_id": r.target_id,
        "selection": r.selection,
        "dry_run": r.dry_run,
        "points": [entry(p, "present") for p in r.present]
        + [entry(p, state(p)) for p in r.to_copy],
        "copied": len(r.copied),
        "present": len(r.present),
        "failed": len(r.failed),
        "stats": dataclasses.asdict(r.stats),
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "copy",
        "copy restore points to a second repository, sending only the chunks it lacks",
        EXAMPLES,
        description="Copies the selected points of --from into --to: chunks first (only "
        "those --to lacks, re-encrypted under its key when the two differ), each point "
        "last and atomically, so a killed copy leaves nothing half-visible and a rerun "
        "continues; points --to has already are skipped. The two must have the same "
        "chunk size; formats, encryption and storage (a directory or s3://) may differ"
        " (docs/operations.md, 'Second copy'; docs/object-storage.md).",
    )
    p.add_argument(
        "--from",
        dest="from_repo",
        required=True,
        metavar="PATH",
        help="source repository (read only): a directory or s3://BUCKET/PREFIX",
    )
    p.add_argument(
        "--to",
        dest="to_repo",
        required=True,
        metavar="PATH",
        help="target repository (created with `repo init`): a directory or s3://BUCKET/PREFIX",
    )
    p.add_argument(
        "--s3-config",
        type=Path,
        metavar="FILE",
        help="S3 config (docs/object-storage.md) of every s3:// side without its own",
    )
    for side, what in (("from", "source"), ("to", "target")):
        p.add_argument(
            f"--{side}-s3-config",
            type=Path,
            metavar="FILE",
            help=f"S3 config of an s3:// {what} (default: --s3-config)",
        )
        p.add_argument(
            f"--{side}-cache-dir",
            type=Path,
            metavar="DIR",
            help=f"local cache of an s3:// {what} (default $XDG_CACHE_HOME/vmbackup/<its id>)"
            + ("; its open packs: keep it for a rerun" if side == "to" else ""),
        )
    p.add_argument(
        "--from-passphrase-file",
        metavar="FILE",
        help=f"passphrase of an encrypted source (else ${PASSPHRASE_ENV} or a prompt)",
    )
    p.add_argument(
        "--to-passphrase-file",
        metavar="FILE",
        help=f"passphrase of an encrypted target (else ${TO_PASSPHRASE_ENV}, ${PASSPHRASE_ENV}"
        " or a prompt)",
    )
    p.add_argument(
        "--policy",
        metavar="NAME",
        help="only points of this policy's jobs (default: of every policy and import)",
    )
    p.add_argument(
        "--vm",
        action="append",
        metavar="UUID|NAME",
        help="only this VM's points (repeat for more; default: every VM)",
    )
    p.add_argument(
        "--newer-than",
        type=age_arg,
        metavar="AGE",
        help="only points whose snapshot is younger than AGE (36h, 7d, 2w, or seconds)",
    )
    p.add_argument(
        "--older-than",
        type=age_arg,
        metavar="AGE",
        help="only points whose snapshot is older than AGE",
    )
    p.add_argument(
        "--latest",
        type=positive,
        metavar="N",
        help="only the N newest points of each VM (after the other filters)",
    )
    p.add_argument(
        "--recompress",
        action="store_true",
        help="compress every chunk sent with the target's zstd level (default: a blob the"
        " target can read is written as stored)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be copied; copy nothing")
    json_arg(p)
    p.set_defaults(func=cmd_copy)
