"""The repository's storage on S3 (storage.Storage), as Ceph RGW and AWS serve it.

An object ``NAME`` is the key ``PREFIX/NAME`` of one bucket (``NAME`` with no prefix);
``list`` pages through ListObjectsV2 under ``PREFIX/NAME/`` and shows only keys that are
valid names. Path-style addressing (``ENDPOINT/BUCKET/KEY``: no DNS per bucket, as RGW
is usually deployed), the client is botocore's (bench/s3_client.py measured it against
obstore; bench/RESULTS.md), with its "standard" retries: bounded attempts with
exponential backoff and jitter on 5xx, throttling, timeouts and connection errors.

How each guarantee of storage.py is met:

- ``write``: one PUT up to ``part_size``; above it a multipart upload whose parts are cut
  from ``parts`` as they come. S3 shows an object only when its PUT or its
  CompleteMultipartUpload succeeds, whole; a failure (of the network, of ``parts``)
  aborts the upload, and one killed before that is what ``remove_unfinished`` aborts.
  Durable on return: RGW acknowledges once RADOS has written the data.
- ``create``: one PUT with ``If-None-Match: *`` (RGW answers 412 to all but one of
  concurrent creators, verified); never multipart, since RGW 16 ignores the condition on
  CompleteMultipartUpload.
- ``touch``: a copy of the object onto itself with its metadata replaced, which gives
  it a new Last-Modified (verified on RGW 16.2; S3 refuses a self-copy that changes
  nothing). Objects over 5 GiB cannot be copied so: none here is near that.
- ``mtime``: Last-Modified, whole seconds of the server's clock.
- Errors name the key's URL and, for the endpoint's answers, what S3 said: a missing
  key is MissingObjectError, a refused write for lack of room (RGW's QuotaExceeded,
  507 InsufficientCapacity / a full cluster) RepositoryFullError, and wrong
  credentials, a missing bucket, an endpoint that times out or refuses the connection
  a RepositoryError saying which.

The client, the error translation and the multipart cutting are in s3_client.py; the
calls' shared part in s3_calls.py, multipart uploads in s3_multipart.py; the location and
its credentials in s3_config.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import botocore.exceptions as bx

from repository.errors import MissingObjectError, RepositoryError
from repository.fsutil import os_error
from repository.s3_client import (
    MISSING_KEY,
    BodyCut,
    code,
    pieces,
)
from repository.s3_file_body import FileRange, request_body
from repository.s3_multipart import S3Multipart
from repository.storage import Bytes, ObjectInfo, ObjectStat, check_name, check_prefix, valid_part

if TYPE_CHECKING:
    pass

T = TypeVar("T")


DELETE_BATCH = 1000  # DeleteObjects' limit


class S3Storage(S3Multipart):
    """storage.Storage on ``location`` (its bucket must exist: ``create_bucket`` makes one)."""

    # --- reading ----------------------------------------------------------------

    def read(self, name: str) -> bytes:
        key = self.key(name)

        def get() -> bytes:
            resp = self._client.get_object(Bucket=self.loc.bucket, Key=key)
            return resp["Body"].read()

        return self._get_body(get, name, "")

    def _get_body(self, get: Callable[[], bytes], name: str, what: str) -> bytes:
        """``get()``'s body; botocore retries the request, a body cut off mid-read is
        retried here. ``what``: the range, for the message ("" for the whole object)."""
        for attempt in range(self.loc.max_attempts):
            try:
                return self._call(get, "read", name)
            except BodyCut:
                if attempt + 1 == self.loc.max_attempts:
                    raise RepositoryError(
                        f"cannot read {self.location(name)}{what}: the body was cut off"
                        f" {self.loc.max_attempts} times"
                    ) from None
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    def _head(self, name: str) -> ObjectStat | None:
        key = self.key(name)

        def head() -> ObjectStat | None:
            try:
                resp = self._client.head_object(Bucket=self.loc.bucket, Key=key)
            except bx.ClientError as exc:
                if code(exc) in MISSING_KEY:
                    return None
                raise
            return ObjectStat(resp["ContentLength"], resp["LastModified"].timestamp())

        return self._call(head, "stat", name)

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def stat(self, name: str) -> ObjectStat:
        st = self._head(name)
        if st is None:
            raise MissingObjectError(name, self.location(name))
        return st

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        full = self._prefix + (prefix + "/" if prefix else "")
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.loc.bucket, Prefix=full
        )
        it = iter(pages)
        while True:
            page = self._call(lambda: next(it, None), "list", prefix or "(all)")
            if page is None:
                return
            for obj in page.get("Contents", []):
                name = obj["Key"][len(self._prefix) :]
                if all(valid_part(p) for p in name.split("/")):  # keys no name can be
                    # whole seconds, as HEAD's Last-Modified (a listing has milliseconds)
                    mtime = float(math.floor(obj["LastModified"].timestamp()))
                    yield ObjectInfo(name, obj["Size"], mtime)

    def children(self, prefix: str) -> Iterator[str]:
        """ListObjectsV2 with Delimiter="/": the common prefixes one level below."""
        check_prefix(prefix)
        full = self._prefix + (prefix + "/" if prefix else "")
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.loc.bucket, Prefix=full, Delimiter="/"
        )
        it = iter(pages)
        while True:
            page = self._call(lambda: next(it, None), "list", prefix or "(all)")
            if page is None:
                return
            for cp in page.get("CommonPrefixes", []):
                part = cp["Prefix"][len(full) :].rstrip("/")
                if valid_part(part):
                    yield part

    # --- writing ----------------------------------------------------------------

    def write(self, name: str, parts: Sequence[Bytes]) -> None:
        key = self.key(name)
        cut = pieces(parts, self.loc.part_size)
        first = next(cut, b"")
        second = next(cut, None)
        if second is None:  # fits one PUT: botocore may resend these bytes on a retry
            extra = self._put_args(name)
            self._call(
                lambda: self._client.put_object(
                    Bucket=self.loc.bucket, Key=key, Body=first, **extra
                ),
                "write",
                name,
            )
            return
        self._multipart(name, key, first, second, cut)

    def write_file(self, name: str, path: Path) -> None:
        """``write`` of the bytes of the local file ``path`` (a sealed pack), which botocore
        reads from the file as it sends them: no copy of the object or of a part in
        memory (s3_file_body.py). The file must not change while this runs."""
        key = self.key(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise os_error(exc, f"file {path} for {self.location(name)}") from exc
        try:
            size = os.fstat(fd).st_size
            part = self.loc.part_size
            if size <= part:  # one PUT, as write() sends what fits one
                extra = self._put_args(name)
                self._call(
                    lambda: self._client.put_object(
                        Bucket=self.loc.bucket,
                        Key=key,
                        Body=request_body(FileRange(fd, 0, size)),
                        **extra,
                    ),
                    "write",
                    name,
                )
                return
            bodies = [FileRange(fd, off, min(part, size - off)) for off in range(0, size, part)]
            self._multipart(name, key, bodies[0], bodies[1], iter(bodies[2:]))
        finally:
            os.close(fd)

    def create(self, name: str, parts: Sequence[Bytes]) -> bool:
        # One PUT whatever the size (S3 takes up to 5 GiB so): RGW 16 ignores
        # If-None-Match on CompleteMultipartUpload (verified: it replaced the object).
        key = self.key(name)
        body = b"".join(parts)

        def put() -> bool:
            try:
                self._client.put_object(Bucket=self.loc.bucket, Key=key, Body=body, IfNoneMatch="*")
            except bx.ClientError as exc:
                if code(exc) in ("PreconditionFailed", "412"):
                    # one is there: another's, or (rarely) our own first attempt, which
                    # landed though its answer was lost and botocore retried
                    return False
                raise
            return True

        return self._call(put, "write", name)

    def touch(self, name: str) -> bool:
        key = self.key(name)

        def copy() -> bool:
            try:
                self._client.copy_object(
                    Bucket=self.loc.bucket,
                    Key=key,
                    CopySource={"Bucket": self.loc.bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    Metadata={"touched": f"{time.time():.3f}"},
                    **self._put_args(name),
                )
            except bx.ClientError as exc:
                if code(exc) in MISSING_KEY:
                    return False
                raise
            return True

        return self._call(copy, "touch", name)

    def delete(self, name: str) -> None:
        key = self.key(name)
        self._call(
            lambda: self._client.delete_object(Bucket=self.loc.bucket, Key=key), "delete", name
        )

    def delete_all(self, prefix: str) -> None:
        check_name(prefix)
        batch: list[str] = []
        for info in self.list(prefix):
            batch.append(info.name)
            if len(batch) == DELETE_BATCH:
                self._delete_batch(prefix, batch)
                batch = []
        if batch:
            self._delete_batch(prefix, batch)

    def _delete_batch(self, prefix: str, names: Sequence[str]) -> None:
        objects = [{"Key": self._prefix + n} for n in names]
        resp = self._call(
            lambda: self._client.delete_objects(
                Bucket=self.loc.bucket,
                Delete={"Objects": objects, "Quiet": True},  # type: ignore[typeddict-item]
            ),
            "delete",
            prefix,
        )
        errors = resp.get("Errors", [])
        if errors:
            e = errors[0]
            raise RepositoryError(
                f"cannot delete {len(errors)} objects under {self.location(prefix)}/, e.g."
                f" {e.get('Key', '?')}: {e.get('Code', '?')} {e.get('Message', '')}".rstrip()
            )

    def check_bucket(self) -> None:
        """RepositoryError unless the bucket exists and these credentials may use it (a
        HEAD of a key cannot tell a missing bucket from a missing key: no error body)."""
        self._call(lambda: self._client.head_bucket(Bucket=self.loc.bucket), "use", "(bucket)")

    # --- the bucket -------------------------------------------------------------

    def create_bucket(self) -> None:
        """Make the bucket (lab and tests; an existing one of ours is fine)."""
        try:
            self._call(
                lambda: self._client.create_bucket(Bucket=self.loc.bucket), "create", "(bucket)"
            )
        except RepositoryError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise
