"""Staged commit parts: a disk's commit entries sent in slices before the commit.

``staging/<request>/disk-<key>.part-<n>`` where ``<request>`` is the first 32 hex
digits of BLAKE3(request id) (request ids never become paths). A part file is
``b"VBPART02"``, the packed entries (common.messages.pack_entries), their tag (32
bytes: meta_auth.MetaAuth.part_tag, keyed in an encrypted repository and bound to the
request, disk and part number, so the entries cannot be changed on disk before the
commit turns them into an authenticated map); written atomically and durably. The
commit that names the parts reads them, then removes the request's directory; gc
removes directories of abandoned requests once they are older than its cutoff (gc.py).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import blake3

from common.messages import MessageError, iter_packed
from repository.errors import CorruptObjectError, InvalidRequestError
from repository.fsutil import fsync_dir, makedirs_durable, write_atomic
from repository.meta_auth import MetaAuth

MAGIC = b"VBPART02"
OLD_MAGIC = b"VBPART01"  # format 1: an unkeyed checksum, refused
_DIR = re.compile(r"[0-9a-f]{32}")


def request_dir_name(request_id: str) -> str:
    return blake3.blake3(request_id.encode()).hexdigest()[:32]


class CommitStaging:
    def __init__(self, root: Path, auth: MetaAuth) -> None:
        self.root = root
        self.auth = auth

    def _dir(self, request_id: str) -> Path:
        return self.root / request_dir_name(request_id)

    @staticmethod
    def _name(disk_key: int, part: int) -> str:
        return f"disk-{disk_key}.part-{part}"

    def stage(self, request_id: str, disk_key: int, part: int, packed: bytes) -> None:
        """Store one part durably (a repeated part replaces itself: same content)."""
        if part < 0:
            raise InvalidRequestError(f"commit part number {part} is negative")
        try:
            for _ in iter_packed(packed):
                pass
        except MessageError as exc:
            raise InvalidRequestError(f"commit part {part} of disk {disk_key}: {exc}") from None
        d = self._dir(request_id)
        makedirs_durable(d)
        digest = self.auth.part_tag(d.name, disk_key, part, packed)
        write_atomic(
            d / self._name(disk_key, part),
            [MAGIC, packed, digest],
            f"commit part {part} of disk {disk_key}",
        )

    def load(self, request_id: str, disk_key: int, parts: int) -> Iterator[tuple[int, bytes]]:
        """Every entry of parts 0..parts-1 in order; a missing or damaged part raises."""
        d = self._dir(request_id)
        for n in range(parts):
            path = d / self._name(disk_key, n)
            what = f"commit part {n} of {parts} of disk {disk_key}"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise InvalidRequestError(
                    f"{what} is not staged (request {request_id!r:.80})"
                ) from None
            what = f"{what} {path}"
            if data.startswith(OLD_MAGIC):
                raise CorruptObjectError(
                    what, "staged before the repository upgrade: the commit must be sent again"
                )
            if len(data) < len(MAGIC) + 32 or not data.startswith(MAGIC):
                raise CorruptObjectError(what, "not a commit part file")
            packed, digest = data[len(MAGIC) : -32], data[-32:]
            if not MetaAuth.same(self.auth.part_tag(d.name, disk_key, n, packed), digest):
                raise CorruptObjectError(
                    what,
                    "fails its authentication: tampered or written with another key"
                    if self.auth.keyed
                    else "checksum mismatch",
                )
            try:
                for start, count, ids in iter_packed(packed):
                    if ids is None:
                        for k in range(count):
                            yield start + k, b""
                    else:
                        for k in range(count):
                            yield start + k, ids[k * 32 : (k + 1) * 32]
            except MessageError as exc:
                raise CorruptObjectError(what, str(exc)) from None

    def remove(self, request_id: str) -> None:
        d = self._dir(request_id)
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            fsync_dir(self.root)

    def leftovers(self) -> Iterator[tuple[Path, float]]:
        """Request directories with the newest mtime of the directory and its parts."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if not _DIR.fullmatch(e.name):
                continue
            try:
                newest = e.stat().st_mtime
                for f in os.scandir(e.path):
                    newest = max(newest, f.stat().st_mtime)
            except FileNotFoundError:
                continue
            yield Path(e.path), newest
