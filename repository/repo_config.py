"""The repository ``config`` file: its fields, their validation, checksum and MAC.

One validation serves ``init`` (on the document it is about to write), ``open`` and
``repo upgrade``. A version-2 file is the canonical JSON of its document
(``json.dumps(doc, indent=2, sort_keys=True)`` + newline, nothing else) with
``checksum`` = unkeyed tag and, in an encrypted repository, ``mac`` = tag under the
metadata key (see meta_auth.py) of the compact canonical JSON without those two.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

from common.compression_level import level_problem
from repository.errors import CorruptObjectError, RepositoryFormatError
from repository.meta_auth import MetaAuth

REPO_FORMAT = "vmbackup-repository"
REPO_VERSION = 2  # chunk files (chunk_store.py); still what `repo init` makes by default
PACKS_VERSION = 3  # chunks in pack files (pack_store.py): version 2 + key pack_size
VERSIONS = (REPO_VERSION, PACKS_VERSION)  # what the repository opens
V1 = 1  # no checksum, no MAC: opened only by `repo upgrade`
KiB = 1024
MiB = 1024 * KiB
MIN_CHUNK = 256 * KiB
MAX_CHUNK = 8 * MiB
MIN_PACK = MiB
MAX_PACK = 1024 * MiB
ENCRYPTIONS = ("none", "aes-256-gcm")
_FIELDS = ("format", "version", "id", "chunk_size", "compression_level", "encryption", "created")
_SEALS = ("checksum", "mac")
_PACK_FIELDS = ("pack_size",)
# version 3 on S3, optional: {"mode": COMPLIANCE|GOVERNANCE, "period_seconds": N}, the
# Object Lock retention every writer applies (s3_object_lock.py)
OBJECT_LOCK = "object_lock"
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
MIN_LOCK_PERIOD = 86400  # a day: well above gc's grace, and S3's least default retention
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ConfigFieldError(ValueError):
    """One field of a config document is wrong; ``key`` names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(doc: dict[str, Any], version: int = REPO_VERSION, *, sealed: bool = True) -> None:
    """Every field present, known and in range (the seals too when ``sealed`` and
    version 2); raises ConfigFieldError."""
    want = set(_FIELDS)
    if version == PACKS_VERSION:
        want.update(_PACK_FIELDS)
    if version >= 2 and sealed:
        want.add("checksum")
        if doc.get("encryption") == "aes-256-gcm":
            want.add("mac")
    if version == PACKS_VERSION and OBJECT_LOCK in doc:
        want.add(OBJECT_LOCK)
        _check_lock(doc[OBJECT_LOCK])
    for key in sorted(set(doc) - want):
        raise ConfigFieldError(key, "unknown key")
    for key in _FIELDS + _PACK_FIELDS + _SEALS:
        if key in want and key not in doc:
            raise ConfigFieldError(key, "is missing")
    if doc["format"] != REPO_FORMAT:
        raise ConfigFieldError("format", f"{doc['format']!r:.40} is not {REPO_FORMAT!r}")
    if doc["version"] != version or not _int(doc["version"]):
        raise ConfigFieldError("version", f"{doc['version']!r:.40} is not {version}")
    rid = doc["id"]
    try:
        ok = isinstance(rid, str) and str(uuid.UUID(rid)) == rid
    except ValueError:
        ok = False
    if not ok:
        raise ConfigFieldError("id", f"{rid!r:.60} is not a lowercase UUID")
    cs = doc["chunk_size"]
    if not _int(cs) or not MIN_CHUNK <= cs <= MAX_CHUNK or cs & (cs - 1):
        raise ConfigFieldError(
            "chunk_size", f"chunk size {cs!r:.40} must be a power of two from 256 KiB to 8 MiB"
        )
    level_bad = level_problem(doc["compression_level"])
    if level_bad is not None:
        raise ConfigFieldError("compression_level", level_bad)
    if doc["encryption"] not in ENCRYPTIONS:
        raise ConfigFieldError(
            "encryption", f"{doc['encryption']!r:.40} is not one of {ENCRYPTIONS}"
        )
    if "pack_size" in want:
        ps = doc["pack_size"]
        if not _int(ps) or not MIN_PACK <= ps <= MAX_PACK:
            raise ConfigFieldError(
                "pack_size", f"pack size {ps!r:.40} outside 1 MiB..1 GiB (bytes)"
            )
    created = doc["created"]
    if not (_int(created) or isinstance(created, float)) or not math.isfinite(created):
        raise ConfigFieldError("created", f"{created!r:.40} is not a time stamp")
    if created <= 0:
        raise ConfigFieldError("created", f"{created!r:.40} is not a time stamp")
    for key in _SEALS:
        if key in doc and (not isinstance(doc[key], str) or not _HEX64.fullmatch(doc[key])):
            raise ConfigFieldError(key, "is not 64 lowercase hex digits")


