"""Repository maintenance commands: `vmbackup repo init|import-disk|list|upgrade|id-key`
here, `repo list` (repo_list_command.py), `repo repair`, `repo copy`, `restore`, `verify`,
`prune` and `gc` (a module each), and what they share: the passphrase, opening the repository,
sizes, and a subcommand with examples. They work on the repository library directly (no
service runs), return a CommandResult (printed by vmbackup/json_output.py, text or
--json); exit status 0 only on success."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.command_result import CommandResult
from repository.errors import InvalidRequestError, RepositoryError
from repository.repo_location import is_s3, parse_location

if TYPE_CHECKING:  # botocore is imported by the commands that reach S3, not by --help
    from repository.s3_object_lock import LockPolicy

PASSPHRASE_ENV = "VMBACKUP_PASSPHRASE"
_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 512K, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(m.group(1)) * mult


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str | None:
    pf = getattr(args, "passphrase_file", None)
    if pf:
        try:
            return Path(pf).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise RepositoryError(f"cannot read passphrase file {pf}: {exc.strerror}") from None
    if getattr(args, "passphrase", None):  # repository.passphrase of a --config
        return str(args.passphrase)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if sys.stdin.isatty():
        first = getpass.getpass("Repository passphrase: ")
        if confirm and getpass.getpass("Again: ") != first:
            raise RepositoryError("the passphrases differ")
        return first
    return None


def _repo_passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase when the config says the repository is encrypted (else no prompt)."""
    try:
        if is_s3(args.repo):
            from repository.s3_repo_storage import S3RepoStorage

            loc = parse_location(args.repo, getattr(args, "s3_config", None))
            assert loc.s3 is not None
            raw = S3RepoStorage(loc.s3).read("config")
        else:
            raw = (Path(args.repo) / "config").read_bytes()
        encrypted = json.loads(raw).get("encryption") != "none"
    except (OSError, ValueError, AttributeError, RepositoryError):
        encrypted = False  # opening gives the precise error
    return _passphrase(args) if encrypted else None


def repo_of_config(args: argparse.Namespace, cfg: Any) -> None:
    """Without --repo: repository.path (and passphrase, unless --passphrase-file) of the
    command's --config, loaded as ``cfg``."""
    if args.repo:
        return
    if cfg is None or not cfg.repository.path:
        raise InvalidRequestError("no repository: --repo PATH, or repository.path in --config")
    args.repo = cfg.repository.path
    if cfg.repository.passphrase and not args.passphrase_file:
        args.passphrase = cfg.repository.passphrase.value
    if cfg.repository.s3_config and not getattr(args, "s3_config", None):
        args.s3_config = cfg.repository.s3_config
    if cfg.repository.cache_dir and not getattr(args, "cache_dir", None):
        args.cache_dir = Path(cfg.repository.cache_dir) / "cli"  # beside the services' own


