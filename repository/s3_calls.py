"""What every call of the S3 storage shares: the location, its keys, the client, the
translation of botocore's and the endpoint's errors into repository errors (counted in
vmbackup_repo_s3_errors_total), and the hooks a bucket with Object Lock fills in
(s3_object_lock.LockedS3Storage). s3_multipart.py and s3_storage.py build on it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypedDict, TypeVar

import botocore.exceptions as bx

from repository.errors import MissingObjectError
from repository.metrics import REPO_S3_ERRORS
from repository.s3_client import BodyCut, code, error_reason, make_client, translate, valid_name
from repository.s3_config import S3Location
from repository.storage import check_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

T = TypeVar("T")


class LockArgs(TypedDict, total=False):
    """What a write adds on a bucket with Object Lock (s3_object_lock.py)."""

    ObjectLockMode: Literal["COMPLIANCE", "GOVERNANCE"]
    ObjectLockRetainUntilDate: datetime


class S3Calls:
    def __init__(self, location: S3Location, client: S3Client | None = None) -> None:
        self.loc = location
        self._prefix = location.prefix + "/" if location.prefix else ""
        self._client = client if client is not None else make_client(location)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loc.endpoint}/{self.loc.bucket}/{self._prefix})"

    # --- names ------------------------------------------------------------------

    def key(self, name: str) -> str:
        return self._prefix + check_name(name)

    def location(self, name: str) -> str:
        return f"{self.loc.endpoint.rstrip('/')}/{self.loc.bucket}/{self.key(name)}"

    def _call(self, fn: Callable[[], T], verb: str, name: str, *, missing_ok: bool = False) -> T:
        """``fn()`` with botocore's and the endpoint's errors as repository errors."""
        where = self.location(name) if valid_name(name) else f"{self.loc.endpoint} ({name})"
        try:
            return fn()
        except bx.ClientError as exc:
            if missing_ok and code(exc) == "NoSuchUpload":
                # only aborts pass missing_ok, and they drop the result: a real
                # NoSuchUpload from RGW (test_s3_pack_stream) lands here
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

    # hooks for a bucket with Object Lock (s3_object_lock.LockedS3Storage)

    def _put_args(self, name: str) -> LockArgs:
        """More arguments of the PutObject/CopyObject that writes ``name``."""
        return {}

    def _completed(self, name: str, version_id: str | None) -> None:
        """After the CompleteMultipartUpload of ``name`` (its new version's id)."""
