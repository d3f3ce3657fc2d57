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
location and its credentials in s3_config.py.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypedDict, TypeVar

import botocore.exceptions as bx

from repository.errors import MissingObjectError, RepositoryError
from repository.metrics import REPO_S3_ERRORS
from repository.s3_client import (
    MISSING_KEY,
    BodyCut,
    code,
    error_reason,
    make_client,
    pieces,
    translate,
    valid_name,
)
from repository.s3_config import MAX_PARTS, S3Location
from repository.storage import Bytes, ObjectInfo, ObjectStat, check_name, check_prefix, valid_part

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

T = TypeVar("T")


class LockArgs(TypedDict, total=False):
    """What a write adds on a bucket with Object Lock (s3_object_lock.py)."""

    ObjectLockMode: Literal["COMPLIANCE", "GOVERNANCE"]
    ObjectLockRetainUntilDate: datetime


DELETE_BATCH = 1000  # DeleteObjects' limit


class S3Storage:
    """storage.Storage on ``location`` (its bucket must exist: ``create_bucket`` makes one).

    ``parts_uploaded`` and ``part_bytes`` count the multipart parts this storage sent
    and their bytes (botocore's retries not counted): tests and benchmarks."""

    parts_uploaded = 0
    part_bytes = 0
    _count_lock = threading.Lock()

    def __init__(self, location: S3Location, client: S3Client | None = None) -> None:
        self.loc = location
        self._prefix = location.prefix + "/" if location.prefix else ""
        self._client = client if client is not None else make_client(location)

    def __repr__(self) -> str:
        return f"S3Storage({self.loc.endpoint}/{self.loc.bucket}/{self._prefix})"

    # --- names ------------------------------------------------------------------

    def key(self, name: str) -> str:
        return self._prefix + check_name(name)

    def location(self, name: str) -> str:
        return f"{self.loc.endpoint.rstrip('/')}/{self.loc.bucket}/{self.key(name)}"

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

    def _multipart(
        self, name: str, key: str, first: bytes, second: bytes, rest: Iterator[bytes]
    ) -> None:
        upload_id = self.begin_upload(name)
        done: list[tuple[int, str]] = []
        try:
            for number, body in enumerate(itertools.chain((first, second), rest), start=1):
                if number > MAX_PARTS:
                    raise RepositoryError(
                        f"cannot write {self.location(name)}: over {MAX_PARTS} parts"
                        f" of {self.loc.part_size} bytes"
                    )
                done.append((number, self.upload_part(name, upload_id, number, body)))
            self.complete_upload(name, upload_id, done)
        except BaseException:
            self.abort_upload(name, upload_id)
            raise

    # --- a multipart upload, step by step (s3_pack_stream.py: parts as a pack fills) ---

    def begin_upload(self, name: str) -> str:
        """CreateMultipartUpload of ``name``: the upload's id. Nothing shows under the
        name until ``complete_upload``; an upload never completed nor aborted is what
        ``remove_unfinished`` aborts."""
        key = self.key(name)
        up = self._call(
            lambda: self._client.create_multipart_upload(Bucket=self.loc.bucket, Key=key),
            "write",
            name,
        )
        return up["UploadId"]

    def upload_part(self, name: str, upload_id: str, number: int, body: bytes) -> str:
        """UploadPart ``number`` (1..MAX_PARTS; every part but the last >= MIN_PART
        bytes, which CompleteMultipartUpload checks): the part's ETag."""
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"upload_part({name!r}, part {number}): not in 1..{MAX_PARTS}")
        key = self.key(name)
        resp = self._call(
            lambda: self._client.upload_part(
                Bucket=self.loc.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            ),
            "write",
            name,
        )
        with self._count_lock:
            self.parts_uploaded += 1
            self.part_bytes += len(body)
        return resp["ETag"]

    def complete_upload(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        """CompleteMultipartUpload of (part number, ETag) ``parts``: the object shows,
        whole; then what a locked bucket adds (``_completed``)."""
        key = self.key(name)
        listed = [{"PartNumber": n, "ETag": etag} for n, etag in parts]
        resp = self._call(
            lambda: self._client.complete_multipart_upload(
                Bucket=self.loc.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},  # type: ignore[typeddict-item]
            ),
            "write",
            name,
        )
        self._completed(name, resp.get("VersionId"))

    def abort_upload(self, name: str, upload_id: str) -> None:
        """AbortMultipartUpload, best effort: one that fails stays for
        ``remove_unfinished``."""
        with contextlib.suppress(bx.BotoCoreError, bx.ClientError):
            self._client.abort_multipart_upload(
                Bucket=self.loc.bucket, Key=self.key(name), UploadId=upload_id
            )

    # hooks for a bucket with Object Lock (s3_object_lock.LockedS3Storage)

    def _put_args(self, name: str) -> LockArgs:
        """More arguments of the PutObject/CopyObject that writes ``name``."""
        return {}

    def _completed(self, name: str, version_id: str | None) -> None:
        """After the CompleteMultipartUpload of ``name`` (its new version's id)."""

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

    def remove_unfinished(self, prefix: str, older_than: float, *, dry_run: bool = False) -> int:
        full = self._prefix + check_name(prefix) + "/"
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.loc.bucket, Prefix=full
        )
        it = iter(pages)
        removed = 0
        while (page := self._call(lambda: next(it, None), "list uploads", prefix)) is not None:
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() >= older_than:
                    continue
                removed += 1
                if not dry_run:
                    key, uid = up["Key"], up["UploadId"]
                    self._call(
                        lambda k=key, u=uid: self._client.abort_multipart_upload(  # type: ignore[misc]
                            Bucket=self.loc.bucket, Key=k, UploadId=u
                        ),
                        "abort the upload of",
                        key[len(self._prefix) :],
                        missing_ok=True,
                    )
        return removed

    # --- errors -----------------------------------------------------------------

    def _call(self, fn: Callable[[], T], verb: str, name: str, *, missing_ok: bool = False) -> T:
        """``fn()`` with botocore's and the endpoint's errors as repository errors."""
        where = self.location(name) if valid_name(name) else f"{self.loc.endpoint} ({name})"
        try:
            return fn()
        except bx.ClientError as exc:
            if missing_ok and code(exc) == "NoSuchUpload":
                return None  # type: ignore[return-value]
            failed = translate(exc, self.loc, verb, name, where)
            if not isinstance(failed, MissingObjectError):  # absent keys are answers
                REPO_S3_ERRORS.labels(verb, error_reason(exc)).inc()
            raise failed from None
        except bx.BotoCoreError as exc:
            failed = translate(exc, self.loc, verb, name, where)
            if not isinstance(failed, BodyCut):  # read again by the caller
                REPO_S3_ERRORS.labels(verb, error_reason(exc)).inc()
            raise failed from None

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
