"""`vmbackup repo upgrade`: a version-1 repository becomes version 2 in place.

Version 2 changes two kinds of files (docs/repository-format.md): every map gets a
tag (keyed in an encrypted repository) instead of its unkeyed checksum, and the
config gets ``checksum`` (and ``mac``). Chunks, point metadata and the key file are
unchanged. Each map is checked against its version-1 checksum and its point's
metadata, then replaced atomically (temp, fsync, rename, directory fsync); the
config is rewritten last, so until then the repository stays version 1 and a rerun
after a crash or kill continues where it stopped (maps already tagged are checked
and kept). Once the config says 2 nothing is converted any more: in a version-2
repository a version-1 map is damage, never something to vouch for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repository import keyfile, repo_config
from repository.errors import CorruptObjectError, RepositoryError
from repository.fixed_index import V1, VERSION, DiskMap
from repository.fsutil import TMP_PREFIX, write_atomic
from repository.gc import gc_lock
from repository.local_repo_open import PRIVATE_DIR, TOP_DIRS
from repository.local_storage import LocalDirectoryStorage
from repository.meta_auth import MetaAuth, derive_meta_key
from repository.repo_location import NOTHING_TO_UPGRADE, local_only
from repository.repository import Repository


@dataclass
class UpgradeReport:
    from_version: int = 0
    points: int = 0
    maps_upgraded: int = 0
    maps_already: int = 0  # tagged by an earlier, interrupted run


def upgrade(
    path: str | Path,
    passphrase: str | bytes | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> UpgradeReport:
    """Upgrade the repository at ``path``; raises RepositoryError naming the first file
    that fails a check (nothing after it is changed; fix it and run again)."""
    path = local_only(path, "`repo upgrade`", NOTHING_TO_UPGRADE)
    cfg_path = path / "config"
    config = repo_config.read(cfg_path)
    report = UpgradeReport(from_version=config["version"])
    keys = None
    if config["encryption"] != "none":
        if passphrase is None:
            raise RepositoryError(f"{path} is encrypted: a passphrase is needed")
        pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
        keys = keyfile.load(path / "keys" / "repokey", pw)
    auth = MetaAuth(config["id"], derive_meta_key(keys) if keys else None)
    if config["version"] in repo_config.VERSIONS:
        if keys:
            repo_config.check_mac(config, auth, cfg_path)
        return report  # done before (the config is written last)
    repo = Repository(path, config, keys)  # v1 fields are v2's; only maps and seals differ
    with gc_lock(repo):  # no gc marks or sweeps meanwhile (nor a second upgrade)
        _upgrade_maps(repo, report, progress)
        # the key file and directories get the modes a version-2 init gives them
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path / "keys" / "repokey", keyfile.KEY_MODE)
        for d in (path, *(path / s for s in TOP_DIRS)):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(d, PRIVATE_DIR)
        cfg = repo_config.encode(config, auth)
        write_atomic(cfg_path, [cfg], f"repository config {cfg_path}")
    if progress:
        progress(f"upgraded repository config {cfg_path}: version {repo_config.REPO_VERSION}")
    return report


def _upgrade_maps(
    repo: Repository, report: UpgradeReport, progress: Callable[[str], None] | None
) -> None:
    ps = repo.point_store
    for ref in ps.point_refs():
        assert isinstance(repo.storage, LocalDirectoryStorage)  # version 1 was only local
        pdir = repo.storage.path(ref.prefix)
        _remove_temps(pdir)  # of a run killed mid-write: never renamed, so never read
        point = ps.load(ref)
        report.points += 1
        for disk in point.disks:
            mpath = pdir / disk.map_name
            name = f"map of disk {disk.key} {mpath}"
            try:
                data = mpath.read_bytes()
            except FileNotFoundError:
                raise CorruptObjectError(name, "map file is missing") from None
            if DiskMap.version_of(data) == VERSION:
                ps.load_map(ref, disk)  # tagged by an interrupted run: must verify
                report.maps_already += 1
                continue
            if DiskMap.version_of(data) != V1:
                raise CorruptObjectError(name, "not a version-1 or version-2 map")
            dmap = DiskMap.decode_v1(data, name)
            if dmap.capacity != disk.capacity or dmap.chunk_size != repo.chunk_size:
                raise CorruptObjectError(
                    name,
                    f"capacity {dmap.capacity}, chunk size {dmap.chunk_size}; metadata and "
                    f"config say {disk.capacity}, {repo.chunk_size}",
                )
            tag = ps.map_tagger(point.vm_uuid, point.id, disk.key)
            write_atomic(mpath, dmap.encode(tag), name)
            report.maps_upgraded += 1
            if progress:
                progress(f"upgraded {name}")


def _remove_temps(pdir: Path) -> None:
    for p in pdir.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
