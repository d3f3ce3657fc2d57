"""The repository's storage as a local directory: one file per object (storage.py).

An object ``a/b/c`` is the file ``<root>/a/b/c``; directories are made on demand
(durably: each new one is fsynced into its parent) and are not objects. A write is the
repository's usual temp + fsync + rename + directory fsync (fsutil.write_atomic); the
temps (``.tmp-...``, a name no object can have) are invisible to ``list`` and are what
``remove_unfinished`` removes after a crash. Locally a name cannot be both an object
and the prefix of other objects (a file is not a directory); no caller needs that.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from repository.errors import MissingObjectError, RepositoryError
from repository.fsutil import (
    TMP_PREFIX,
    create_atomic,
    fsync_dir,
    makedirs_durable,
    os_error,
    unlink_quiet,
    write_atomic,
)
from repository.storage import (
    MAX_NAME,
    Bytes,
    ObjectInfo,
    ObjectStat,
    check_name,
    check_prefix,
    valid_part,
)

# A path component that is absent (ENOENT) or not a directory on the way (ENOTDIR):
# either way there is no object of that name.
_ABSENT = (FileNotFoundError, NotADirectoryError)


def _failed(exc: OSError, verb: str, path: Path) -> RepositoryError:
    return RepositoryError(f"cannot {verb} {path}: {exc.strerror or exc}")


class LocalDirectoryStorage:
    """storage.Storage on the directory ``root`` (which must exist)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalDirectoryStorage({str(self.root)!r})"

    def path(self, name: str) -> Path:
        """The file of an object. Local only (not in storage.Storage): for what still
        works on files, the chunk store and the quarantine's moves of chunk files."""
        return self.root / check_name(name)

    def location(self, name: str) -> str:
        return str(self.path(name))

    def read(self, name: str) -> bytes:
        path = self.path(name)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except (*_ABSENT, IsADirectoryError):
            raise MissingObjectError(name, str(path)) from None
        except OSError as exc:
            raise _failed(exc, "read", path) from None

    def write(self, name: str, parts: Sequence[Bytes]) -> None:
        path = self.path(name)
        try:
            makedirs_durable(path.parent)
        except OSError as exc:  # ENOSPC: RepositoryFullError, as for the file itself
            raise os_error(exc, str(path)) from exc
        write_atomic(path, parts, str(path))

    def create(self, name: str, parts: Sequence[Bytes]) -> bool:
        path = self.path(name)
        try:
            makedirs_durable(path.parent)
        except OSError as exc:
            raise os_error(exc, str(path)) from exc
        return create_atomic(path, parts, str(path))

    def _stat(self, name: str) -> os.stat_result | None:
        path = self.path(name)
        try:
            st = os.stat(path)
        except _ABSENT:
            return None
        except OSError as exc:
            raise _failed(exc, "stat", path) from None
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, name: str) -> bool:
        return self._stat(name) is not None

    def stat(self, name: str) -> ObjectStat:
        st = self._stat(name)
        if st is None:
            raise MissingObjectError(name, self.location(name))
        return ObjectStat(st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        yield from self._walk(self.root / prefix if prefix else self.root, prefix)

    def _walk(self, d: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(d) as it:
                entries = [e for e in it if valid_part(e.name)]  # temps start with "."
        except _ABSENT:
            return
        except OSError as exc:
            raise _failed(exc, "list", d) from None
        # A directory sorts as its name + "/": the order of the full names (S3's), since
        # some allowed characters ("+", ",", "-", ".") sort before "/".
        keyed: list[tuple[str, os.DirEntry[str], bool]] = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            keyed.append((e.name + "/" if is_dir else e.name, e, is_dir))
        keyed.sort(key=lambda k: k[0])
        for _, e, is_dir in keyed:
            name = f"{prefix}/{e.name}" if prefix else e.name
            if len(name) > MAX_NAME:
                continue
            if is_dir:
                yield from self._walk(Path(e.path), name)
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except _ABSENT:
                continue  # deleted meanwhile
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(name, st.st_size, st.st_mtime)

    def children(self, prefix: str) -> Iterator[str]:
        d = self.root / check_prefix(prefix) if prefix else self.root
        try:
            with os.scandir(d) as it:
                names = sorted(e.name for e in it if valid_part(e.name) and e.is_dir())
        except _ABSENT:
            return
        except OSError as exc:
            raise _failed(exc, "list", d) from None
        yield from names  # a directory left empty by a crash: nothing is found in it

    def touch(self, name: str) -> bool:
        if self._stat(name) is None:
            return False
        path = self.path(name)
        try:
            os.utime(path)  # the file system's clock, like every other mtime here
        except _ABSENT:
            return False
        except OSError as exc:
            raise _failed(exc, "touch", path) from None
        return True

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            os.unlink(path)
        except (*_ABSENT, IsADirectoryError):
            return  # no such object (a directory is none)
        except OSError as exc:
            raise _failed(exc, "delete", path) from None
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            raise _failed(exc, "delete", path) from None

    def delete_all(self, prefix: str) -> None:
        d = self.path(prefix)
        if not d.is_dir():
            return
        shutil.rmtree(d, ignore_errors=True)
        try:
            fsync_dir(d.parent)
        except OSError as exc:
            raise _failed(exc, "delete", d) from None

    def remove_unfinished(self, prefix: str, older_than: float, *, dry_run: bool = False) -> int:
        return self._sweep(self.path(prefix), older_than, dry_run, top=True)[0]

    def _sweep(self, d: Path, older_than: float, dry_run: bool, *, top: bool) -> tuple[int, bool]:
        """(leftovers removed under ``d``, whether ``d`` itself went too). A directory
        goes when nothing is left in it and its mtime, taken before its temps went, is
        older than the cutoff (made by a write that crashed before its file existed)."""
        try:
            dir_mtime = os.stat(d).st_mtime
            with os.scandir(d) as it:
                entries = list(it)
        except _ABSENT:
            return 0, False
        except OSError as exc:
            raise _failed(exc, "list", d) from None
        removed = kept = 0
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    n, gone = self._sweep(Path(e.path), older_than, dry_run, top=False)
                    removed += n
                    kept += not gone
                elif e.name.startswith(TMP_PREFIX) and e.stat().st_mtime < older_than:
                    if not dry_run:
                        unlink_quiet(Path(e.path))
                    removed += 1
                else:
                    kept += 1
            except _ABSENT:
                continue
        if top or kept or dir_mtime >= older_than:
            return removed, False
        if not dry_run:
            try:
                os.rmdir(d)
            except OSError:  # a write put something in it meanwhile: it stays
                return removed, False
        return removed + 1, True
