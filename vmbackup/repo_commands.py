"""Repository maintenance commands: `vmbackup repo init|import-disk|list|repair|upgrade`,
`restore` (restore_command.py), `verify`, `prune` (prune_command.py) and `gc`. They work
on the repository library directly (no service runs); exit status 0 only on success."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repository.errors import InvalidRequestError, RepositoryError

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
        encrypted = (
            json.loads((Path(args.repo) / "config").read_bytes()).get("encryption") != "none"
        )
    except (OSError, ValueError, AttributeError):
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


def open_repo(args: argparse.Namespace) -> Any:
    from repository.repository import Repository

    return Repository.open(Path(args.repo), _repo_passphrase(args))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- commands ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from repository.repository import Repository

    passphrase = None
    if args.encrypt:
        passphrase = _passphrase(args, confirm=True)
        if not passphrase:
            raise RepositoryError(
                f"--encrypt needs a passphrase: --passphrase-file, ${PASSPHRASE_ENV} or a terminal"
            )
    repo = Repository.init(
        args.path,
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        passphrase=passphrase,
    )
    enc = "encrypted (AES-256-GCM)" if repo.encrypted else "not encrypted"
    print(
        f"created repository {args.path}: chunk size {_human(repo.chunk_size)}, "
        f"zstd level {repo.compression_level}, {enc}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from repository.import_disk import import_disk

    repo = open_repo(args)
    r = import_disk(repo, args.vm, args.disk, args.file)
    kind = f"incremental on {r.base_point_id}" if r.base_point_id else "full"
    print(
        f"point {r.point_id} ({kind}): {_human(r.capacity)} in {r.chunks} chunks, "
        f"{r.zero_chunks} zero, {r.changed_chunks} changed, {r.new_chunks} new, "
        f"{r.known_chunks} already stored, {_human(r.bytes_stored)} written in {r.seconds:.2f} s"
    )
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from repository.upgrade import upgrade

    r = upgrade(args.repo, _repo_passphrase(args), progress=lambda line: print(line, flush=True))
    print(
        f"repository {args.repo} is version 2 (was {r.from_version}): {r.points} points, "
        f"{r.maps_upgraded} maps upgraded now, {r.maps_already} by an earlier run"
    )
    return 0


def cmd_id_key(args: argparse.Namespace) -> int:
    """Print the chunk-id key of an encrypted repository (what proxies need as proxy.id_key)."""
    repo = open_repo(args)
    if repo.id_key is None:
        print(
            f"vmbackup: {args.repo} is not encrypted: chunk ids are plain BLAKE3, "
            "proxies need no id key",
            file=sys.stderr,
        )
        return 1
    print(repo.id_key.hex())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from repository.verify import verify

    repo = open_repo(args)
    report = verify(repo, sample=args.sample)
    for p in report.problems:
        print(p)
    for h in report.quarantined:
        print(f"quarantined: chunk {h}")
    what = "sampled" if args.sample is not None else "checked"
    print(
        f"{report.points} points, {report.maps} maps, {report.references} references; "
        f"{report.chunks_checked} of {report.chunks_total} chunks {what}: "
        f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}; "
        f"{len(report.quarantined)} chunk(s) quarantined"
    )
    return 0 if report.ok else 1


def cmd_gc(args: argparse.Namespace) -> int:
    from repository.gc import gc

    repo = open_repo(args)
    r = gc(repo, grace=args.grace, dry_run=args.dry_run)
    for m in r.stale_markers:
        print(f"warning: ignoring stale running-backup marker {m}")
    for m in r.missing:
        print(f"missing chunk: {m}")
    verb = "would free" if r.dry_run else "freed"
    print(
        f"{r.points} points mark {r.referenced} chunks; {r.chunks_removed} of {r.chunks_seen} "
        f"chunks removed, {verb} {_human(r.bytes_freed)} ({r.bytes_freed} bytes); "
        f"{r.chunks_kept_young} unreferenced kept (younger than cutoff {_ts(r.cutoff)})"
    )
    return 1 if r.missing else 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except RepositoryError as exc:
            print(f"vmbackup: error: {exc}", file=sys.stderr)
            if getattr(args, "json", False):  # a reader of stdout gets it too: {"error": ...}
                json.dump({"error": str(exc)}, sys.stdout)
                print()
            return 1
        except BrokenPipeError:
            return 1

    return run


def _repo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, metavar="PATH", help="repository directory")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"passphrase of an encrypted repository (else ${PASSPHRASE_ENV} or a prompt)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    # Here, not at the top: these command modules import helpers from this one.
    from vmbackup import prune_command, repo_list_command, repo_repair_command, restore_command

    repo = sub.add_parser("repo", help="create, fill and list a repository")
    rsub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND")
    rsub.required = True

    p = rsub.add_parser("init", help="create an empty repository")
    p.add_argument("path", metavar="PATH")
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
        help="zstd level for chunks (0 = none; default 3)",
    )
    p.add_argument("--encrypt", action="store_true", help="AES-256-GCM with a passphrase key file")
    p.add_argument("--passphrase-file", metavar="FILE")
    p.set_defaults(func=_guard(cmd_init))

    p = rsub.add_parser("import-disk", help="back up a raw disk image as a new point, locally")
    _repo_arg(p)
    p.add_argument("--vm", required=True, metavar="NAME", help="VM name (its points group by it)")
    p.add_argument("--disk", required=True, type=int, metavar="KEY", help="disk key, e.g. 2000")
    p.add_argument("file", metavar="FILE", help="raw image file or block device")
    p.set_defaults(func=_guard(cmd_import))

    p = rsub.add_parser("upgrade", help="upgrade a version-1 repository to version 2, in place")
    _repo_arg(p)
    p.set_defaults(func=_guard(cmd_upgrade))

    p = rsub.add_parser(
        "id-key",
        help="print an encrypted repository's chunk-id key (hex), for proxy.id_key",
        description="Proxies hash chunks with this key (keyed BLAKE3) so that ids reveal "
        "nothing about content. Store the output as a secret and point proxy.id_key at it.",
    )
    _repo_arg(p)
    p.set_defaults(func=_guard(cmd_id_key))

    p = rsub.add_parser("list", help="restore points, sizes, dedup and compression ratios")
    _repo_arg(p)
    p.add_argument("--vm-uuid", default=None, help="only this VM's points")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(repo_list_command.cmd_list))

    repo_repair_command.register(rsub)

    restore_command.register(sub)

    p = sub.add_parser("verify", help="check maps and re-hash chunks; non-zero exit on damage")
    _repo_arg(p)
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="re-hash N random chunks instead of all",
    )
    p.set_defaults(func=_guard(cmd_verify))

    prune_command.register(sub)

    p = sub.add_parser("gc", help="remove chunks no point uses (mark and sweep)")
    _repo_arg(p)
    p.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="never remove chunks touched less than this long ago (default 300)",
    )
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_guard(cmd_gc))
