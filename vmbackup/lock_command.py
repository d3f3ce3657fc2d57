"""`vmbackup repo extend-retention` and `vmbackup repo undelete`: a repository on S3 with
Object Lock (repository/s3_lock_maintenance.py; docs/object-storage.md, "Object Lock").

Exit status: 0 done; 1 objects kept points need are hidden or overwritten
(extend-retention: run `repo undelete`), the repository has no Object Lock, or a
repository error; 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses

from common.command_result import CommandResult
from repository.errors import InvalidRequestError
from repository.repository import Repository
from repository.s3_object_lock import LockedS3Storage
from vmbackup.repo_commands import _repo_arg, add_command, json_arg, open_repo


def _locked(repo: Repository) -> LockedS3Storage:
    if not isinstance(repo.storage, LockedS3Storage):
        raise InvalidRequestError(
            f"{repo.location} has no Object Lock (`repo init --object-lock` on S3 makes one)"
        )
    return repo.storage


def cmd_extend(args: argparse.Namespace) -> CommandResult:
    from repository.gc import referenced_chunks
    from repository.s3_lock_maintenance import extend_retention

    repo = open_repo(args)
    _locked(repo)
    r = extend_retention(
        repo, referenced_chunks(repo), dry_run=args.dry_run, check_all=args.check_all
    )
    verb = "would extend" if r.dry_run else "extended"
    lines = [
        f"{r.checked} objects kept points need ({r.looked_up} looked up); {verb}"
        f" {r.extended} to {r.period_seconds} s"
        f" ({r.mode}); soonest retain-until {r.min_retain_until or '-'}"
    ]
    bad = [f"hidden (deleted): {n}" for n in r.hidden]
    bad += [f"overwritten: {n}" for n in r.overwritten]
    res = CommandResult(0, text="\n".join(bad + lines), result=dataclasses.asdict(r))
    if not bad:
        return res
    return res.found(
        1,
        "damage",
        [f"{len(bad)} object(s) kept points need were deleted or overwritten:"
         f" `vmbackup repo undelete` restores them", *bad],
    )  # fmt: skip


def cmd_undelete(args: argparse.Namespace) -> CommandResult:
    from repository.s3_lock_maintenance import undelete

    repo = open_repo(args)
    storage = _locked(repo)
    points = None if args.all_points else set(args.point or ())
    r = undelete(storage, points, dry_run=args.dry_run)
    verb = "would restore" if r.dry_run else "restored"
    lines = [f"{verb} {n}" for n in r.restored]
    lines += [f"hidden point (--point ID brings it back): {p}" for p in r.hidden_points]
    lines.append(f"{len(r.restored)} objects {verb}; {len(r.hidden_points)} hidden points left")
    return CommandResult(0, text="\n".join(lines), result=dataclasses.asdict(r))


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "extend-retention",
        "Object Lock: lock again what kept points need before it expires (gc does it too)",
        "  vmbackup repo extend-retention --repo s3://locked/site-a --s3-config s3.toml\n"
        "  vmbackup repo extend-retention --repo s3://locked/site-a --s3-config s3.toml"
        " --dry-run --json\n",
        description="Every object a current point needs whose retain-until is less than "
        "half the repository's lock period away is locked until now + the period; objects "
        "found deleted or overwritten are listed (exit 1).",
    )
    _repo_arg(p)
    p.add_argument("--dry-run", action="store_true", help="say what would be extended")
    p.add_argument(
        "--check-all",
        action="store_true",
        help="read every needed object's retain-until (a HEAD each), also of objects"
        " written less than half a period ago (by default those are known locked)",
    )
    json_arg(p)
    p.set_defaults(func=cmd_extend)

    p = add_command(
        sub,
        "undelete",
        "Object Lock: make the locked originals current again (after a delete or overwrite)",
        "  vmbackup repo undelete --repo s3://locked/site-a --s3-config s3.toml --dry-run\n"
        "  vmbackup repo undelete --repo s3://locked/site-a --s3-config s3.toml"
        " --point 20261206T010203Z-0a1b2c3d\n",
        description="Packs, index objects, the config and the key file always; points only "
        "those named (prune hides points as a delete would), or every one with --all-points.",
    )
    _repo_arg(p)
    p.add_argument("--point", action="append", metavar="ID", help="bring back this point")
    p.add_argument("--all-points", action="store_true", help="bring back every hidden point")
    p.add_argument("--dry-run", action="store_true", help="say what would be restored")
    json_arg(p)
    p.set_defaults(func=cmd_undelete)
