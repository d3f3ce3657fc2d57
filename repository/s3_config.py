"""Where an S3 repository is: an ``S3Location`` read from a small TOML file.

A later step opens a repository at ``s3://BUCKET/PREFIX`` with ``--s3-config FILE``:
the file says how to reach the endpoint, the URL which bucket and prefix (``at``). The
file (every key but ``endpoint`` optional; an unknown key is an error naming it)::

    endpoint = "https://rgw.example.net:7480"   # http:// only to a loopback host,
    bucket = "backups"                          #   unless insecure_http = true
    prefix = "site-a"                           # keys are PREFIX/NAME ("" = none)
    region = "default"                          # RGW's zonegroup; AWS: the region
    credentials_file = "/etc/vmbackup/s3-credentials"   # see below
    profile = "default"                         # the section of credentials_file
    ca_file = "/etc/vmbackup/s3-ca.pem"         # PEM bundle; unset = system CAs
    part_size_mib = 64                          # multipart above this size
    stream_part_mib = 0                         # > 0: an open pack's parts of this size
                                                #   sent as it fills (0 = uploaded whole
                                                #   at its seal; bench/RESULTS.md)
    max_attempts = 5                            # per request, with backoff
    connect_timeout_seconds = 10
    read_timeout_seconds = 60

Credentials are never inline: the AWS credentials-file format (``[profile]`` with
``aws_access_key_id`` and ``aws_secret_access_key``, as the lab writes it and every S3
tool reads it), or, when no file is named, the environment's ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``. The secret never appears in a repr or an error message.
"""

from __future__ import annotations

import configparser
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.broker_tls import is_loopback
from repository.errors import RepositoryError
from repository.storage import check_name

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's (and RGW's) smallest multipart part but the last
MAX_PARTS = 10_000
# S3's bucket names: 3-63 of lowercase letters, digits, dots and hyphens, starting and
# ending with a letter or digit (RGW refuses shorter ones with InvalidBucketName).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
ENV_ACCESS = "AWS_ACCESS_KEY_ID"
ENV_SECRET = "AWS_SECRET_ACCESS_KEY"


class S3ConfigError(RepositoryError, ValueError):
    """A bad S3 location or credentials (the text names the key or the file)."""


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    source: str  # where they came from, for messages: a file and profile, or "environment"


@dataclass(frozen=True)
class S3Location:
    endpoint: str  # scheme://host[:port], no path
    bucket: str
    prefix: str = ""  # "" or a valid object name: keys are PREFIX/NAME
    region: str = "default"
    credentials_file: Path | None = None
    profile: str = "default"
    ca_file: Path | None = None
    insecure_http: bool = False
    part_size: int = 64 * MIB  # a 32 MiB pack is one PUT: faster than parts (bench/RESULTS.md)
    # s3_pack_stream.py; 0 = off: the e2e full measured no faster with it (bench/RESULTS.md)
    stream_part_size: int = 0
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3ConfigError(f"endpoint {self.endpoint!r}: not an http(s)://HOST[:PORT] URL")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise S3ConfigError(
                f"endpoint {self.endpoint!r}: no path, query or user belongs in it"
                " (the bucket and prefix are keys of their own)"
            )
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not self.insecure_http:
            raise S3ConfigError(
                f"endpoint {self.endpoint!r}: plain http to a non-loopback host sends every"
                " object unprotected; use https (insecure_http = true to allow it anyway)"
            )
        if not _BUCKET.fullmatch(self.bucket) or ".." in self.bucket:
            raise S3ConfigError(
                f"bucket {self.bucket!r}: not an S3 bucket name (3-63 of a-z 0-9 . -)"
            )
        if self.prefix:
            try:
                check_name(self.prefix)
            except ValueError as exc:
                raise S3ConfigError(f"prefix: {exc}") from None
        if not self.region:
            raise S3ConfigError("region: empty")
        if self.part_size < MIN_PART:
            raise S3ConfigError(f"part_size: {self.part_size} is below S3's {MIN_PART} bytes")
        if self.stream_part_size and self.stream_part_size < MIN_PART:
            raise S3ConfigError(
                f"stream_part_size: {self.stream_part_size} is below S3's {MIN_PART} bytes"
                " (0 turns streaming off)"
            )
        if self.max_attempts < 1:
            raise S3ConfigError(f"max_attempts: {self.max_attempts} (at least 1)")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise S3ConfigError("connect_timeout_seconds and read_timeout_seconds must be > 0")

    @property
    def endpoint_host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def uses_tls(self) -> bool:
        return self.endpoint.startswith("https:")

    def at(self, url: str) -> S3Location:
        """This location with the bucket and prefix of ``s3://BUCKET[/PREFIX]``."""
        bucket, prefix = parse_s3_url(url)
        return replace(self, bucket=bucket, prefix=prefix)

    def credentials(self, environ: dict[str, str] | None = None) -> S3Credentials:
        """The keys: from ``credentials_file`` if set, else the environment."""
        if self.credentials_file is not None:
            return read_credentials_file(self.credentials_file, self.profile)
        env = os.environ if environ is None else environ
        access, secret = env.get(ENV_ACCESS, ""), env.get(ENV_SECRET, "")
        if not access or not secret:
            raise S3ConfigError(
                f"no S3 credentials: set credentials_file in the S3 config, or both"
                f" {ENV_ACCESS} and {ENV_SECRET} in the environment"
            )
        return S3Credentials(access, secret, "environment")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://BUCKET[/PREFIX]``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise S3ConfigError(f"{url!r}: not an s3://BUCKET[/PREFIX] URL")
    prefix = parts.path.strip("/")
    return parts.netloc, prefix


