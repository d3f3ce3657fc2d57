"""Where each chunk is: the index files of sealed packs and the logs of open packs.

A process's view of the whole repository, shared by its threads. ``refresh`` lists
``index/`` (new files mapped, removed ones dropped) and reads what the open packs' logs
gained since the last look, so a chunk another writer acknowledged a moment ago is
found too. An open pack's log (``packs/open/<32 hex>.log``) gets a batch's entries only
after the batch's fdatasync returned: an entry in a log always names durable bytes.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from isal.isal_zlib import crc32

from repository.errors import CorruptObjectError
from repository.pack_index_file import SUFFIX, IndexFile, Location

LOG_SUFFIX = ".log"
PACK_SUFFIX = ".pack"
LOG_RECORD = struct.Struct("<32sIII")  # id, blob offset, blob length, CRC-32 of the rest
LOG_RECORD_LEN = LOG_RECORD.size  # 44


def log_record(chunk_id: bytes, offset: int, length: int) -> bytes:
    head = chunk_id + offset.to_bytes(4, "little") + length.to_bytes(4, "little")
    return head + crc32(head).to_bytes(4, "little")


@dataclass
class _OpenLog:
    pack: bytes
    read_to: int = 0
    entries: dict[bytes, Location] = field(default_factory=dict)


class PackIndex:
    def __init__(self, root: Path) -> None:
        self.index_dir = root / "index"
        self.open_dir = root / "packs" / "open"
        self._lock = threading.Lock()
        self._files: dict[str, IndexFile] = {}
        self._logs: dict[str, _OpenLog] = {}
        self._own: dict[bytes, Location] = {}  # this process's open packs, before a refresh

    def refresh(self) -> None:
        with self._lock:
            # logs first: a pack's log disappears only after its index file was written,
            # so a log gone from this listing has its index file in the next one
            self._read_logs()
            self._read_index_dir()

    def _read_index_dir(self) -> None:
        try:
            names = {n for n in os.listdir(self.index_dir) if n.endswith(SUFFIX)}
        except FileNotFoundError:
            names = set()
        for gone in set(self._files) - names:
            self._files.pop(gone).close()
        for name in sorted(names - set(self._files)):
            try:
                self._files[name] = IndexFile(self.index_dir / name)
            except FileNotFoundError:
                continue  # merged away meanwhile: its entries are in the new file

    def _read_logs(self) -> None:
        try:
            names = {n for n in os.listdir(self.open_dir) if n.endswith(LOG_SUFFIX)}
        except FileNotFoundError:
            names = set()
        for gone in set(self._logs) - names:
            del self._logs[gone]
        for name in names:
            log = self._logs.get(name)
            if log is None:
                try:
                    pack = bytes.fromhex(name[: -len(LOG_SUFFIX)])
                except ValueError:
                    continue
                log = self._logs[name] = _OpenLog(pack)
            try:
                # one stat instead of open, seek, read and close when the log did not grow
                if os.stat(self.open_dir / name).st_size < log.read_to + LOG_RECORD_LEN:
                    continue
                with open(self.open_dir / name, "rb") as fh:
                    fh.seek(log.read_to)
                    data = fh.read()
            except FileNotFoundError:
                del self._logs[name]
                continue
            n = 0
            for n in range(0, len(data) - LOG_RECORD_LEN + 1, LOG_RECORD_LEN):
                cid, off, length, crc = LOG_RECORD.unpack_from(data, n)
                if crc32(data[n : n + 40]) != crc:
                    break  # a record being written: read again next time
                log.entries[bytes(cid)] = Location(log.pack, off, length)
                log.read_to += LOG_RECORD_LEN

    def add_own(self, chunk_id: bytes, loc: Location) -> None:
        with self._lock:
            self._own[chunk_id] = loc

    def forget_own(self, pack: bytes) -> None:
        """The pack is sealed and indexed (its index file is in the next refresh)."""
        with self._lock:
            for cid in [c for c, loc in self._own.items() if loc.pack == pack]:
                del self._own[cid]
            self._read_index_dir()

    def lookup(self, chunk_id: bytes) -> list[Location]:
        """Every known location of the chunk, open packs first (no refresh)."""
        with self._lock:
            out: list[Location] = []
            own = self._own.get(chunk_id)
            if own is not None:
                out.append(own)
            for log in self._logs.values():
                loc = log.entries.get(chunk_id)
                if loc is not None:
                    out.append(loc)
            for f in self._files.values():
                out.extend(f.lookup(chunk_id))
            return out

    def open_entry(self, chunk_id: bytes) -> bool:
        """Whether the chunk is in an open pack (never a candidate for gc)."""
        with self._lock:
            return chunk_id in self._own or any(chunk_id in g.entries for g in self._logs.values())

    def files(self) -> list[IndexFile]:
        with self._lock:
            return list(self._files.values())

    def open_packs(self) -> set[bytes]:
        with self._lock:
            return {g.pack for g in self._logs.values()} | {loc.pack for loc in self._own.values()}

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def check_log_name(name: str) -> bytes:
    """The pack id of an open pack's file name (``<32 hex>.pack`` or ``.log``)."""
    stem = name.rsplit(".", 1)[0]
    if len(stem) != 32:
        raise CorruptObjectError(name, "not an open pack's name")
    return bytes.fromhex(stem)
