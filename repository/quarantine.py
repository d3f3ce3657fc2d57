"""The quarantine area: chunk files verify found damaged, moved aside with a record.

``quarantine/<first 3 hex digits>/<64 hex digits>`` is the damaged blob exactly as it
was found, ``<64 hex digits>.json`` beside it says why and when (see
docs/repository-format.md). A quarantined chunk is absent from ``chunks/``, so every
have-query, duplicate store and commit treats it as missing: the next backup that meets
the same data stores a good copy at the normal place, and every older point that names
the id (content-addressed) restores again. gc never looks in here; ``repo repair``
drops a copy once its chunk is healed.

Records, listing, reading and dropping go through the repository's storage (storage.py);
moving a chunk file here and back is a rename and a link of local files, beside the chunk
store that is not on the storage interface yet, hence the local storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repository.chunk_store import FANOUT, ChunkStore, check_id
from repository.errors import MissingChunkError, MissingObjectError, RepositoryError
from repository.fsutil import fsync_dir, fsync_dirs, makedirs_durable
from repository.local_storage import LocalDirectoryStorage
from repository.storage import Storage

PREFIX = "quarantine"  # created on first use: older repositories have none
RECORD_SUFFIX = ".json"
_NAME = re.compile(r"([0-9a-f]{64})(\.json)?")
_HEX_DIR = re.compile(r"[0-9a-f]{3}")


@dataclass(frozen=True, slots=True)
class QuarantinedChunk:
    id: bytes
    copy: str  # where the damaged copy is, a path or URL (gone if only the record is left)
    reason: str
    quarantined: float  # when (0.0 when the record is unreadable or missing)


class Quarantine:
    def __init__(self, storage: LocalDirectoryStorage | Storage) -> None:
        self.storage = storage  # records work on any storage; moving chunk files is local

    @staticmethod
    def _name(chunk_id: bytes) -> str:
        h = check_id(chunk_id).hex()
        return f"{PREFIX}/{h[:FANOUT]}/{h}"

    @classmethod
    def _record(cls, chunk_id: bytes) -> str:
        return cls._name(chunk_id) + RECORD_SUFFIX

    def path_of(self, chunk_id: bytes) -> Path:
        """The file of the quarantined copy (a local file: see the module's text)."""
        if not isinstance(self.storage, LocalDirectoryStorage):
            raise RepositoryError("the quarantine of a repository on S3 has no local files")
        return self.storage.path(self._name(chunk_id))

    def put(self, store: ChunkStore, chunk_id: bytes, reason: str, *, ino: int | None) -> bool:
        """Move the chunk file at its normal place here (rename, both directories fsynced)
        and write its record; False if it was gone or not the file that was checked.

        ``ino`` is the inode that was read and found bad: a writer that replaced the file
        since (a store replaces an empty or truncated file) made a copy nobody checked, and
        it goes back. A copy quarantined earlier under the same id is replaced by this one.
        """
        src, dst = store.path_of(chunk_id), self.path_of(chunk_id)
        makedirs_durable(dst.parent)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        if ino is not None and os.stat(dst).st_ino != ino:
            with contextlib.suppress(FileExistsError):
                os.link(dst, src)  # never over a copy stored meanwhile
            os.unlink(dst)
            fsync_dirs({src.parent, dst.parent})
            return False
        fsync_dirs({src.parent, dst.parent})
        doc = {
            "id": chunk_id.hex(),
            "reason": reason,
            "quarantined": time.time(),
            "size": self.storage.stat(self._name(chunk_id)).size,
        }
        self.storage.write(self._record(chunk_id), [json.dumps(doc, indent=2).encode() + b"\n"])
        return True

    def put_copy(self, chunk_id: bytes, data: bytes, reason: str, where: dict[str, Any]) -> None:
        """A damaged blob of a pack (copied: the pack stays as it is), with its record;
        ``where`` (pack, offset, length) goes into the record."""
        self.storage.write(self._name(chunk_id), [data])
        doc = {
            "id": chunk_id.hex(),
            "reason": reason,
            "quarantined": time.time(),
            "size": len(data),
            **where,
        }
        self.storage.write(self._record(chunk_id), [json.dumps(doc, indent=2).encode() + b"\n"])

    def record(self, chunk_id: bytes) -> dict[str, Any] | None:
        return self._read_record(chunk_id)

    def get(self, chunk_id: bytes) -> QuarantinedChunk | None:
        rec = self._read_record(chunk_id)
        if rec is None and not self.storage.exists(self._name(chunk_id)):
            return None
        return _entry(chunk_id, self.storage.location(self._name(chunk_id)), rec or {})

    def read_copy(self, chunk_id: bytes) -> bytes:
        """The quarantined copy as it was found; MissingObjectError when there is none."""
        return self.storage.read(self._name(chunk_id))

    def __iter__(self) -> Iterator[QuarantinedChunk]:
        """Every quarantined id (a blob, a record or both), in order of id."""
        last = ""
        for obj in self.storage.list(PREFIX):
            parts = obj.name.split("/")
            if len(parts) != 3 or not _HEX_DIR.fullmatch(parts[1]):
                continue
            m = _NAME.fullmatch(parts[2])
            # a copy and its record are neighbours in the listing (one name extends the
            # other), so an id seen twice is seen twice in a row
            if m is None or m.group(1) == last:
                continue
            last = m.group(1)
            cid = bytes.fromhex(last)
            yield _entry(cid, self.storage.location(self._name(cid)), self._read_record(cid) or {})

    def raise_if_quarantined(self, chunk_id: bytes) -> None:
        """For a chunk found missing: say so precisely when it is quarantined."""
        q = self.get(chunk_id)
        if q is not None:
            raise MissingChunkError(
                f"chunk {chunk_id.hex()} is quarantined as damaged ({q.reason}); a backup "
                "of the same data heals it, `vmbackup repo repair` lists what still needs it"
            )

    def drop(self, chunk_id: bytes) -> None:
        """Forget a quarantined copy (its chunk is healed): blob, then record."""
        self.storage.delete(self._name(chunk_id))
        self.storage.delete(self._record(chunk_id))

    def put_back(self, store: ChunkStore, chunk_id: bytes) -> None:
        """The quarantined copy checked good again (a passing read error): link it to its
        normal place unless a copy is already there, then drop it from here."""
        src, dst = self.path_of(chunk_id), store.path_of(chunk_id)
        with contextlib.suppress(FileExistsError):
            os.link(src, dst)
        fsync_dir(dst.parent)
        self.drop(chunk_id)

    def _read_record(self, chunk_id: bytes) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.storage.read(self._record(chunk_id)))
        except MissingObjectError:
            return None
        except (RepositoryError, ValueError):
            return {"reason": "unreadable quarantine record"}
        return doc if isinstance(doc, dict) else {"reason": "unreadable quarantine record"}


def _entry(chunk_id: bytes, copy: str, rec: dict[str, Any]) -> QuarantinedChunk:
    when = rec.get("quarantined")
    return QuarantinedChunk(
        chunk_id,
        copy,
        str(rec.get("reason", "no record (quarantined by a process that stopped)")),
        float(when) if isinstance(when, int | float) else 0.0,
    )