def read_credentials_file(path: Path, profile: str = "default") -> S3Credentials:
    """``[profile]``'s aws_access_key_id and aws_secret_access_key from ``path``."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            cp.read_file(fh)
    except OSError as exc:
        raise S3ConfigError(f"S3 credentials file {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        # the parser's message may quote a line of the file: keep the secret out
        raise S3ConfigError(
            f"S3 credentials file {path}: not in the AWS credentials format"
            f" ([profile] with aws_access_key_id = ..., aws_secret_access_key = ...)"
            f" ({type(exc).__name__})"
        ) from None
    if not cp.has_section(profile):
        raise S3ConfigError(f"S3 credentials file {path}: no [{profile}] section")
    sect = cp[profile]
    access = sect.get("aws_access_key_id", "").strip()
    secret = sect.get("aws_secret_access_key", "").strip()
    missing = [
        k for k, v in (("aws_access_key_id", access), ("aws_secret_access_key", secret)) if not v
    ]
    if missing:
        raise S3ConfigError(f"S3 credentials file {path}: [{profile}] lacks {', '.join(missing)}")
    return S3Credentials(access, secret, f"{path} [{profile}]")


# key in the file -> (field, type, scale)
_KEYS: dict[str, tuple[str, type, int]] = {
    "endpoint": ("endpoint", str, 1),
    "bucket": ("bucket", str, 1),
    "prefix": ("prefix", str, 1),
    "region": ("region", str, 1),
    "credentials_file": ("credentials_file", Path, 1),
    "profile": ("profile", str, 1),
    "ca_file": ("ca_file", Path, 1),
    "insecure_http": ("insecure_http", bool, 1),
    "part_size_mib": ("part_size", int, MIB),
    "stream_part_mib": ("stream_part_size", int, MIB),
    "max_attempts": ("max_attempts", int, 1),
    "connect_timeout_seconds": ("connect_timeout", float, 1),
    "read_timeout_seconds": ("read_timeout", float, 1),
}


def parse_s3_config(
    data: dict[str, Any], where: str = "S3 config", url: str | None = None
) -> S3Location:
    """An S3Location from a parsed TOML table, with the bucket and prefix of ``url``
    (``s3://BUCKET[/PREFIX]``) in place of the table's when given; S3ConfigError names
    a bad key."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            raise S3ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        name, typ, scale = _KEYS[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        want = str if typ is Path else typ
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise S3ConfigError(f"{where}: {key} = {value!r:.80} is not a {want.__name__}")
        kwargs[name] = _converted(typ, scale, value)
    if "endpoint" not in kwargs:
        raise S3ConfigError(f"{where}: endpoint is required")
    if url is not None:
        kwargs["bucket"], kwargs["prefix"] = parse_s3_url(url)
    if "bucket" not in kwargs:
        raise S3ConfigError(f"{where}: bucket is required (in the file or as s3://BUCKET)")
    try:
        return S3Location(**kwargs)
    except S3ConfigError as exc:
        raise S3ConfigError(f"{where}: {exc}") from None


def _converted(typ: type, scale: int, value: Any) -> Any:
    if typ is Path:
        return Path(value)
    return value * scale if scale != 1 else value


def load_s3_config(path: Path, url: str | None = None) -> S3Location:
    """The S3Location in the TOML file ``path`` (at ``url``'s bucket and prefix if given)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise S3ConfigError(f"S3 config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise S3ConfigError(f"S3 config {path}: not TOML: {exc}") from None
    return parse_s3_config(data, f"S3 config {path}", url)
