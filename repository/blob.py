"""Blob encoding: the on-disk form of every chunk and point metadata file.

Layout (little endian, see docs/repository-format.md):

    0  4  magic (b"VMBC" chunk, b"VMBM" point metadata)
    4  1  format version (1)
    5  1  flags: bit 0 zstd-compressed, bit 1 AES-256-GCM encrypted
    6  2  reserved, 0
    8  4  raw length (plaintext bytes)
   12  4  payload length (bytes after the 32-byte header)
   16  4  CRC-32 of the payload as stored
   20 12  GCM nonce (zero when not encrypted)
   32  .. payload

With encryption the first 16 header bytes are the GCM associated data, so a
changed flag or length fails authentication; the CRC lets verify find bit rot
without the key.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from isal.isal_zlib import crc32  # zlib's CRC-32, ~13x faster (ISA-L): it was 10 % of a writer

from common.chunk import zstd_decompressor
from repository.errors import CorruptObjectError

MAGIC_CHUNK = b"VMBC"
MAGIC_META = b"VMBM"
VERSION = 1
FLAG_COMPRESSED = 0x01
FLAG_ENCRYPTED = 0x02
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_ENCRYPTED
HEADER = struct.Struct("<4sBBHIII12s")
HEADER_LEN = HEADER.size  # 32
AAD_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
MAX_RAW_LEN = 256 * 1024 * 1024
_NO_NONCE = bytes(NONCE_LEN)


@dataclass(frozen=True, slots=True)
class BlobHeader:
    magic: bytes
    flags: int
    raw_len: int
    payload_len: int
    crc: int
    nonce: bytes

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


def encode(
    payload: bytes | bytearray,
    raw_len: int,
    compressed: bool,
    magic: bytes,
    cipher: AESGCM | None,
) -> tuple[bytes, bytes | bytearray]:
    """Frame ``payload`` (already compressed or not); returns (header, body) to write."""
    if not 0 <= raw_len <= MAX_RAW_LEN:
        raise ValueError(f"raw length {raw_len} out of range")
    flags = FLAG_COMPRESSED if compressed else 0
    if cipher is None:
        body = payload
        aad = struct.pack("<4sBBHII", magic, VERSION, flags, 0, raw_len, len(body))
        nonce = _NO_NONCE
    else:
        flags |= FLAG_ENCRYPTED
        aad = struct.pack("<4sBBHII", magic, VERSION, flags, 0, raw_len, len(payload) + TAG_LEN)
        nonce = os.urandom(NONCE_LEN)
        body = cipher.encrypt(nonce, payload, aad)
    header = aad + struct.pack("<I12s", crc32(body), nonce)
    return header, body


def chunk_file_sizes(chunk_size: int) -> tuple[int, int]:
    """Sizes a chunk blob can have: a header and at least one payload byte; at most the
    chunk stored raw or zstd's worst case (a little over the raw size), plus the tag."""
    worst = chunk_size + chunk_size // 128 + 1024
    return HEADER_LEN + 1, HEADER_LEN + worst + TAG_LEN


def parse_header(data: bytes | memoryview, name: str) -> BlobHeader:
    if len(data) < HEADER_LEN:
        raise CorruptObjectError(name, f"truncated: {len(data)} bytes, header needs {HEADER_LEN}")
    magic, version, flags, reserved, raw_len, payload_len, crc, nonce = HEADER.unpack_from(data)
    if magic not in (MAGIC_CHUNK, MAGIC_META):
        raise CorruptObjectError(name, f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise CorruptObjectError(name, f"unsupported blob version {version}")
    if flags & ~_KNOWN_FLAGS or reserved:
        raise CorruptObjectError(name, f"unknown flags {flags:#x}/{reserved:#x}")
    if raw_len > MAX_RAW_LEN:
        raise CorruptObjectError(name, f"raw length {raw_len} out of range")
    return BlobHeader(magic, flags, raw_len, payload_len, crc, nonce)


def decode(
    data: bytes, magic: bytes, cipher: AESGCM | None, name: str, *, check_crc: bool = True
) -> bytes:
    """Check and unpack a blob; returns the plaintext. Raises CorruptObjectError."""
    out = decode_view(data, magic, cipher, name, check_crc=check_crc)
    return out if isinstance(out, bytes) else bytes(out)


def decode_view(
    data: bytes, magic: bytes, cipher: AESGCM | None, name: str, *, check_crc: bool = True
) -> bytes | memoryview:
    """:func:`decode`, but a stored-raw payload comes back as a read-only view of
    ``data`` instead of a copy (up to 8 MiB saved per chunk on restore)."""
    h = parse_header(data, name)
    if h.magic != magic:
        raise CorruptObjectError(name, f"magic {h.magic!r}, expected {magic!r}")
    if len(data) - HEADER_LEN != h.payload_len:
        raise CorruptObjectError(
            name, f"payload is {len(data) - HEADER_LEN} bytes, header says {h.payload_len}"
        )
    body = memoryview(data)[HEADER_LEN:]
    if check_crc and crc32(body) != h.crc:
        raise CorruptObjectError(name, "checksum mismatch (bit rot or truncation)")
    if h.encrypted != (cipher is not None):
        state = "encrypted" if h.encrypted else "not encrypted"
        raise CorruptObjectError(name, f"blob is {state}, repository is not the same")
    plain: bytes | memoryview
    if cipher is not None:
        try:
            plain = cipher.decrypt(h.nonce, body, data[:AAD_LEN])
        except InvalidTag:
            raise CorruptObjectError(
                name, "authentication failed (tampered or wrong key)"
            ) from None
    else:
        plain = body
    out: bytes | memoryview
    if h.compressed:
        try:
            out = zstd_decompressor().decompress(plain, max_output_size=h.raw_len)
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(name, f"cannot decompress: {exc}") from None
    else:
        out = plain
    if len(out) != h.raw_len:
        raise CorruptObjectError(name, f"{len(out)} plaintext bytes, header says {h.raw_len}")
    return out
