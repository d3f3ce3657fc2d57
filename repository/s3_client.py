"""What S3Storage (s3_storage.py) needs around botocore: the client, S3's answers as
repository errors, and a write's bytes cut into multipart pieces.

The client: path-style addressing, botocore's "standard" retries (``max_attempts`` in
all, exponential backoff with jitter, on 5xx, throttling, timeouts and connection
errors), the location's timeouts, TLS verified against ``ca_file`` or the system's CAs,
and the keys from s3_config (a file or the environment) given to it and to nothing else.
Errors (``translate``) name the object's URL and what the endpoint said, in the words of
docs/object-storage.md, "Errors".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import botocore.exceptions as bx

from repository.errors import MissingObjectError, RepositoryError, RepositoryFullError
from repository.s3_config import S3Location
from repository.storage import Bytes, check_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

# What S3 endpoints answer when a write does not fit: RGW's quota (403 QuotaExceeded),
# ENOSPC (507 InsufficientCapacity), other 507s. (A full Ceph cluster answers nothing:
# RGW holds the write; that shows as a timeout.)
FULL_CODES = frozenset({"QuotaExceeded", "InsufficientCapacity", "507"})
DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "403"}
)
MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})


class BodyCut(Exception):
    """A GET whose body ended early: S3Storage.read tries again."""


def valid_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True


def code(exc: bx.ClientError) -> str:
    """S3's error code, or the HTTP status where there is none (a HEAD has no body)."""
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code") or status)


def _message(exc: bx.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def translate(
    exc: bx.ClientError | bx.BotoCoreError, loc: S3Location, verb: str, name: str, where: str
) -> Exception:
    """The repository error for ``exc`` from ``verb`` of ``name`` (at URL ``where``)."""
    ep = loc.endpoint
    if isinstance(exc, bx.ClientError):
        c, msg = code(exc), _message(exc)
        if c in MISSING_KEY and verb == "read":
            return MissingObjectError(name, where)
        if c == "NoSuchBucket" or (c == "404" and name == "(bucket)"):
            return RepositoryError(
                f"cannot {verb} {where}: bucket {loc.bucket} does not exist at {ep}"
            )
        if c in FULL_CODES:
            return RepositoryFullError(
                f"no space left on device while writing {where}: {ep} refused it"
                f" ({c}: {msg or 'the bucket quota or the cluster is full'})"
            )
        if c in DENIED_CODES:
            return RepositoryError(
                f"cannot {verb} {where}: access denied by {ep} ({c});"
                f" check the S3 credentials and the bucket's policy"
            )
        return RepositoryError(f"cannot {verb} {where}: {c}: {msg}".rstrip(": "))
    if isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError):
        return BodyCut(str(exc))
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return RepositoryError(
            f"cannot {verb} {where}: {ep} did not answer within {loc.connect_timeout:g}/"
            f"{loc.read_timeout:g} s (connect/read), {loc.max_attempts} attempts"
        )
    if isinstance(exc, bx.SSLError):
        return RepositoryError(f"cannot {verb} {where}: TLS with {ep} failed: {exc}")
    if isinstance(exc, bx.EndpointConnectionError):
        return RepositoryError(
            f"cannot {verb} {where}: cannot connect to {ep}"
            f" (refused or unreachable, {loc.max_attempts} attempts)"
        )
    return RepositoryError(f"cannot {verb} {where}: {exc}")


def error_reason(exc: bx.ClientError | bx.BotoCoreError) -> str:
    """A failed request's reason as a bounded word (the S3 error metric's label)."""
    if isinstance(exc, bx.ClientError):
        c = code(exc)
        if c in FULL_CODES:
            return "full"
        if c in DENIED_CODES:
            return "denied"
        return "no_bucket" if c == "NoSuchBucket" else "other"
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return "timeout"
    if isinstance(exc, bx.SSLError):
        return "tls"
    if isinstance(exc, bx.EndpointConnectionError):
        return "connect"
    return "other"


def pieces(parts: Sequence[Bytes], size: int) -> Iterator[bytes]:
    """``b"".join(parts)`` in pieces of ``size`` bytes (the last may be shorter), made
    as they are asked for: a part's exception is raised before the upload completes.
    A whole ``bytes`` part that is a piece by itself goes as it is (no copy)."""
    buf = bytearray()
    last = len(parts) - 1
    for i in range(len(parts)):
        part = parts[i]
        alone = len(part) == size or (i == last and len(part) < size)
        if not buf and isinstance(part, bytes) and alone:
            if part:
                yield part
            continue
        view = memoryview(part).cast("B")
        while view:
            if not buf and len(view) >= size:  # one copy, straight from the caller's part
                yield bytes(view[:size])
                view = view[size:]
                continue
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf = bytearray()
    if buf:
        yield bytes(buf)


_clients: dict[tuple[object, ...], S3Client] = {}
_clients_lock = threading.Lock()


def make_client(location: S3Location) -> S3Client:
    """A botocore S3 client for ``location``: path style, bounded retries, TLS verified.
    One per process for the same endpoint, settings and keys (botocore clients are
    thread-safe; making one loads the service model: ~0.3 CPU s, and opening a
    repository used three); other keys (rotated in the credentials file) get their own."""
    creds = location.credentials()
    key = (
        location.endpoint, location.region, location.max_attempts, location.connect_timeout,
        location.read_timeout, location.ca_file, creds.access_key, creds.secret_key,
    )  # fmt: skip
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(location, creds.access_key, creds.secret_key)
        return client


def _new_client(location: S3Location, access_key: str, secret_key: str) -> S3Client:
    # boto3 costs ~0.3 s to import: loaded by the processes that reach S3, not by every
    # process that merely can (a writer on a local directory, `vmbackup --help`)
    import boto3
    import botocore.config

    config = botocore.config.Config(
        region_name=location.region,
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": location.max_attempts},
        connect_timeout=location.connect_timeout,
        read_timeout=location.read_timeout,
        max_pool_connections=32,
        # RGW 16 predates the flexible checksums botocore (>= 1.36) adds to every PUT by
        # default; and without them no CRC32 of every body is computed beside SigV4's
        # payload SHA256. Integrity holds without: every chunk read is checked against
        # its id (the hash of its plaintext) and every blob carries its own CRC.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=location.region,
    )
    verify: str | bool = str(location.ca_file) if location.ca_file is not None else True
    return session.client("s3", endpoint_url=location.endpoint, config=config, verify=verify)
