"""S3 storage as a repository uses it: S3Storage plus ranged reads of chunks in packs.

A chunk is read from its pack object with a ranged GET (``Range: bytes=A-B``, RGW
answers 206 with exactly those bytes), located through the index cache
(s3_pack_store.py); a restore reads a run of neighbouring chunks with one GET
(read_runs.py); a pack is never downloaded whole to read one chunk. ``range_reads``
counts the ranged GETs issued (tests, benchmarks).
"""

from __future__ import annotations

from repository.errors import RepositoryError
from repository.s3_storage import S3Storage


class ShortObjectError(RepositoryError):
    """A ranged GET answered fewer bytes than asked: the object ends before the range."""


class S3RepoStorage(S3Storage):
    range_reads = 0  # ranged GETs sent by this storage (retries by botocore not counted)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset``; MissingObjectError when there is
        no such object, ShortObjectError when it is shorter than that. A body cut off
        mid-read is read again (as S3Storage.read does)."""
        if offset < 0 or length <= 0:
            raise ValueError(f"read_range({name!r}, {offset}, {length}): bad range")
        key = self.key(name)

        def get() -> bytes:
            with self._count_lock:
                self.range_reads += 1
            resp = self._client.get_object(
                Bucket=self.loc.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            return resp["Body"].read()

        data = self._get_body(get, name, f" bytes {offset}+{length}")
        if len(data) != length:
            raise ShortObjectError(
                f"{self.location(name)}: {len(data)} bytes at {offset}, {length} expected"
                " (the object is shorter than its index says)"
            )
        return data