def _check_lock(lock: Any) -> None:
    ok = (
        isinstance(lock, dict)
        and set(lock) == {"mode", "period_seconds"}
        and lock["mode"] in LOCK_MODES
        and _int(lock["period_seconds"])
        and lock["period_seconds"] >= MIN_LOCK_PERIOD
    )
    if not ok:
        raise ConfigFieldError(
            OBJECT_LOCK,
            f"{lock!r:.80} is not {{mode: one of {LOCK_MODES}, period_seconds: at least"
            f" {MIN_LOCK_PERIOD}}}",
        )


def new(
    chunk_size: int, compression_level: int, encrypted: bool, pack_size: int | None = None
) -> dict[str, Any]:
    """A fresh document without its seals (version 3 with ``pack_size``, else 2); raises
    ConfigFieldError."""
    doc: dict[str, Any] = {
        "format": REPO_FORMAT,
        "version": REPO_VERSION if pack_size is None else PACKS_VERSION,
        "id": str(uuid.uuid4()),
        "chunk_size": chunk_size,
        "compression_level": compression_level,
        "encryption": "aes-256-gcm" if encrypted else "none",
        "created": time.time(),
    }
    if pack_size is not None:
        doc["pack_size"] = pack_size
    check_fields(doc, doc["version"], sealed=False)  # the seals are added by encode()
    return doc


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k not in _SEALS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _file_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def encode(doc: dict[str, Any], mac: MetaAuth | None) -> bytes:
    """The sealed file of ``doc`` (any old seals replaced): version 3 stays 3, anything
    older becomes 2; ``mac`` keyed when encrypted."""
    out = {k: v for k, v in doc.items() if k not in _SEALS}
    if out["version"] not in VERSIONS:
        out["version"] = REPO_VERSION
    canonical = _canonical(out)
    out["checksum"] = MetaAuth(out["id"], None).config_tag(canonical).hex()
    if out["encryption"] != "none":
        if mac is None or not mac.keyed:
            raise ValueError("an encrypted repository's config needs the metadata key")
        out["mac"] = mac.config_tag(canonical).hex()
    check_fields(out, out["version"])
    return _file_bytes(out)


def read(path: Path) -> dict[str, Any]:
    """Parse and check ``path`` (version 2 fully, version 1 for the upgrade; the caller
    decides whether version 1 is acceptable). The MAC needs the key: :func:`check_mac`."""
    name = f"repository config {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RepositoryFormatError(
            f"{path.parent} is not a vmbackup repository (no config)"
        ) from None
    except OSError as exc:
        raise CorruptObjectError(name, f"unreadable: {exc.strerror or exc}") from None
    return parse(data, name)


def parse(data: bytes, name: str) -> dict[str, Any]:
    """:func:`read` of bytes from anywhere (``name``: "repository config <where>")."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptObjectError(name, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptObjectError(name, "not a JSON object")
    for key in sorted(set(doc) - {*_FIELDS, *_PACK_FIELDS, *_SEALS, OBJECT_LOCK}):  # misspelt
        raise CorruptObjectError(name, f"key {key!r}: unknown key")
    for key in ("format", "version"):
        if key not in doc:
            raise CorruptObjectError(name, f"key {key!r}: is missing")
    if doc["format"] != REPO_FORMAT:
        raise RepositoryFormatError(
            f"{name}: key 'format' is {doc['format']!r:.40}: not a vmbackup repository config"
        )
    version = doc["version"]
    if version not in (V1, *VERSIONS) or not _int(version):
        raise RepositoryFormatError(
            f"{name}: key 'version': repository format version {version!r:.40} is not supported"
        )
    try:
        check_fields(doc, version)
    except ConfigFieldError as exc:
        raise CorruptObjectError(name, str(exc)) from None
    if version == V1:
        return doc
    if MetaAuth(doc["id"], None).config_tag(_canonical(doc)).hex() != doc["checksum"]:
        raise CorruptObjectError(
            name, "key 'checksum': mismatch: the file is damaged or was edited"
        )
    if _file_bytes(doc) != data:
        raise CorruptObjectError(name, "not in canonical form: the file is damaged or was edited")
    return doc


def check_mac(doc: dict[str, Any], auth: MetaAuth, path: Path | str) -> None:
    """An encrypted repository's config is authentic under ``auth`` (keyed)."""
    expected = auth.config_tag(_canonical(doc))
    if not MetaAuth.same(expected, bytes.fromhex(doc["mac"])):
        raise CorruptObjectError(
            f"repository config {path}",
            "key 'mac': fails its authentication: tampered or written with another key",
        )
