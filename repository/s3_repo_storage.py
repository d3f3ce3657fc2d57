"""S3 storage as a repository uses it: S3Storage plus ranged reads of chunks in packs.

A chunk is read from its pack object with one ranged GET (``Range: bytes=A-B``, RGW
answers 206 with exactly those bytes), located through the index cache
(s3_pack_store.py); a pack is never downloaded whole to read one chunk.
"""

from __future__ import annotations

from repository.errors import RepositoryError
from repository.s3_storage import S3Storage


class S3RepoStorage(S3Storage):
    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset``; MissingObjectError when there is
        no such object, RepositoryError when it is shorter than that."""
        if offset < 0 or length <= 0:
            raise ValueError(f"read_range({name!r}, {offset}, {length}): bad range")
        key = self.key(name)

        def get() -> bytes:
            resp = self._client.get_object(
                Bucket=self.loc.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            return resp["Body"].read()

        data = self._call(get, "read", name)
        if len(data) != length:
            raise RepositoryError(
                f"{self.location(name)}: {len(data)} bytes at {offset}, {length} expected"
                " (the object is shorter than its index says)"
            )
        return data
