"""Creating and opening a repository on S3 (Repository.init/open of an ``s3://`` location).

The same objects as a local repository's files, read and written through the storage:
``config`` and ``keys/repokey`` (docs/repository-format.md). Two inits of one location
never both win: the key file (encrypted) and then the config are made with ``create``
(If-None-Match: *); the loser of either stops with an error and removes only the key
file it made itself. Chunk files (format version 2) are refused: only packs go to S3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repository import keyfile, repo_config
from repository.errors import (
    InvalidRequestError,
    MissingObjectError,
    RepositoryError,
    RepositoryFormatError,
)
from repository.local_repo_open import passphrase_bytes
from repository.meta_auth import MetaAuth, derive_meta_key
from repository.repo_location import RepoLocation, default_cache_dir
from repository.s3_config import S3Location
from repository.s3_object_lock import (
    LockedS3Storage,
    LockPolicy,
    check_bucket_lock,
    check_bucket_unversioned,
)
from repository.s3_pack_store import S3PackStore
from repository.s3_repo_storage import S3RepoStorage

if TYPE_CHECKING:
    from repository.repository import Repository

CONFIG = "config"
KEYFILE = "keys/repokey"
PRIVATE_DIR = 0o700


def _cache(cache_dir: Path | None, repo_id: str, name: str = "") -> Path:
    path = cache_dir if cache_dir is not None else default_cache_dir(repo_id)
    if name:
        if "/" in name or name in (".", ".."):
            raise InvalidRequestError(f"cache name {name!r}: not a plain file name")
        path = path / name
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)  # the open packs hold chunks not yet uploaded
    return path


def s3_init(
    cls: type[Repository],
    loc: RepoLocation,
    chunk_size: int,
    compression_level: int,
    passphrase: str | bytes | None,
    kdf_n: int,
    pack_size: int,
    *,
    packs: bool,
    cache_dir: Path | None,
    object_lock: LockPolicy | None = None,
) -> Repository:
    assert loc.s3 is not None
    if not packs:
        raise InvalidRequestError(
            f"{loc.text}: a repository on S3 keeps chunks in packs: `repo init` without"
            " --chunk-files (chunk files, one object per chunk, are not supported on S3)"
        )
    try:
        config = repo_config.new(chunk_size, compression_level, passphrase is not None, pack_size)
    except repo_config.ConfigFieldError as exc:
        raise InvalidRequestError(str(exc)) from None
    if object_lock is not None:
        config[repo_config.OBJECT_LOCK] = object_lock.as_config()
    storage = repo_storage(loc.s3, config)
    storage.check_bucket()
    if object_lock is not None:
        check_bucket_lock(storage)  # before anything is written
    else:
        check_bucket_unversioned(storage)
    if next(iter(storage.list("")), None) is not None:
        raise RepositoryError(f"{loc.text} is not empty; not creating a repository")
    keys = None
    if passphrase is not None:
        keys, data = keyfile.new(passphrase_bytes(passphrase), n=kdf_n)
        if not storage.create(KEYFILE, [data]):
            raise RepositoryError(f"{loc.text}: another `repo init` is creating a repository there")
    auth = MetaAuth(config["id"], derive_meta_key(keys) if keys else None)
    if not storage.create(CONFIG, [repo_config.encode(config, auth)]):
        if keys is not None:
            storage.delete(KEYFILE)  # ours: the winner is unencrypted or lost the key race
        raise RepositoryError(f"{loc.text}: another `repo init` created a repository there")
    doc = repo_config.parse(storage.read(CONFIG), f"repository config {storage.location(CONFIG)}")
    return cls(_cache(cache_dir, doc["id"]), doc, keys, s3=storage, location=loc.text)


def repo_storage(s3: S3Location, config: dict[str, Any]) -> S3RepoStorage:
    """The storage for a repository of ``config``: with its Object Lock, if any."""
    policy = LockPolicy.of_config(config)
    return S3RepoStorage(s3) if policy is None else LockedS3Storage(s3, policy)


def read_config(storage: S3RepoStorage, text: str) -> dict[str, Any]:
    try:
        data = storage.read(CONFIG)
    except MissingObjectError:
        raise RepositoryFormatError(f"{text} is not a vmbackup repository (no config)") from None
    return repo_config.parse(data, f"repository config {storage.location(CONFIG)}")


def s3_open(
    cls: type[Repository],
    loc: RepoLocation,
    passphrase: str | bytes | None,
    *,
    read_only: bool,
    cache_dir: Path | None,
    cache_name: str = "",
) -> Repository:
    assert loc.s3 is not None
    config = read_config(S3RepoStorage(loc.s3), loc.text)
    storage = repo_storage(loc.s3, config)
    if config["version"] not in repo_config.VERSIONS:
        raise RepositoryFormatError(
            f"repository config {storage.location(CONFIG)}: format version"
            f" {config['version']}: not supported on S3 (docs/repository-format.md)"
        )
    keys = None
    if config["encryption"] == "aes-256-gcm":
        if passphrase is None:
            raise RepositoryError(f"{loc.text} is encrypted: a passphrase is needed")
        where = f"key file {storage.location(KEYFILE)}"
        try:
            raw = storage.read(KEYFILE)
        except MissingObjectError:
            raise RepositoryFormatError(f"{where}: missing") from None
        keys = keyfile.parse(raw, where, passphrase_bytes(passphrase))
        repo_config.check_mac(
            config, MetaAuth(config["id"], derive_meta_key(keys)), storage.location(CONFIG)
        )
    cache = _cache(cache_dir, config["id"], cache_name)
    repo = cls(cache, config, keys, s3=storage, location=loc.text)
    if not read_only and isinstance(repo.chunks, S3PackStore):
        repo.chunks.recover()  # open packs a killed writer left in this cache: uploaded
    return repo
