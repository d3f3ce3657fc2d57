"""Chunks found present, recorded before the answer: what keeps gc from dropping them.

With chunk files, every dedup hit set the file's mtime ("last needed"). A pack has one
mtime for many chunks, so a pack repository records its hits instead: each process
appends the ids it is about to report present (a have-query's, a duplicate store's, a
commit's named chunks) to its own log ``touched/<32 hex>-<start>.log`` *before* it looks
them up. gc re-reads every log after it has made a chunk unfindable and copies back
whatever was touched since its mark began, so a backup that relied on a chunk either
saw it gone (and stored it again) or made gc keep it. Records are unsynced: a host that
loses power loses its running backups too. A process starts a new log every hour; gc
removes logs whose last write is older than its cutoff.

Record: time f64 | count u32 | count x 32-byte ids | CRC-32 of the rest (little endian).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from isal.isal_zlib import crc32

DIR = "touched"
SUFFIX = ".log"
ROTATE_S = 3600.0
_HEAD = struct.Struct("<dI")


class TouchLog:
    def __init__(self, root: Path) -> None:
        self.dir = root / DIR
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._opened = 0.0
        self._token = secrets.token_hex(16)

    def record(self, ids: Sequence[bytes]) -> None:
        if not ids:
            return
        body = _HEAD.pack(time.time(), len(ids)) + b"".join(ids)
        data = body + crc32(body).to_bytes(4, "little")
        with self._lock:
            fd = self._current()
            os.write(fd, data)

    def _current(self) -> int:
        now = time.time()
        if self._fd is None or now - self._opened > ROTATE_S:
            if self._fd is not None:
                os.close(self._fd)
            os.makedirs(self.dir, exist_ok=True)
            path = self.dir / f"{self._token}-{int(now)}{SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._opened = now
        return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def touched_since(root: Path, since: float) -> set[bytes]:
    """Every id some process recorded at or after ``since`` (its clock)."""
    out: set[bytes] = set()
    for path in _logs(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        pos = 0
        while pos + _HEAD.size <= len(data):
            when, n = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + 32 * n
            if end + 4 > len(data) or crc32(data[pos:end]) != int.from_bytes(
                data[end : end + 4], "little"
            ):
                break  # a record being written
            if when >= since:
                start = pos + _HEAD.size
                out.update(data[i : i + 32] for i in range(start, end, 32))
            pos = end + 4
    return out


def remove_old(root: Path, older_than: float, *, dry_run: bool = False) -> int:
    n = 0
    for path in _logs(root):
        try:
            if os.stat(path).st_mtime < older_than:
                n += 1
                if not dry_run:
                    os.unlink(path)
        except FileNotFoundError:
            continue
    return n


def _logs(root: Path) -> Iterator[Path]:
    try:
        names = sorted(os.listdir(root / DIR))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(SUFFIX):
            yield root / DIR / name