def open_repo(args: argparse.Namespace) -> Any:
    from repository.repository import Repository

    # one place for every command: a directory, or s3://BUCKET/PREFIX with --s3-config
    return Repository.open(
        str(args.repo),
        _repo_passphrase(args),
        s3_config=getattr(args, "s3_config", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- commands ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> CommandResult:
    from repository.repository import Repository

    if args.packs and args.chunk_files:
        raise InvalidRequestError("--packs and --chunk-files: choose one")
    passphrase = None
    if args.encrypt:
        passphrase = _passphrase(args, confirm=True)
        if not passphrase:
            raise RepositoryError(
                f"--encrypt needs a passphrase: --passphrase-file, ${PASSPHRASE_ENV} or a terminal"
            )
    lock = _lock_policy(args)
    repo = Repository.init(
        str(args.path),
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        passphrase=passphrase,
        packs=not args.chunk_files,
        pack_size=args.pack_size,
        s3_config=args.s3_config,
        cache_dir=args.cache_dir,
        object_lock=lock,
    )
    enc = "encrypted (AES-256-GCM)" if repo.encrypted else "not encrypted"
    if lock is not None:
        enc += f", Object Lock {lock.mode} {lock.period // 86400} days"
    return CommandResult(
        0,
        text=f"created repository {args.path}: chunk size {_human(repo.chunk_size)}, "
        f"zstd level {repo.compression_level}, {enc}, "
        + (f"pack files of {_human(args.pack_size)}" if repo.packed else "a file per chunk"),
        result={
            "path": str(args.path),
            "chunk_size": repo.chunk_size,
            "compression_level": repo.compression_level,
            "encrypted": repo.encrypted,
            "packs": repo.packed,
            "version": repo.config["version"],
            "object_lock": lock.as_config() if lock is not None else None,
        },
    )


def _lock_policy(args: argparse.Namespace) -> LockPolicy | None:
    """The LockPolicy of --object-lock and --object-lock-days, or None."""
    if args.object_lock is None:
        if args.object_lock_days is not None:
            raise InvalidRequestError("--object-lock-days needs --object-lock MODE")
        return None
    days = args.object_lock_days if args.object_lock_days is not None else 30
    if days < 1:
        raise InvalidRequestError(f"--object-lock-days {days}: at least 1")
    from repository.s3_object_lock import LockPolicy

    return LockPolicy(args.object_lock, days * 86400)


def cmd_import(args: argparse.Namespace) -> CommandResult:
    from repository.import_disk import import_disk

    repo = open_repo(args)
    r = import_disk(repo, args.vm, args.disk, args.file)
    kind = f"incremental on {r.base_point_id}" if r.base_point_id else "full"
    return CommandResult(
        0,
        text=f"point {r.point_id} ({kind}): {_human(r.capacity)} in {r.chunks} chunks, "
        f"{r.zero_chunks} zero, {r.changed_chunks} changed, {r.new_chunks} new, "
        f"{r.known_chunks} already stored, {_human(r.bytes_stored)} written in {r.seconds:.2f} s",
        result=dataclasses.asdict(r),
    )


def cmd_upgrade(args: argparse.Namespace) -> CommandResult:
    from repository import repo_config
    from repository.upgrade import upgrade
    from repository.upgrade_packs import upgrade_to_packs

    # each file upgraded is a line: printed as it goes, unless stdout is the JSON document
    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    passphrase = _repo_passphrase(args)
    r = upgrade(args.repo, passphrase, progress=say)
    result: dict[str, object] = dataclasses.asdict(r)
    text = (
        f"repository {args.repo} is version 2 (was {r.from_version}): {r.points} points, "
        f"{r.maps_upgraded} maps upgraded now, {r.maps_already} by an earlier run"
    )
    if r.from_version == repo_config.PACKS_VERSION or args.to == repo_config.PACKS_VERSION:
        p = upgrade_to_packs(
            args.repo,
            passphrase,
            pack_size=args.pack_size,
            note=say,
            progress=args.progress.task("chunk files packed"),
        )
        result["packs"] = dataclasses.asdict(p)
        text = (
            f"repository {args.repo} is version 3 (was {r.from_version}): "
            f"{p.chunks_packed} chunk files packed now ({_human(p.bytes_packed)} in "
            f"{p.packs_written} packs), {p.chunks_already} by an earlier run, "
            f"{len(p.damaged)} damaged ones quarantined"
        )
        if not p.finished:
            why = f"chunks/ is not empty yet ({'; '.join(p.left)}): run the upgrade again"
            return CommandResult(0, text=text, result=result).found(1, "repository", [why])
    return CommandResult(0, text=text, result=result)


def cmd_id_key(args: argparse.Namespace) -> CommandResult:
    """Print the chunk-id key of an encrypted repository (what proxies need as proxy.id_key)."""
    repo = open_repo(args)
    if repo.id_key is None:
        return CommandResult.failed(
            1,
            f"{args.repo} is not encrypted: chunk ids are plain BLAKE3, proxies need no id key",
            "refused",
        )
    return CommandResult(0, text=repo.id_key.hex(), result={"id_key": repo.id_key.hex()})


def s3_args(p: argparse.ArgumentParser) -> None:
    """--s3-config and --cache-dir: for a repository at s3://BUCKET/PREFIX."""
    p.add_argument(
        "--s3-config",
        type=Path,
        metavar="FILE",
        help="for an s3://BUCKET/PREFIX repository: endpoint, region, credentials"
        " (docs/object-storage.md)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="S3: local open packs and index cache (default"
        " $XDG_CACHE_HOME/vmbackup/<repository id>)",
    )


def _repo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repo", required=True, metavar="PATH", help="repository directory or s3://BUCKET/PREFIX"
    )
    s3_args(p)
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"passphrase of an encrypted repository (else ${PASSPHRASE_ENV} or a prompt)",
    )


def repo_or_config_args(p: argparse.ArgumentParser, config_help: str) -> None:
    """--repo, --passphrase-file and --config for a command that may take the repository
    from a config (``repo_of_config``); ``config_help`` says what else it takes from it."""
    p.add_argument(
        "--repo",
        metavar="PATH",
        help="repository directory or s3://BUCKET/PREFIX (default: repository.path of --config)",
    )
    s3_args(p)
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"passphrase of an encrypted repository (else ${PASSPHRASE_ENV}, "
        "repository.passphrase of --config, or a prompt)",
    )
    p.add_argument("--config", "-c", metavar="FILE", help=config_help)
    p.set_defaults(passphrase=None)


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout, errors included; no progress (docs/cli-json.md)",
    )


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, examples: str, **kw: Any
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples (``examples``: their lines)."""
    epilog = kw.pop("epilog", "")
    return sub.add_parser(
        name,
        help=help,
        epilog=f"{epilog}\n\nexamples:\n{examples}" if epilog else f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )


def register(sub: argparse._SubParsersAction) -> None:
    from repository.pack_store import DEFAULT_PACK_SIZE

    # Here, not at the top: these command modules import helpers from this one.
    from vmbackup import (
        copy_command,
        gc_command,
        lock_command,
        prune_command,
        repo_list_command,
        repo_repair_command,
        restore_command,
        verify_command,
    )

    repo = add_command(
        sub,
        "repo",
        "create, fill and list a repository",
        "  vmbackup repo init /backup/repo\n"
        "  vmbackup repo list --repo /backup/repo\n"
        "  vmbackup repo SUBCOMMAND --help\n",
    )
    rsub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND")
    rsub.required = True

    p = add_command(
        rsub,
        "init",
        "create an empty repository",
        "  vmbackup repo init /backup/repo\n"
        "  vmbackup repo init /backup/repo --chunk-size 4M --compression-level 6\n"
        "  vmbackup repo init /backup/repo --encrypt --passphrase-file /etc/vmbackup/pass\n"
        "  vmbackup repo init /backup/repo --pack-size 256M\n"
        "  vmbackup repo init /backup/repo --chunk-files    # format 2: a file per chunk\n"
        "  vmbackup repo init s3://backups/site-a --s3-config /etc/vmbackup/s3.toml\n"
        "  vmbackup repo init s3://locked/site-a --s3-config /etc/vmbackup/s3.toml \\\n"
        "      --object-lock COMPLIANCE --object-lock-days 30\n",
    )
    p.add_argument(
        "path",
        metavar="PATH",
        help="directory to create (must not exist or be empty), or s3://BUCKET/PREFIX",
    )
    s3_args(p)
    p.add_argument(
        "--chunk-size",
        type=parse_size,
        default=1 << 20,
        metavar="SIZE",
        help="fixed chunk size, a power of two from 256K to 8M (default 1M)",
    )
    p.add_argument(
        "--compression-level",
        type=int,
        default=3,
        metavar="N",
        help=(
            "zstd level for chunks: 1..22, or -1..-10 for zstd's fast levels (about lz4's "
            "speed and size), 0 = none; default 3"
        ),
    )
    p.add_argument("--encrypt", action="store_true", help="AES-256-GCM with a passphrase key file")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"with --encrypt: the passphrase (else ${PASSPHRASE_ENV} or a prompt)",
    )
    p.add_argument(
        "--packs",
        action="store_true",
        help="format version 3, chunks in pack files (the default; kept for scripts)",
    )
    p.add_argument(
        "--chunk-files",
        action="store_true",
        help="format version 2, a file per chunk: for hosts that must still run a release"
        " before version 3 against this repository (docs/repository-format.md)",
    )
    p.add_argument(
        "--pack-size",
        type=parse_size,
        default=DEFAULT_PACK_SIZE,
        metavar="SIZE",
        help=f"size at which a pack is sealed, 1M to 1G (default {_human(DEFAULT_PACK_SIZE)})",
    )
    p.add_argument(
        "--object-lock",
        choices=("COMPLIANCE", "GOVERNANCE"),
        default=None,
        metavar="MODE",
        help="S3 only, on a bucket created with Object Lock: write every pack, index and"
        " point with this retention mode, COMPLIANCE (nobody can shorten or delete) or"
        " GOVERNANCE (who may bypass it can) (docs/object-storage.md)",
    )
    p.add_argument(
        "--object-lock-days",
        type=int,
        default=None,
        metavar="N",
        help="with --object-lock: days each object stays locked after it is written or"
        " extended (default 30; gc extends what kept points use)",
    )
    json_arg(p)
    p.set_defaults(func=cmd_init)

    p = add_command(
        rsub,
        "import-disk",
        "back up a raw disk image as a new point, locally",
        "  vmbackup repo import-disk --repo /backup/repo --vm web1 --disk 2000 web1-disk0.img\n"
        "  vmbackup repo import-disk --repo /backup/repo --vm db1 --disk 2001 /dev/vg0/db --json\n",
    )
    _repo_arg(p)
    p.add_argument("--vm", required=True, metavar="NAME", help="VM name (its points group by it)")
    p.add_argument("--disk", required=True, type=int, metavar="KEY", help="disk key, e.g. 2000")
    p.add_argument("file", metavar="FILE", help="raw image file or block device")
    json_arg(p)
    p.set_defaults(func=cmd_import)

    p = add_command(
        rsub,
        "upgrade",
        "upgrade a repository in place to version 3 (pack files), or version 1 to 2",
        "  vmbackup repo upgrade --repo /backup/repo\n"
        "  vmbackup repo upgrade --repo /backup/repo --json    # run again after an interruption\n"
        "  vmbackup repo upgrade --repo /backup/repo --to 2    # version 1 to 2 only\n",
    )
    _repo_arg(p)
    p.add_argument(
        "--to",
        type=int,
        choices=(2, 3),
        default=3,
        help="version to reach: 3 (default: chunk files become pack files) or 2",
    )
    p.add_argument(
        "--pack-size",
        type=parse_size,
        default=DEFAULT_PACK_SIZE,
        metavar="SIZE",
        help="from version 2: size at which a pack is sealed"
        f" (default {_human(DEFAULT_PACK_SIZE)})",
    )
    json_arg(p)
    p.set_defaults(func=cmd_upgrade)

    p = add_command(
        rsub,
        "id-key",
        "print an encrypted repository's chunk-id key (hex), for proxy.id_key",
        "  vmbackup repo id-key --repo /backup/repo > /etc/vmbackup/id-key\n"
        "  kubectl create secret generic vmbackup-id-key \\\n"
        "      --from-literal=id-key=$(vmbackup repo id-key --repo /backup/repo)\n",
        description="Proxies hash chunks with this key (keyed BLAKE3) so that ids reveal "
        "nothing about content. Store the output as a secret and point proxy.id_key at it.",
    )
    _repo_arg(p)
    json_arg(p)
    p.set_defaults(func=cmd_id_key)

    p = add_command(
        rsub,
        "list",
        "restore points, sizes, dedup and compression ratios",
        "  vmbackup repo list --repo /backup/repo\n"
        "  vmbackup repo list --repo /backup/repo --vm-uuid 4210c3e1-0d3a-7c2e-9f1b-2a6c0e1d5b7a\n"
        "  vmbackup repo list --repo /backup/repo --json | jq '.result.points[].id'\n",
    )
    _repo_arg(p)
    p.add_argument("--vm-uuid", default=None, metavar="UUID", help="only this VM's points")
    json_arg(p)
    p.set_defaults(func=repo_list_command.cmd_list)

    repo_repair_command.register(rsub)
    lock_command.register(rsub)
    copy_command.register(rsub)
    restore_command.register(sub)
    verify_command.register(sub)
    prune_command.register(sub)
    gc_command.register(sub)
