"""`vmbackup repo upgrade` from version 2 (a file per chunk) to version 3 (pack files).

The config is switched to version 3 first, then the chunk files are appended, as stored
(no decoding: compression and encryption stay what they were), to packs; a chunk file is
deleted only once the pack holding it is sealed and its index file durable. Meanwhile the
repository is a version-3 one whose chunk store also looks in ``chunks/`` for what the
index lacks (pack_store.PackStore ``legacy``), so every command works on it half-way
through, and a rerun after a kill at any point continues: a chunk already indexed has its
file deleted and is not packed again, an open pack the kill left is sealed by the
recovery every writable open runs. ``chunks/`` and its directories go last, once empty.
docs/repository-format.md, "Upgrading from version 2", is the contract.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.progress import Progress, no_progress
from repository import keyfile, pack_format, repo_config
from repository.chunk_store import ChunkFile, ChunkStore
from repository.errors import LockedError, RepositoryError
from repository.fsutil import (
    TMP_PREFIX,
    fsync_dir,
    fsync_dirs,
    lock_file,
    makedirs_durable,
    unlink_quiet,
    write_atomic,
)
from repository.local_repo_open import PRIVATE_DIR
from repository.local_storage import LocalDirectoryStorage
from repository.meta_auth import MetaAuth, derive_meta_key
from repository.pack_compact import merge_index_files
from repository.pack_store import DEFAULT_PACK_SIZE, GC_LOCK, PackStore
from repository.pack_writer import OpenPack
from repository.repo_location import NOTHING_TO_UPGRADE, local_only
from repository.repository import Repository
from repository.running import RunningMarkers

STALE_MARKER = 3 * 86400.0  # as gc: a "running" marker this old is a crashed job
BATCH_BYTES = 16 * 1024 * 1024  # chunk files read, then appended with one fdatasync
MERGE_AT = 256  # index files: merged into one past this (and at the end)


@dataclass
class PackUpgradeReport:
    from_version: int = 0
    chunks_packed: int = 0  # appended to packs by this run
    chunks_already: int = 0  # packed by an earlier, interrupted run (only deleted now)
    bytes_packed: int = 0
    packs_written: int = 0
    dirs_removed: int = 0
    damaged: list[str] = field(default_factory=list)  # chunk files moved to quarantine/
    left: list[str] = field(default_factory=list)  # what kept chunks/ from being removed
    finished: bool = False  # chunks/ is gone: nothing is read from chunk files any more


def upgrade_to_packs(
    path: str | Path,
    passphrase: str | bytes | None = None,
    *,
    pack_size: int = DEFAULT_PACK_SIZE,
    note: Callable[[str], None] | None = None,
    progress: Progress = no_progress,
) -> PackUpgradeReport:
    """Convert the version-2 repository at ``path`` (or finish an interrupted conversion
    of a version-3 one); raises LockedError while gc runs or a backup is running."""
    path = local_only(path, "`repo upgrade`", NOTHING_TO_UPGRADE)
    say = note or (lambda _line: None)
    cfg_path = path / "config"
    config = repo_config.read(cfg_path)
    report = PackUpgradeReport(from_version=config["version"])
    if config["version"] not in repo_config.VERSIONS:
        raise RepositoryError(
            f"repository config {cfg_path}: version {config['version']}: not version 2 or 3"
        )
    if config["version"] == repo_config.PACKS_VERSION and not (path / "chunks").is_dir():
        report.finished = True
        return report  # nothing left to convert
    keys = _keys(path, config, passphrase)
    with lock_file(path / GC_LOCK, wait=False) as got:
        if not got:
            raise LockedError(f"gc or another upgrade is running on {path}: run it again later")
        _refuse_if_running(path)
        if config["version"] == repo_config.REPO_VERSION:
            _switch_config(path, config, keys, pack_size)
            say(f"repository config {cfg_path}: version 3 (pack size {pack_size} bytes)")
        repo = Repository(path, repo_config.read(cfg_path), keys)
        assert isinstance(repo.chunks, PackStore)
        repo.chunks.recover()  # packs a killed run left open: sealed and indexed
        try:
            _Conversion(repo, report, say, progress).run()
        finally:
            repo.close()
    return report


def _keys(
    path: Path, config: dict[str, Any], passphrase: str | bytes | None
) -> keyfile.RepoKeys | None:
    if config["encryption"] == "none":
        return None
    if passphrase is None:
        raise RepositoryError(f"{path} is encrypted: a passphrase is needed")
    pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    keys = keyfile.load(path / "keys" / "repokey", pw)
    repo_config.check_mac(
        config, MetaAuth(str(config["id"]), derive_meta_key(keys)), path / "config"
    )
    return keys


def _refuse_if_running(path: Path) -> None:
    """A backup running now may be a version-2 writer's: it would go on writing chunk
    files after the switch (still read, but never packed by this run)."""
    now = time.time()
    for job in RunningMarkers(LocalDirectoryStorage(path)).list():
        if job["started"] >= now - STALE_MARKER:
            raise LockedError(
                f"backup job {job['job_id']} is running on {path} (marker {job['marker']}): "
                "upgrade once it has finished"
            )


def _switch_config(
    path: Path, config: dict[str, Any], keys: keyfile.RepoKeys | None, pack_size: int
) -> None:
    doc = {k: v for k, v in config.items() if k not in ("checksum", "mac")}
    doc["version"] = repo_config.PACKS_VERSION
    doc["pack_size"] = pack_size
    try:
        repo_config.check_fields(doc, repo_config.PACKS_VERSION, sealed=False)
    except repo_config.ConfigFieldError as exc:
        raise RepositoryError(f"cannot upgrade {path}: {exc}") from None
    for sub in ("packs", "index"):  # before the config names them
        makedirs_durable(path / sub)
        os.chmod(path / sub, PRIVATE_DIR)
    auth = MetaAuth(str(doc["id"]), derive_meta_key(keys) if keys else None)
    cfg = repo_config.encode(doc, auth)
    write_atomic(path / "config", [cfg], f"repository config {path / 'config'}")


class _Conversion:
    """One pass over ``chunks/``: pack, seal, then delete; directories when empty."""

    def __init__(
        self,
        repo: Repository,
        report: PackUpgradeReport,
        say: Callable[[str], None],
        progress: Progress,
    ) -> None:
        store = repo.chunks
        assert isinstance(store, PackStore) and store.legacy is not None
        self.quarantine = repo.quarantine
        self.store = store
        self.legacy: ChunkStore = store.legacy
        self.report = report
        self.say = say
        self.progress = progress
        self.pack: OpenPack | None = None
        self.in_pack: list[Path] = []  # chunk files whose copies are in the open pack
        self.emptied: list[Path] = []  # directories whose every file is (being) packed
        self.done = 0
        self.total = 0

    def run(self) -> None:
        dirs = list(self.legacy.iter_dirs())
        self.total = sum(cf.size for cf in self.legacy.iter_chunks())
        self.progress(0, self.total)
        self.store.index.refresh()
        for d in dirs:
            self._convert_dir(d)
        self._seal()
        self._merge_index()
        self._remove_dirs()
        self.progress(self.done, max(self.total, self.done))

    def _convert_dir(self, d: Path) -> None:
        files = list(self.legacy.iter_chunks_in(d))
        batch: list[tuple[ChunkFile, bytes]] = []
        size = 0
        for cf in files:
            if self.store.index.lookup(cf.id):  # packed before a kill, or stored again
                unlink_quiet(cf.path)
                self.report.chunks_already += 1
                self._moved(cf.size)
                continue
            try:
                data = cf.path.read_bytes()
            except FileNotFoundError:
                continue
            why = self._damage(data)
            if why:
                self._quarantine(cf, why)
                continue
            batch.append((cf, data))
            size += len(data)
            if size >= BATCH_BYTES:
                self._append(batch)
                batch, size = [], 0
        self._append(batch)
        fsync_dir(d)  # the deletions of chunks found packed
        self.emptied.append(d)

    def _damage(self, data: bytes) -> str:
        lo, hi = self.legacy.size_range or (0, pack_format.MAX_PACK)
        if not lo <= len(data) <= hi:
            return f"{len(data)} bytes: no chunk has that size"
        if not pack_format.blob_intact(data):
            return "bad blob header or payload checksum"
        return ""

    def _quarantine(self, cf: ChunkFile, why: str) -> None:
        reason = f"found damaged by repo upgrade: {why}"
        if self.quarantine.put(self.legacy, cf.id, reason, ino=None):
            self.report.damaged.append(f"chunk {cf.id.hex()} ({why})")
            self.say(f"chunk file {cf.path}: {why}: moved to the quarantine")
        self._moved(cf.size)

    def _append(self, batch: list[tuple[ChunkFile, bytes]]) -> None:
        if not batch:
            return
        if self.pack is None:
            self.pack = OpenPack(self.store.root)
        self.pack.append([(cf.id, [data]) for cf, data in batch])
        for cf, data in batch:
            self.in_pack.append(cf.path)
            self.report.chunks_packed += 1
            self.report.bytes_packed += len(data)
            self._moved(cf.size)
        if self.pack.size >= self.store.pack_size:
            self._seal()

    def _moved(self, size: int) -> None:
        self.done += size
        self.progress(self.done, max(self.total, self.done))

    def _seal(self) -> None:
        """Seal the pack (its index file durable), then delete the files it holds."""
        if self.pack is not None:
            self.pack.seal()
            self.report.packs_written += 1
            self.pack = None
        for p in self.in_pack:
            unlink_quiet(p)
        fsync_dirs({p.parent for p in self.in_pack})
        self.in_pack = []
        self.store.index.refresh()
        if len(self.store.index.files()) > MERGE_AT:
            self._merge_index()

    def _merge_index(self) -> None:
        # under the gc lock this run holds (PackStore.compact would wait for it)
        self.store.index.refresh()
        if len(self.store.index.files()) > 1:
            merge_index_files(self.store.root, self.store.index.files())
            self.store.index.refresh()

    def _remove_dirs(self) -> None:
        root = self.legacy.root
        for d in self.emptied:
            for tmp in d.glob(f"{TMP_PREFIX}*"):  # of a version-2 writer killed mid-write
                unlink_quiet(tmp)
            try:
                os.rmdir(d)
                self.report.dirs_removed += 1
            except FileNotFoundError:
                continue
            except OSError:
                self.report.left.append(f"{d}: not empty ({', '.join(sorted(os.listdir(d))[:3])})")
        fsync_dir(root)
        try:
            os.rmdir(root)
        except OSError:
            left = sorted(os.listdir(root))
            if left and not self.report.left:
                self.report.left.append(f"{root}: {', '.join(left[:3])}")
            return
        fsync_dir(root.parent)
        self.report.finished = True
        self.say(f"{root} removed: every chunk is in a pack")
