"""The passphrase-protected key file of an encrypted repository.

JSON (see docs/repository-format.md): scrypt parameters and salt, a GCM nonce and
the encrypted 64 bytes: 32-byte AES-256 data key then 32-byte BLAKE3 id key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from repository.errors import CorruptObjectError, WrongPassphraseError
from repository.fsutil import write_atomic

KEY_FORMAT = "vmbackup-key"
KEY_VERSION = 1
_AAD = b"vmbackup-key-v1"
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
KEY_MODE = 0o600  # the wrapped keys are only as strong as the passphrase: keep them private


@dataclass(frozen=True)
class RepoKeys:
    # repr=False: a logged or printed RepoKeys shows no key material
    enc_key: bytes = field(repr=False)  # AES-256-GCM key for blobs
    id_key: bytes = field(repr=False)  # keyed-BLAKE3 key for chunk ids


def _kdf(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=32)


def create(path: Path, passphrase: bytes, *, n: int = SCRYPT_N) -> RepoKeys:
    keys, data = new(passphrase, n=n)
    write_atomic(path, [data], f"key file {path}", mode=KEY_MODE)
    return keys


def new(passphrase: bytes, *, n: int = SCRYPT_N) -> tuple[RepoKeys, bytes]:
    """Fresh keys and the key file's bytes that wrap them (for any storage)."""
    if not passphrase:
        raise ValueError("an empty passphrase is not allowed")
    keys = RepoKeys(os.urandom(32), os.urandom(32))
    salt = os.urandom(16)
    nonce = os.urandom(12)
    wrapped = AESGCM(_kdf(passphrase, salt, n, SCRYPT_R, SCRYPT_P)).encrypt(
        nonce, keys.enc_key + keys.id_key, _AAD
    )
    doc = {
        "format": KEY_FORMAT,
        "version": KEY_VERSION,
        "kdf": {
            "name": "scrypt",
            "n": n,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": "aes-256-gcm",
        "nonce": base64.b64encode(nonce).decode(),
        "data": base64.b64encode(wrapped).decode(),
    }
    return keys, json.dumps(doc, indent=2).encode() + b"\n"


def load(path: Path, passphrase: bytes) -> RepoKeys:
    name = f"key file {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptObjectError(name, "missing") from None
    except OSError as exc:
        raise CorruptObjectError(name, f"unreadable: {exc.strerror or exc}") from None
    return parse(data, name, passphrase)


def parse(raw: bytes, name: str, passphrase: bytes) -> RepoKeys:
    """The keys in a key file's bytes (``name`` says where it came from, for errors)."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != KEY_FORMAT or doc.get("version") != KEY_VERSION:
            raise CorruptObjectError(name, "not a vmbackup key file of version 1")
        kdf = doc["kdf"]
        if kdf["name"] != "scrypt" or doc["cipher"] != "aes-256-gcm":
            raise CorruptObjectError(name, "unsupported kdf or cipher")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if not (2 <= n <= 1 << 22 and 1 <= r <= 32 and 1 <= p <= 16):
            raise CorruptObjectError(name, "scrypt parameters out of range")
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        data = base64.b64decode(doc["data"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptObjectError(name, f"unreadable: {exc}") from None
    if len(nonce) != 12:
        raise CorruptObjectError(name, "bad nonce length")
    try:
        plain = AESGCM(_kdf(passphrase, salt, n, r, p)).decrypt(nonce, data, _AAD)
    except InvalidTag:
        raise WrongPassphraseError(
            f"wrong passphrase for {name} (or the file is damaged)"
        ) from None
    if len(plain) != 64:
        raise CorruptObjectError(name, "wrapped key has the wrong length")
    return RepoKeys(plain[:32], plain[32:])
