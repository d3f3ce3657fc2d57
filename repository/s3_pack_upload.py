"""Packs of a repository on S3: written in the local cache, uploaded as they fill.

An open pack is written in the cache directory exactly as in a local repository
(pack_writer.OpenPack: ``packs/open/<32 hex>.pack`` beside its flock()ed log). With the
S3 config's ``stream_part_mib`` (s3_pack_stream.py), its durable bytes go up as the
parts of a multipart upload while it fills. Sealing appends the trailer and fdatasyncs,
then uploads, in this order:

1. the pack, as the object ``packs/<2 hex>/<32 hex>``: the streamed upload's last
   part(s) and its completion; else (nothing streamed, or a part failed) the file
   whole, one PUT, multipart above the S3 config's part size;
2. its index (pack_index_file.py bytes for this one pack), as ``index/<32 hex>``;
3. the same index file into the cache (``index/<32 hex>.idx``): a local index file
   therefore always names an uploaded pack;
4. the open pack and its log are removed from the cache.

A crash (or a failed upload) at any step leaves the open pack and its log in the
cache; :func:`recover` (run on open) seals and uploads every one whose writer is gone
(its log unlocked). Every step is idempotent (same bytes under the same names).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from repository import pack_format, pack_index_file
from repository.errors import RepositoryError
from repository.fsutil import os_error, unlink_quiet, write_atomic
from repository.pack_format import Entry
from repository.pack_index_file import Location
from repository.pack_writer import Blob, OpenPack, _pwritev_all, abandoned
from repository.s3_pack_stream import PackStream
from repository.s3_storage import S3Storage
from repository.storage import Storage

PACKS = "packs"
INDEX = "index"


def pack_object(pack: bytes) -> str:
    h = pack.hex()
    return f"{PACKS}/{h[:2]}/{h}"


def index_object(pack: bytes) -> str:
    return f"{INDEX}/{pack.hex()}"


def cached_index(root: Path, pack: bytes) -> Path:
    return root / INDEX / (pack.hex() + pack_index_file.SUFFIX)


def upload(
    storage: S3Storage, root: Path, pack: bytes, path: Path, entries: Sequence[Entry]
) -> None:
    """Steps 1-3 of the module docstring for a sealed pack file at ``path``."""
    upload_whole(storage, pack, path)
    upload_index(storage, root, pack, entries)


def upload_whole(storage: S3Storage, pack: bytes, path: Path) -> None:
    """The sealed pack file at ``path`` as its object (step 1, without streaming)."""
    storage.write_file(pack_object(pack), path)


def upload_index(storage: Storage, root: Path, pack: bytes, entries: Sequence[Entry]) -> None:
    """Steps 2-3: the pack's index object, then the cache's index file."""
    idx = pack_index_file.encode([(e.id, Location(pack, e.offset, e.length)) for e in entries])
    storage.write(index_object(pack), idx)
    write_atomic(cached_index(root, pack), idx, f"index file {pack.hex()}")


class UploadingPack(OpenPack):
    """An open pack whose seal uploads it (and drops the local copy)."""

    storage: S3Storage
    stream: PackStream | None = None  # its parts sent as it fills (stream_to)
    _trailed = False
    drop_written = False  # read again at seal (or by a part), for the upload

    def stream_to(self, storage: S3Storage, part_size: int) -> None:
        """Send the pack's durable bytes to its object as parts while it fills."""
        self.stream = PackStream(storage, pack_object(self.id), self._fd, part_size)

    def append(self, blobs: Sequence[Blob]) -> list[Location]:
        locations = super().append(blobs)
        if self.stream is not None:
            self.stream.offer(self.size)  # fdatasync'd: a part may go (never waits)
        return locations

    def seal(self) -> None:
        if not self.entries:
            self.abandon()
            return
        if not self._trailed:  # a retried seal (the upload failed) keeps its trailer
            try:
                _pwritev_all(self._fd, [pack_format.trailer(self.entries, self.size)], self.size)
                os.fdatasync(self._fd)
            except OSError as exc:
                raise os_error(exc, f"pack {self.path}") from exc
            self._trailed = True
        end = self.size + pack_format.trailer_size(len(self.entries))
        if self.stream is None or not self.stream.finish(end):
            upload_whole(self.storage, self.id, self.path)
        upload_index(self.storage, self.root, self.id, self.entries)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        unlink_quiet(self.path)
        self._drop_log()


def recover(storage: S3Storage, root: Path, size_range: tuple[int, int]) -> int:
    """Seal and upload the cache's open packs whose writer is gone; how many."""
    done = 0
    for pack, path in abandoned(root / PACKS / "open"):
        if _recover_one(storage, root, pack, path, size_range):
            done += 1
    return done


def _recover_one(
    storage: S3Storage, root: Path, pack: bytes, path: Path, size_range: tuple[int, int]
) -> bool:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False  # uploaded; only its log was left
    name = f"open pack {path}"
    try:
        if pack_format.parse_header(data, name) != pack:
            raise RepositoryError(f"{name}: its header names another pack")
    except RepositoryError:
        path.unlink()  # a header that never became durable: no batch was acked
        return False
    # the records up to the first torn one (a trailer written before the kill is cut
    # off and written again: the same bytes)
    entries = list(pack_format.scan_records(data, size_range))
    if not entries:
        path.unlink()
        return False
    end = entries[-1].offset + entries[-1].length
    with open(path, "r+b") as fh:
        fh.truncate(end)
        fh.seek(end)
        fh.write(pack_format.trailer(entries, end))
        fh.flush()
        os.fdatasync(fh.fileno())
    upload(storage, root, pack, path, entries)
    path.unlink()
    return True
