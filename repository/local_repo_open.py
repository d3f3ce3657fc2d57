"""A repository in a local directory: creating one and opening one (s3_repo_open.py does
the same for a bucket; Repository.init/open choose by the location)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from repository import keyfile, repo_config
from repository.chunk_store import ChunkStore
from repository.errors import InvalidRequestError, RepositoryError, RepositoryFormatError
from repository.fsutil import makedirs_durable, write_atomic
from repository.meta_auth import MetaAuth, derive_meta_key
from repository.pack_store import PackStore

if TYPE_CHECKING:
    from repository.repository import Repository

PRIVATE_DIR = 0o700
TOP_DIRS = ("chunks", "points", "running", "locks", "keys")
PACK_DIRS = ("packs", "index", "points", "running", "locks", "keys")  # version 3: no chunks/


def passphrase_bytes(passphrase: str | bytes) -> bytes:
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


def unconverted_chunks(path: Path, sizes: tuple[int, int]) -> ChunkStore | None:
    """The chunk files a version-3 repository still has while `repo upgrade` converts it
    from version 2 (``chunks/`` exists until the last of them is in a pack)."""
    return ChunkStore(path / "chunks", sizes) if (path / "chunks").is_dir() else None


def local_init(
    cls: type[Repository],
    path: Path,
    chunk_size: int,
    compression_level: int,
    passphrase: str | bytes | None,
    kdf_n: int,
    pack_size: int,
    *,
    packs: bool,
) -> Repository:
    try:
        config = repo_config.new(
            chunk_size, compression_level, passphrase is not None, pack_size if packs else None
        )
    except repo_config.ConfigFieldError as exc:
        raise InvalidRequestError(str(exc)) from None
    if path.exists() and any(path.iterdir()):
        raise RepositoryError(f"{path} exists and is not empty; not creating a repository")
    makedirs_durable(path)
    os.chmod(path, PRIVATE_DIR)  # chunks, maps and key file are for the backup roles only
    for sub in PACK_DIRS if packs else TOP_DIRS:
        makedirs_durable(path / sub)
        os.chmod(path / sub, PRIVATE_DIR)
    if not packs:
        ChunkStore(path / "chunks").create_dirs()
    keys = None
    if passphrase is not None:
        keys = keyfile.create(path / "keys" / "repokey", passphrase_bytes(passphrase), n=kdf_n)
    auth = MetaAuth(config["id"], derive_meta_key(keys) if keys else None)
    # config last: a crash during init leaves a directory that does not open as a repo
    write_atomic(path / "config", [repo_config.encode(config, auth)], "config")
    return cls(path, repo_config.read(path / "config"), keys)


def local_open(
    cls: type[Repository], path: Path, passphrase: str | bytes | None, *, read_only: bool
) -> Repository:
    cfg_path = path / "config"
    config = repo_config.read(cfg_path)
    if config["version"] not in repo_config.VERSIONS:
        raise RepositoryFormatError(
            f"repository config {cfg_path}: format version {config['version']}: "
            f"run `vmbackup repo upgrade --repo {path}` first (docs/repository-format.md)"
        )
    keys = None
    if config["encryption"] == "aes-256-gcm":
        if passphrase is None:
            raise RepositoryError(f"{path} is encrypted: a passphrase is needed")
        keys = keyfile.load(path / "keys" / "repokey", passphrase_bytes(passphrase))
        repo_config.check_mac(config, MetaAuth(config["id"], derive_meta_key(keys)), cfg_path)
    repo = cls(path, config, keys)
    if not read_only and isinstance(repo.chunks, PackStore) and os.access(path / "packs", os.W_OK):
        # packs of writers killed earlier: sealed and indexed before anyone relies on
        # their log (not on a read-only mount: the coordinator only reads)
        repo.chunks.recover()
    return repo
